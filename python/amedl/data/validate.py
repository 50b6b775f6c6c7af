"""Input validation: raw counts, unique names, batch columns; errors say how to fix the input.

Messages speak AnnData (``adata.obs[...]``, ``layer=``); they are bounded
(lists of names are cut to a few, with how many more there are). When the
counts are not found, the message says where amedl looked.
"""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import AMEDLInputError, preview

__all__ = ["AMEDLInputError", "check_counts", "check_batches", "validate_adata"]

_CHECK_CHUNK = 1 << 24
#: Layer names that usually hold raw counts, in the order they are suggested.
COUNT_LAYERS = ("counts", "raw_counts", "raw", "umi", "umis")


def _check_memory(adata: ad.AnnData) -> None:
    if adata.isbacked:
        raise AMEDLInputError(
            f"this AnnData is backed by {adata.filename} (opened with backed='r'); amedl needs it in memory: "
            "adata = adata.to_memory() (or read it without backed=)"
        )


def _counts_matrix(adata: ad.AnnData, layer: str | None):
    _check_memory(adata)
    if layer is None:
        X = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise AMEDLInputError(
                f"layer {layer!r} is not in adata.layers (layers: {preview(adata.layers.keys()) or 'none'}). "
                'Pass layer="X" to use adata.X, or the name of the layer that holds raw counts.'
            )
        X = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if X is None:
        raise AMEDLInputError(f"{where} is empty; put the raw count matrix there.")
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        try:
            X = np.asarray(X)
        except Exception as exc:  # exotic arrays
            raise AMEDLInputError(f"{where} has an unsupported type {type(X).__name__}; load it into memory first.") from exc
    return X, where


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def _problem(X) -> tuple[str, int, float | None, float] | None:
    """What keeps ``X`` from being raw counts: ``("nonfinite"|"negative"|"fractional", n, example,
    largest distance of a value from a whole number)``."""
    vals = _values(X)
    n_bad = n_neg = n_frac = 0
    example, off = None, 0.0
    # chunked so that the checks never allocate temporaries the size of the matrix
    for lo in range(0, vals.size, _CHECK_CHUNK):
        v = vals[lo : lo + _CHECK_CHUNK]
        if np.issubdtype(v.dtype, np.floating):
            n_bad += int(np.count_nonzero(~np.isfinite(v)))
            if n_bad:
                break
            frac = v != np.round(v)
            n_frac += int(np.count_nonzero(frac))
            if frac.any():
                off = max(off, float(np.max(np.abs(v[frac] - np.round(v[frac])))))
                if example is None:
                    example = float(v[np.argmax(frac)])
        n_neg += int(np.count_nonzero(v < 0))
    if n_bad:
        return "nonfinite", n_bad, None, off
    if n_neg:
        return "negative", n_neg, None, off
    if n_frac:
        return "fractional", n_frac, example, off
    return None


def first_non_count_row(X: sp.csr_matrix) -> int | None:
    """The first row of CSR ``X`` with a value :func:`_problem` objects to (NaN, infinite, negative,
    fractional), or ``None``."""
    d = X.data
    if not np.issubdtype(d.dtype, np.floating) and not np.issubdtype(d.dtype, np.integer):
        return None
    bad = np.flatnonzero(~np.isfinite(d) | (d < 0) | (d != np.round(d)))
    return int(np.searchsorted(X.indptr, bad[0], side="right")) - 1 if bad.size else None


def _is_counts(X) -> bool:
    try:
        return (np.issubdtype(X.dtype, np.number) and not np.issubdtype(X.dtype, np.complexfloating)
                and 0 not in X.shape and _problem(X) is None)
    except Exception:
        return False


