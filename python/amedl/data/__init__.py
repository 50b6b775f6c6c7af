"""From AnnData to model input: validation, preprocessing, minibatches.

``validate`` checks the input (raw counts, names, batches), ``preprocess``
normalises and selects genes (scanpy) into a fitted :class:`Preprocessor`,
``loader`` yields scaled dense minibatches on the host or on a device.
"""
from .loader import CSRLoader, DeviceCSR, Minibatch
from .preprocess import SCALINGS, Preprocessor, _highly_variable, _normalised_log
from .validate import AMEDLInputError, check_batches, check_counts, validate_adata

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
