"""Figures through scanpy's plotting: UMAP panels of latent representations.

:func:`umap_grid` draws one row per latent and one column per annotation
(typically batch and cell type); every panel is ``scanpy.pl.embedding`` of a
UMAP that scanpy computed on that latent (``pp.neighbors`` + ``tl.umap``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["umap_embedding", "umap_grid"]


def umap_embedding(latent, *, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP coordinates of a latent (scanpy ``pp.neighbors`` on it, then ``tl.umap``), seeded."""
    import anndata as ad
    import scanpy as sc

    x = np.asarray(latent, dtype=np.float32)
    a = ad.AnnData(np.zeros((x.shape[0], 0), dtype=np.float32), obsm={"X_latent": x})
    sc.pp.neighbors(a, use_rep="X_latent", n_neighbors=int(max(2, min(n_neighbors, x.shape[0] - 1))), random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def umap_grid(
    embeddings: Mapping[str, np.ndarray],
    annotations: Mapping[str, Sequence],
    path=None,
    *,
    titles: Mapping[str, Mapping[str, str]] | None = None,
    seed: int = 0,
    panel_size: float = 3.2,
    umaps: Mapping[str, np.ndarray] | None = None,
    dpi: int = 110,
):
    """A grid of UMAP panels: one row per latent, one column per annotation.

    Parameters
    ----------
    embeddings
        Ordered mapping ``method name -> (n_cells, n_dims) latent``; every
        latent describes the same cells in the same order.
    annotations
        Ordered mapping ``column title -> one label per cell``, e.g.
        ``{"batch": ..., "label": ...}``; the legend stands beside the top row.
    path
        Save the figure there (PNG, written atomically); ``None``: not saved.
    titles
        Extra text per panel, ``titles[method][annotation]`` (e.g. the silhouette).
    seed
        Seed of the neighbour graphs and UMAP layouts.
    panel_size
        Size of a panel in inches.
    umaps
        Precomputed 2-D coordinates per method (skips :func:`umap_embedding`).
    dpi
        Resolution of the saved figure.

    Returns
    -------
    ``(figure, {method: 2-D coordinates})``
    """
    import anndata as ad
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    methods, cols = list(embeddings), list(annotations)
    if not methods or not cols:
        raise ValueError("umap_grid needs at least one embedding and one annotation")
    sizes = {np.asarray(e).shape[0] for e in embeddings.values()} | {len(v) for v in annotations.values()}
    if len(sizes) != 1:
        raise ValueError(f"embeddings and annotations disagree on the number of cells: {sorted(sizes)}")
    umaps = umaps or {}
    coords = {m: np.asarray(umaps[m]) if m in umaps else umap_embedding(embeddings[m], seed=seed) for m in methods}
    obs = pd.DataFrame({c: _categories(v) for c, v in annotations.items()})
    cells = ad.AnnData(obs=obs.set_index(pd.Index([str(i) for i in range(len(obs))])))
    for i, m in enumerate(methods):
        cells.obsm[f"X_umap{i}"] = coords[m]
    fig, axes = plt.subplots(len(methods), len(cols), squeeze=False,
                             figsize=(len(cols) * (panel_size + 1.9), len(methods) * panel_size))
    cells = cells[np.random.default_rng(seed).permutation(cells.n_obs)].copy()  # no category drawn all on top
    for i, m in enumerate(methods):
        for j, c in enumerate(cols):
            extra = (titles or {}).get(m, {}).get(c)
            sc.pl.embedding(cells, basis=f"umap{i}", color=c, ax=axes[i, j], show=False, frameon=False,
                            title=f"{m} — {c}" + (f"\n{extra}" if extra else ""),
                            legend_loc="right margin" if i == 0 else "none", legend_fontsize=7)
            axes[i, j].title.set_fontsize(9)
    fig.tight_layout()
    if path is not None:
        from ._utils import atomic_open

        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    return fig, coords


def _categories(values) -> "pd.Categorical":
    """Labels as categories: a categorical keeps its order, missing labels stay missing (grey, "NA")."""
    import pandas as pd

    if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
        return pd.Categorical(values)
    labels = pd.Series(np.asarray(values, dtype=object))
    return pd.Categorical(labels.where(labels.isna(), labels.astype(str)))
