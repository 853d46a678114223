"""The transformer: config (from file metadata), layers, families, and the loader that puts them together.

`from pellucid.model import load_model, Transformer` works, but importing this package does not import
torch: `inspect` and the memory planner only need `pellucid.model.config`, and should start fast.
"""

_LAZY = {
    "load_model": "pellucid.model.loader",
    "make_linear": "pellucid.model.loader",
    "Transformer": "pellucid.model.transformer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pellucid.model' has no attribute {name!r}")
