"""mmembed: multimodal LLMs as universal embedding models (E5-V, UniME, MM-GEM).

`import mmembed` is cheap (no torch); `from mmembed import Embedder` loads the inference stack.
"""

__version__ = "0.1.0"

try:  # the configs' `${mmembed_cpu_precision:}` (mmembed.hardware); omegaconf is light, torch is not imported
    from mmembed.hardware import register_resolvers as _register_resolvers

    _register_resolvers()
except ImportError:  # omegaconf absent: only the Hydra entry points need the resolver
    pass

# Public names loaded on first access (PEP 562), so importing the package pulls in nothing heavy.
_LAZY = {
    "Embedder": "mmembed.inference.embedder",
    "export_merged": "mmembed.inference.export",
    "load_index": "mmembed.inference.index",
}
__all__ = ["Embedder", "export_merged", "load_index", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmembed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
