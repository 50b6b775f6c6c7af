"""From AnnData to model input: validation, preprocessing, minibatches.

``validate`` checks the input (raw counts, names, batches), ``preprocess``
normalises and selects genes (scanpy) into a fitted :class:`Preprocessor`,
``loader`` yields scaled dense minibatches on the host or on a device.

The names below are imported on first use, so that ``amedl.data.validate``
can run without loading scanpy and torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "CSRLoader": "loader",
    "DeviceCSR": "loader",
    "Minibatch": "loader",
    "RowBlocks": "loader",
    "block_order": "loader",
    "make_loader": "backed",
    "Preprocessor": "preprocess",
    "SCALINGS": "preprocess",
    "_highly_variable": "preprocess",
    "_normalised_log": "preprocess",
    "AMEDLInputError": "validate",
    "check_batches": "validate",
    "check_counts": "validate",
    "validate_adata": "validate",
}

__all__ = [
    "AMEDLInputError",
    "CSRLoader",
    "DeviceCSR",
    "Minibatch",
    "Preprocessor",
    "SCALINGS",
    "check_batches",
    "check_counts",
    "validate_adata",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
