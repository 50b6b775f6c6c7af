"""Counterfactual expression checked against real cells.

Where the truth exists, a counterfactual can be scored: the cells of batch
``source`` are decoded as if measured in batch ``target`` and compared, per cell
group, with the real cells of ``target`` (e.g. control cells decoded as the
same donor's stimulated sample, against the real stimulated cells). The scores
are those of scGen (Lotfollahi et al., Nature Methods 2019) and CPA
(Lotfollahi et al., Molecular Systems Biology 2023): R² of the predicted mean
expression over genes, over all model genes and over the genes that change
most, each beside the no-change baseline (the source cells' own mean), and the
correlation of predicted with real per-gene change.

Means are pseudobulk: ``log1p`` of the mean expression per 10⁴ counts over a
group's cells, for real and decoded cells alike. (The mean of ``log1p`` would
compare a decoder's expected expression with noisy observed counts, which
differ by Jensen's inequality even for a perfect model.)
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import r2_score

from ._utils import whole_number
from .errors import AMEDLInputError, preview

__all__ = ["predicted_change", "counterfactual_scores"]

_COLUMNS = ["group", "n_source", "n_target", "r2_baseline", "r2", "r2_top_baseline", "r2_top", "change_corr"]


def _pseudobulk(log_expression) -> np.ndarray:
    """``log1p`` of the mean expression per 10⁴ counts of cells given in log1p units."""
    x = log_expression.expm1() if hasattr(log_expression, "expm1") else np.expm1(log_expression)
    return np.log1p(np.asarray(x.mean(axis=0)).ravel())


def _real(model, adata, layer) -> np.ndarray:
    return _pseudobulk(model.prep.transform(adata, model._counts_layer(layer)))


def _decoded(model, adata, batch, kind, layer) -> np.ndarray:
    return _pseudobulk(model.reconstruct(adata, batch=batch, kind=kind, layer=layer))


def _batches(model, adata, source: str, target: str) -> np.ndarray:
    """Each cell's batch, once ``source`` and ``target`` are checked to be two of the model's batches."""
    if model.batch_key not in adata.obs.columns:
        raise AMEDLInputError(f"adata.obs has no {model.batch_key!r} column (the model's batch key); "
                              "the counterfactual needs each cell's batch")
    if model._batch_code(source) == model._batch_code(target):
        raise AMEDLInputError(f"source and target are the same batch ({source!r}); name two batches")
    return adata.obs[model.batch_key].astype(str).to_numpy()


def predicted_change(model, adata, source: str, target: str, *, kind: str = "fe", layer: str | None = None) -> pd.Series:
    """Per gene, the model's predicted change of pseudobulk log expression when the
    cells of batch ``source`` in ``adata`` are decoded as batch ``target`` instead
    of as their own batch; sorted from most raised to most lowered."""
    cells = adata[_batches(model, adata, source, target) == str(source)]
    if cells.n_obs == 0:
        raise AMEDLInputError(f"no cells of batch {source!r} in adata.obs[{model.batch_key!r}]")
    own = _decoded(model, cells, None, kind, layer)
    as_target = _decoded(model, cells, target, kind, layer)
    return pd.Series(as_target - own, index=pd.Index(model.genes, name="gene"), name=f"{target} - {source}").sort_values(
        ascending=False
    )


def counterfactual_scores(
    model,
    adata,
    source: str,
    target: str,
    groupby: str,
    *,
    n_top: int = 100,
    min_cells: int = 30,
    kind: str = "fe",
    layer: str | None = None,
) -> pd.DataFrame:
    """Score the counterfactual "cells of ``source`` as if from ``target``" per group.

    For every group of ``adata.obs[groupby]`` with at least ``min_cells`` cells
    in both batches: ``r2`` is the coefficient of determination of the
    predicted pseudobulk expression (source cells decoded as ``target``) against
    that of the real target cells over all model genes, ``r2_baseline`` the
    same for the source cells' real mean (predicting no change); ``r2_top``
    and ``r2_top_baseline`` the same over the ``n_top`` genes whose real mean
    changes most; ``change_corr`` the Pearson correlation over all genes of the
    predicted change (decoded as ``target`` minus decoded as ``source``) with
    the real change (target mean minus source mean).

    A group too small in either batch is left out; where none is left, the
    table is empty (with its columns) and a warning says why.
    """
    batch = _batches(model, adata, source, target)
    if groupby not in adata.obs.columns:
        raise AMEDLInputError(f"groupby column {groupby!r} is not in adata.obs (columns: {preview(adata.obs.columns, 10)})")
    for name, value in (("n_top", n_top), ("min_cells", min_cells)):
        whole_number(name, value, 1, error=AMEDLInputError)
    groups = adata.obs[groupby].astype(str).to_numpy()
    rows = []
    for g in pd.unique(groups):
        src = (batch == str(source)) & (groups == g)
        tgt = (batch == str(target)) & (groups == g)
        if src.sum() < min_cells or tgt.sum() < min_cells:
            continue
        cells = adata[src]
        real_src, real_tgt = _real(model, cells, layer), _real(model, adata[tgt], layer)
        own = _decoded(model, cells, None, kind, layer)
        pred = _decoded(model, cells, target, kind, layer)
        real_change = real_tgt - real_src
        top = np.argsort(-np.abs(real_change))[:n_top]
        rows.append(
            {
                "group": g,
                "n_source": int(src.sum()),
                "n_target": int(tgt.sum()),
                "r2_baseline": r2_score(real_tgt, real_src),
                "r2": r2_score(real_tgt, pred),
                "r2_top_baseline": r2_score(real_tgt[top], real_src[top]),
                "r2_top": r2_score(real_tgt[top], pred[top]),
                "change_corr": float(np.corrcoef(pred - own, real_change)[0, 1]),
            }
        )
    if not rows:
        warnings.warn(f"no {groupby!r} group has {min_cells} cells (min_cells) in both {source!r} and {target!r}; "
                      "the table is empty", stacklevel=2)
    return pd.DataFrame(rows, columns=_COLUMNS)
