"""UMAP panels of latent representations (scanpy for the embedding, matplotlib for drawing).

The main entry point is :func:`umap_grid`: one row per method, one column per
annotation (typically batch and cell type), every panel a UMAP of that
method's latent computed with scanpy (``pp.neighbors`` + ``tl.umap``).
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["umap_embedding", "umap_grid", "category_colors"]


def umap_embedding(latent, *, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP coordinates of a latent, computed the scanpy way.

    Builds a throw-away AnnData holding ``latent`` in ``obsm``, runs
    ``scanpy.pp.neighbors(use_rep=...)`` and ``scanpy.tl.umap`` with the given
    seed, and returns the ``(n_cells, 2)`` coordinates.
    """
    import anndata as ad
    import scanpy as sc

    x = np.asarray(latent, dtype=np.float32)
    a = ad.AnnData(np.zeros((x.shape[0], 0), dtype=np.float32))
    a.obsm["X_latent"] = x
    n_neighbors = int(max(2, min(n_neighbors, x.shape[0] - 1)))
    sc.pp.neighbors(a, use_rep="X_latent", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def category_colors(categories: Sequence) -> dict:
    """A stable colour per category (scanpy's default palettes: up to 20, then 28, then 102 colours)."""
    from scanpy.plotting import palettes

    cats = list(categories)
    n = len(cats)
    if n <= 20:
        pal = list(palettes.default_20)
    elif n <= 28:
        pal = list(palettes.default_28)
    else:
        pal = list(palettes.default_102)
    return {c: pal[i % len(pal)] for i, c in enumerate(cats)}


def _categories(values) -> tuple[np.ndarray, list]:
    import pandas as pd

    s = pd.Series(np.asarray(values)).astype("category")
    return s.astype(str).to_numpy(), [str(c) for c in s.cat.categories]


def umap_grid(
    embeddings: Mapping[str, np.ndarray],
    annotations: Mapping[str, Sequence],
    path=None,
    *,
    titles: Mapping[str, Mapping[str, str]] | None = None,
    seed: int = 0,
    panel_size: float = 3.2,
    point_size: float | None = None,
    umaps: Mapping[str, np.ndarray] | None = None,
    dpi: int = 110,
):
    """Draw a grid of UMAP panels: one row per latent, one column per annotation.

    Parameters
    ----------
    embeddings
        Ordered mapping ``method name -> (n_cells, n_dims) latent``; all latents
        describe the same cells in the same order.
    annotations
        Ordered mapping ``column title -> one label per cell`` (e.g.
        ``{"batch": ..., "cell type": ...}``); each column colours the cells by
        one annotation, with a legend beside the top panel.
    path
        Where to save the figure (PNG); written atomically. ``None``: not saved.
    titles
        Optional extra text per panel: ``titles[method][annotation]`` (e.g. the
        silhouette) is appended to the panel title.
    seed
        Seed of the neighbour graph and UMAP layout.
    panel_size
        Size of each panel in inches.
    point_size
        Marker size; default scales with the number of cells.
    umaps
        Precomputed 2-D coordinates per method (skips :func:`umap_embedding`).
    dpi
        Resolution of the saved figure.

    Returns
    -------
    (figure, dict of the 2-D coordinates per method)
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(embeddings)
    cols = list(annotations)
    if not methods or not cols:
        raise ValueError("umap_grid needs at least one embedding and one annotation")
    n_cells = {np.asarray(e).shape[0] for e in embeddings.values()}
    n_cells |= {len(v) for v in annotations.values()}
    if len(n_cells) != 1:
        raise ValueError(f"embeddings and annotations disagree on the number of cells: {sorted(n_cells)}")
    n = n_cells.pop()
    coords = dict(umaps or {})
    for mname in methods:
        if mname not in coords:
            coords[mname] = umap_embedding(embeddings[mname], seed=seed)
    if point_size is None:
        point_size = float(np.clip(12000.0 / max(n, 1), 1.0, 20.0))

    cats = {c: _categories(annotations[c]) for c in cols}
    colors = {c: category_colors(cats[c][1]) for c in cols}
    legend_width = 1.9
    fig, axes = plt.subplots(
        len(methods), len(cols),
        figsize=(len(cols) * (panel_size + legend_width), len(methods) * panel_size),
        squeeze=False,
    )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # draw in random order so no category hides another
    for i, mname in enumerate(methods):
        xy = coords[mname]
        for j, c in enumerate(cols):
            ax = axes[i, j]
            values, levels = cats[c]
            col = np.array([colors[c][v] for v in values], dtype=object)
            ax.scatter(xy[order, 0], xy[order, 1], c=list(col[order]), s=point_size, linewidths=0, rasterized=True)
            extra = (titles or {}).get(mname, {}).get(c)
            ax.set_title(f"{mname} — {c}" + (f"\n{extra}" if extra else ""), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel("UMAP2", fontsize=8)
            if i == len(methods) - 1:
                ax.set_xlabel("UMAP1", fontsize=8)
            if i == 0:
                handles = [
                    plt.Line2D([], [], marker="o", linestyle="", markersize=5, color=colors[c][lv], label=lv)
                    for lv in levels
                ]
                ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                          frameon=False, title=c, title_fontsize=8, ncol=1 if len(levels) <= 16 else 2)
    fig.tight_layout()
    if path is not None:
        from .benchmark import atomic_write

        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    return fig, coords
