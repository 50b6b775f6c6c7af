"""The PCA baseline on the model's own preprocessing.

(The other baseline, the plain autoencoder, is a network of the model:
``AMEDL.fit(kinds=[..., "ae"])`` then ``AMEDL.latent(kind="ae")``.)
"""
from __future__ import annotations

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA

from .model import AMEDL


def pca_latent(model: AMEDL, adata: ad.AnnData | None = None, n_comps: int | None = None, seed: int = 0) -> np.ndarray:
    """PCA of the model's input matrix: fitted on the model's training cells, applied to ``adata``.

    ``n_comps`` defaults to the model's latent size, so PCA and the networks are
    compared at the same dimension.
    """
    train = model.transform()
    n_comps = model.config.n_latent if n_comps is None else n_comps
    n_comps = min(n_comps, train.shape[0] - 1, train.shape[1])
    pca = PCA(n_components=n_comps, svd_solver="randomized", random_state=seed).fit(train)
    target = train if adata is None else model.transform(adata)
    return pca.transform(target).astype(np.float32)
