"""A real redis-server on loopback for the cache tests: its own port, no persistence, stopped at the end.

The binary comes from the system package (``apt-get install redis-server``; scripts/test installs it).
When it is missing the tests fail and say so: a skipped Redis test would hide a broken shared cache.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

STARTUP_S = 10.0


def redis_binary() -> str:
    found = shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(p)), None)
    if found is None:
        raise RuntimeError("redis-server is not installed: run `apt-get install redis-server` (scripts/test does); "
                           "the Redis cache tests need a real server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int) -> bool:
    """True when a Redis answers PING on ``port`` (raw RESP: no client object left to close)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``with RedisServer() as server: server.url``; ``stop()`` kills it early (a Redis that goes away mid-run)."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self._dir = tempfile.TemporaryDirectory(prefix="rill-redis-")
        for _ in range(3):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning", "--logfile", self.log],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + STARTUP_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ping(self.port):
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.terminate()
            self._reap()
        err = Path(self.log).read_text(errors="replace").strip() if os.path.exists(self.log) else "no log"
        self.stop()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}: {err}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self._reap()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def log(self) -> str:
        assert self._dir is not None
        return os.path.join(self._dir.name, "redis.log")

    def _reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