def _where_counts_are(adata: ad.AnnData | None, layer: str | None, *, looked: bool = True) -> str:
    """Where raw counts are (a hint for the message), or where amedl looked for them
    (``looked=False``: an empty string instead of that list)."""
    if adata is None:
        return "Pass the raw counts (e.g. layer='counts'; command line: --layer counts)." if looked else ""
    io_info = adata.uns.get("amedl_io")
    if layer is None and isinstance(io_info, dict) and io_info.get("kind") in ("seurat", "sce") \
            and not io_info.get("counts_found", True):
        what = "Seurat object" if io_info["kind"] == "seurat" else "SingleCellExperiment"
        looked = [str(v) for v in np.atleast_1d(io_info.get("counts_looked", []))]
        return (f"The {what} read from {io_info.get('source', 'the R file')} has no raw counts: amedl looked in "
                f"{', '.join(looked) or 'its counts'} and found no whole-number matrix, so X holds "
                f"{io_info.get('x_name', 'another')!r}, which is normalised. Save the object with its raw counts.")
    found = [name for name in COUNT_LAYERS if name in adata.layers and name != layer and _is_counts(adata.layers[name])]
    found += [name for name in adata.layers if name not in found and name not in COUNT_LAYERS and name != layer
              and _is_counts(adata.layers[name])][:3]
    if found:
        return (f"Raw counts seem to be in adata.layers[{found[0]!r}]: pass layer={found[0]!r} "
                f"(command line: --layer {found[0]}).")
    if layer is not None and adata.X is not None and _is_counts(adata.X):
        return 'Raw counts seem to be in adata.X: pass layer="X" (command line: --layer X).'
    if adata.raw is not None and _is_counts(adata.raw.X):
        return ("Raw counts seem to be in adata.raw: use adata.raw.to_adata() (it keeps every gene of adata.raw; "
                "command line: save that as a file first, python -c \"import anndata as ad; "
                "ad.read_h5ad('in.h5ad').raw.to_adata().write_h5ad('counts.h5ad')\").")
    if not looked:
        return ""
    places = ["adata.X"] + [f"adata.layers[{n!r}]" for n in adata.layers] + (["adata.raw"] if adata.raw is not None else [])
    return f"No raw counts were found (looked in {preview(places, 6)}); amedl needs the unnormalised counts."


def check_counts(X, where: str = "adata.X", adata: ad.AnnData | None = None, layer: str | None = None) -> None:
    """Check that ``X`` holds raw counts: finite, non-negative integers.

    Raises :class:`AMEDLInputError` naming the problem and the fix; given the
    ``adata`` that ``X`` came from, it says where the raw counts are, or
    where it looked for them.
    """
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise AMEDLInputError(f"{where} has shape {X.shape}: there are no cells or no genes.")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise AMEDLInputError(f"{where} has {'complex' if np.issubdtype(X.dtype, np.complexfloating) else 'non-numeric'} "
                              f"dtype {X.dtype}; it must hold raw counts (real whole numbers).")
    problem = _problem(X)
    if problem is None:
        return
    kind, n, example, off = problem
    if kind == "nonfinite":
        # a stray NaN or Inf in otherwise whole numbers: point elsewhere only where counts were found there
        hint = _where_counts_are(adata, layer, looked=False)
        raise AMEDLInputError(
            f"{where} contains NaN or infinite value(s). Remove or fix those entries "
            f"(raw counts are finite, non-negative integers). {hint}".rstrip()
        )
    hint = _where_counts_are(adata, layer)
    if kind == "negative":
        raise AMEDLInputError(
            f"{where} contains {n} negative value(s): amedl expects raw counts, not scaled or centred values. {hint}"
        )
    if off < 1e-4:  # whole numbers up to rounding error (a float conversion, a sum of floats)
        raise AMEDLInputError(
            f"{where} contains {n} value(s) that are whole numbers only up to rounding error (e.g. {example!r}; at most "
            f"{off:.1e} away): if these are the raw counts, round them, e.g. X.data = np.round(X.data) for a sparse "
            "matrix, np.round(X) for a dense one.")
    raise AMEDLInputError(
        f"{where} contains {n} non-integer value(s) (e.g. {example!r}): amedl expects raw "
        f"counts, it normalises them itself. {hint}"
    )


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


def _label_key(label: str) -> str:
    """What two batch labels share when they differ only in case, surrounding spaces or the
    way a number is written (``"a"`` / ``"A "``, ``"1"`` / ``"1.0"``)."""
    key = label.strip().casefold()
    try:
        return repr(float(key))
    except ValueError:
        return key


