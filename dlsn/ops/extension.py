"""Lazy access to the compiled extension `dlsn._C`.

Importing dlsn never fails because the extension is missing or broken; the ops that need it raise
a RuntimeError that says why and how to rebuild.
"""
import importlib

_module = None
_error = None


def load_extension():
    """Return the `dlsn._C` module, importing it once; raise a clear error when it is unavailable."""
    global _module, _error
    if _module is not None:
        return _module
    if _error is None:
        try:
            _module = importlib.import_module("dlsn._C")
            return _module
        except ImportError as exc:
            _error = exc
    raise RuntimeError(
        "the dlsn C++/CUDA extension (dlsn._C) is not available: "
        f"{_error}. Rebuild it with `pip install --no-build-isolation -e .` in the repository."
    ) from _error


def extension_available() -> bool:
    try:
        load_extension()
    except RuntimeError:
        return False
    return True
