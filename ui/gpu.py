"""GPU memory and utilisation on /metrics, read from NVML (``nvidia-ml-py``) at scrape time.

NVML is the NVIDIA driver's own management library: the numbers are what ``nvidia-smi`` shows, for
every process on the device, not only this one. On a machine without the driver ``nvml_collector()``
returns None and /metrics simply has no ``rill_gpu_*`` series.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_initialised: ModuleType | None = None  # the pynvml module nvmlInit() succeeded on (tests inject a fake one)


def nvml_collector() -> Collector | None:
    """A collector over NVML, or None (quietly) when pynvml is missing or there is no usable driver."""
    global _initialised
    try:
        import pynvml
    except ImportError:
        return None
    if _initialised is not pynvml:
        try:
            pynvml.nvmlInit()
        # NVMLError_LibraryNotFound / DriverNotLoaded on a machine without a GPU; OSError when the library
        # loads but is broken. Either way the server runs on, without GPU series: never a warning.
        except Exception:
            return None
        atexit.register(_shutdown, pynvml)  # once per process: nvmlInit is reference counted
        _initialised = pynvml
    return NvmlCollector(pynvml)


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):  # at exit there is nobody left to tell
        nvml.nvmlShutdown()


class NvmlCollector(Collector):
    """Reads every device at each scrape: devices can appear, vanish (reset, XID error) or be MIG-split."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Declared names let the registry refuse a clash at register time instead of at scrape time.
        return self._families()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        used, total, utilisation = families = self._families()
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError:
            return families  # the driver went away mid-life: empty families, the rest of /metrics still renders
        for index in range(count):
            label = [str(index)]
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                continue  # this device is lost or busy resetting: nothing for it, the others still report
            used.add_metric(label, float(memory.used))
            total.add_metric(label, float(memory.total))
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            except nvml.NVMLError:
                # NotSupported on MIG instances and some boards: memory is still worth showing, so only
                # this gauge is left out for the device.
                continue
            utilisation.add_metric(label, rates.gpu / 100.0)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("rill_gpu_memory_used_bytes", "GPU memory in use (all processes), from NVML.", labels=["gpu"]),
            GaugeMetricFamily("rill_gpu_memory_total_bytes", "GPU memory installed, from NVML.", labels=["gpu"]),
            GaugeMetricFamily("rill_gpu_utilization_ratio", "Share of the last sample period a kernel ran on the GPU (0-1), from NVML.",
                              labels=["gpu"]),
        ]
