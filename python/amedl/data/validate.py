"""Input validation: raw counts, unique names, batch columns; errors say how to fix the input."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

_CHECK_CHUNK = 1 << 24


class AMEDLInputError(ValueError):
    """Raised when the input data cannot be used; the message says how to fix it."""



def _counts_matrix(adata: ad.AnnData, layer: str | None):
    if layer is None:
        X = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise AMEDLInputError(
                f"layer {layer!r} is not in adata.layers (available: {list(adata.layers.keys()) or 'none'}). "
                "Pass layer=None to use adata.X, or the name of the layer that holds raw counts."
            )
        X = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if X is None:
        raise AMEDLInputError(f"{where} is empty; put the raw count matrix there.")
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        try:
            X = np.asarray(X)
        except Exception as exc:  # backed or exotic arrays
            raise AMEDLInputError(f"{where} has an unsupported type {type(X).__name__}; load it into memory first.") from exc
    return X, where


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def check_counts(X, where: str = "adata.X") -> None:
    """Check that ``X`` holds raw counts: finite, non-negative integers.

    Raises :class:`AMEDLInputError` naming the problem and the fix.
    """
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise AMEDLInputError(f"{where} has shape {X.shape}: there are no cells or no genes.")
    if not np.issubdtype(X.dtype, np.number):
        raise AMEDLInputError(f"{where} has non-numeric dtype {X.dtype}; it must hold raw counts.")
    vals = _values(X)
    n_bad = n_neg = n_frac = 0
    example = None
    # chunked so that the checks never allocate temporaries the size of the matrix
    for lo in range(0, vals.size, _CHECK_CHUNK):
        v = vals[lo : lo + _CHECK_CHUNK]
        if np.issubdtype(v.dtype, np.floating):
            n_bad += int(np.count_nonzero(~np.isfinite(v)))
            if n_bad:
                break
            frac = v != np.round(v)
            n_frac += int(np.count_nonzero(frac))
            if example is None and frac.any():
                example = float(v[np.argmax(frac)])
        n_neg += int(np.count_nonzero(v < 0))
    if n_bad:
        raise AMEDLInputError(
            f"{where} contains NaN or infinite value(s). Remove or fix those entries "
            "(raw counts are finite, non-negative integers)."
        )
    if n_neg:
        raise AMEDLInputError(
            f"{where} contains {n_neg} negative value(s): amedl expects raw counts. If these are scaled or "
            "log-normalised values, pass the raw counts instead (e.g. layer='counts')."
        )
    if n_frac:
        raise AMEDLInputError(
            f"{where} contains {n_frac} non-integer value(s) (e.g. {example:.4g}): amedl expects raw "
            "counts, it normalises them itself. Pass the raw counts (e.g. layer='counts' or adata.raw)."
        )


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


def check_batches(batch: pd.Series, batch_key: str, min_cells: int = 2) -> pd.Categorical:
    """Validate a batch column for training and return it as a categorical."""
    if batch.isna().any():
        raise AMEDLInputError(
            f"adata.obs[{batch_key!r}] has {int(batch.isna().sum())} missing value(s); give every cell a batch "
            "(e.g. fill them with 'unknown') or drop those cells."
        )
    cat = pd.Categorical(batch.astype(str))
    cat = cat.remove_unused_categories()
    counts = pd.Series(cat).value_counts()
    if len(counts) < 2:
        raise AMEDLInputError(
            f"adata.obs[{batch_key!r}] has a single batch ({counts.index[0]!r}): aMEDL separates batch effects "
            "and needs at least 2 batches. Check the batch column, or use PCA / a plain autoencoder for one batch."
        )
    small = counts[counts < min_cells]
    if len(small):
        raise AMEDLInputError(
            f"batch(es) {list(small.index)} in adata.obs[{batch_key!r}] have fewer than {min_cells} cells; "
            "merge them with another batch or drop those cells."
        )
    return cat


def validate_adata(
    adata: ad.AnnData,
    batch_key: str | None,
    layer: str | None = None,
    *,
    training: bool = True,
) -> None:
    """Validate an AnnData for amedl.

    Checks the type, unique cell and gene names, the counts (finite,
    non-negative integers), empty cells, and - when ``batch_key`` is given and
    ``training`` - that the batch column exists, has no missing values, at
    least two batches and at least two cells per batch.
    """
    if not isinstance(adata, ad.AnnData):
        raise AMEDLInputError(f"expected an AnnData object, got {type(adata).__name__}.")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:5].tolist()
        raise AMEDLInputError(f"cell names are not unique (e.g. {dup}); call adata.obs_names_make_unique() first.")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()][:5].tolist()
        raise AMEDLInputError(f"gene names are not unique (e.g. {dup}); call adata.var_names_make_unique() first.")
    if batch_key is not None and batch_key not in adata.obs.columns:
        raise AMEDLInputError(
            f"batch column {batch_key!r} is not in adata.obs (columns: {list(adata.obs.columns)}); "
            "pass batch_key= the column that names each cell's batch."
        )
    X, where = _counts_matrix(adata, layer)
    check_counts(X, where)
    empty = _row_sums(X) == 0
    if empty.any():
        names = adata.obs_names[empty][:5].tolist()
        raise AMEDLInputError(
            f"{int(empty.sum())} cell(s) have no counts at all (e.g. {names}); remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    if training and batch_key is not None:
        check_batches(adata.obs[batch_key], batch_key)