def _warn_lookalike_labels(labels: list[str], batch_key: str) -> None:
    """Labels that differ only in case, spaces or how a number is written are separate batches: say so."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(_label_key(label), []).append(label)
    alike = [g for g in groups.values() if len(g) > 1]
    if alike:
        warnings.warn(
            f"adata.obs[{batch_key!r}] has batch labels that differ only in case, surrounding spaces or how a number "
            f"is written, each a batch of its own: {'; '.join(' / '.join(map(repr, g)) for g in alike[:3])}. If they "
            f"are one batch, make them equal first, e.g. adata.obs[{batch_key!r}] = "
            f"adata.obs[{batch_key!r}].astype(str).str.strip()", UserWarning, stacklevel=2)


def lookalike_labels(new: list[str], known: list[str]) -> str:
    """A sentence naming the ``new`` batch labels that differ from ``known`` ones only in case,
    spaces or how a number is written (``"1.0"`` for the model's ``"1"``); ``""`` if none."""
    by_key = {_label_key(k): k for k in known}
    pairs = [(n, by_key[_label_key(n)]) for n in new if _label_key(n) in by_key]
    if not pairs:
        return ""
    shown = ", ".join(f"{n!r} looks like the model's {k!r}" for n, k in pairs[:3])
    return (f"{shown}{' ...' if len(pairs) > 3 else ''}: if they are the same batch, write the labels as in training "
            "(e.g. integers as integers, no extra spaces).")


def check_batches(batch: pd.Series, batch_key: str, min_cells: int = 2) -> pd.Categorical:
    """Validate a batch column for training and return it as a categorical."""
    if batch.isna().any():
        raise AMEDLInputError(
            f"adata.obs[{batch_key!r}] has {int(batch.isna().sum())} missing value(s); give every cell a batch "
            "(e.g. fill them with 'unknown') or drop those cells."
        )
    cat = pd.Categorical(batch.astype(str))
    cat = cat.remove_unused_categories()
    _warn_lookalike_labels(list(cat.categories), batch_key)
    counts = pd.Series(cat).value_counts()
    if len(counts) < 2:
        raise AMEDLInputError(
            f"adata.obs[{batch_key!r}] has a single batch ({counts.index[0]!r}): aMEDL separates batch effects "
            "and needs at least 2 batches. Check the batch column, or use PCA / a plain autoencoder for one batch."
        )
    small = counts[counts < min_cells]
    if len(small):
        raise AMEDLInputError(
            f"{len(small)} batch(es) in adata.obs[{batch_key!r}] have fewer than {min_cells} cells "
            f"({preview(small.index)}); merge them with another batch or drop those cells, "
            f"e.g. adata = adata[adata.obs[{batch_key!r}].map(adata.obs[{batch_key!r}].value_counts()) >= {min_cells}].copy()"
        )
    return cat


def check_names(adata: ad.AnnData) -> None:
    """Unique cell names, and unique gene names that are text (genes are matched by name)."""
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()]
        raise AMEDLInputError(f"cell names are not unique (e.g. {preview(dup)}); call adata.obs_names_make_unique() first.")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()]
        raise AMEDLInputError(f"gene names are not unique (e.g. {preview(dup)}); call adata.var_names_make_unique() first.")
    untitled = [g for g in adata.var_names if not isinstance(g, str) or not g.strip()]
    if untitled:
        raise AMEDLInputError(
            f"{len(untitled)} gene name(s) are not text, or are empty (e.g. {preview(map(repr, untitled), 3)}); genes "
            "are matched by name: name every gene, e.g. adata.var_names = adata.var_names.astype(str)")


def check_batch_column(adata: ad.AnnData, batch_key: str) -> None:
    """That ``adata.obs`` has the batch column ``batch_key``."""
    if batch_key not in adata.obs.columns:
        raise AMEDLInputError(
            f"batch column {batch_key!r} is not in adata.obs (columns: {preview(adata.obs.columns, 10) or 'none'}); "
            "pass batch_key= the column that names each cell's batch."
        )


def validate_adata(
    adata: ad.AnnData,
    batch_key: str | None,
    layer: str | None = None,
    *,
    training: bool = True,
) -> None:
    """Validate an AnnData for amedl.

    Checks the type, that it is in memory (not backed), unique cell and gene
    names, the counts (finite, non-negative integers), empty cells, and -
    when ``batch_key`` is given and ``training`` - that the batch column
    exists, has no missing values, at least two batches and at least two
    cells per batch.
    """
    if not isinstance(adata, ad.AnnData):
        raise AMEDLInputError(f"expected an AnnData object, got {type(adata).__name__}.")
    _check_memory(adata)
    check_names(adata)
    if batch_key is not None:
        check_batch_column(adata, batch_key)
    X, where = _counts_matrix(adata, layer)
    check_counts(X, where, adata, layer)
    empty = _row_sums(X) == 0
    if empty.any():
        raise AMEDLInputError(
            f"{int(empty.sum())} cell(s) have no counts at all (e.g. {preview(adata.obs_names[empty], 3)}); remove them "
            "first, e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    if training and batch_key is not None:
        check_batches(adata.obs[batch_key], batch_key)
