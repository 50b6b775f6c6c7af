"""amedl: autoencoder mixed-effects deep learning (aMEDL) for single-cell RNA-seq.

Two complementary latents per cell: a batch-invariant fixed-effects (FE)
latent and a batch-specific random-effects (RE) latent.

The submodules and the names below are imported on first use (``amedl.AMEDL``,
``amedl.io``, ...), so that ``import amedl`` and the command line start fast;
``import rpy2`` happens only when an R file is read or written.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("baselines", "benchmark", "config", "counterfactual", "data", "datasets", "demo", "differential",
               "distributed", "errors", "io", "metrics", "modelfile", "pl", "tl")
_NAMES = {
    "AMEDL": "model",
    "AMEDLConfig": "config",
    "make_config": "config",
    "AMEDLError": "errors",
    "AMEDLInputError": "errors",
    "AMEDLConfigError": "errors",
    "AMEDLModelError": "errors",
}

__all__ = ["AMEDL", "AMEDLConfig", "AMEDLError", "AMEDLInputError", "AMEDLConfigError", "AMEDLModelError",
           "baselines", "benchmark", "counterfactual", "datasets", "differential", "distributed", "io", "metrics",
           "make_config", "pl", "tl", "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_NAMES))
