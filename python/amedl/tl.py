"""Scanpy-style tools: one call that fits aMEDL and writes the latents into the AnnData."""
from __future__ import annotations

import anndata as ad

from .model import AMEDL


def amedl(
    adata: ad.AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    seed: int = 0,
    max_epochs: int | None = None,
    progress: bool = True,
    key_added: str = "amedl",
    copy: bool = False,
    **settings,
) -> AMEDL | tuple[ad.AnnData, AMEDL]:
    """Fit aMEDL and store the latents (like scanpy's ``tl`` functions, this writes into ``adata``).

    Adds ``adata.obsm['X_{key_added}_fe']`` (batch-invariant) and
    ``adata.obsm['X_{key_added}_re']`` (batch-specific) and the parameters in
    ``adata.uns[key_added]``. With ``copy=True`` the input is left alone and
    ``(new_adata, model)`` is returned; otherwise the fitted model is returned.
    """
    target = adata.copy() if copy else adata
    model = AMEDL(target, batch_key, layer=layer, **settings)
    model.fit(seed=seed, max_epochs=max_epochs, progress=progress)
    target.obsm[f"X_{key_added}_fe"] = model.latent(kind="fe")
    target.obsm[f"X_{key_added}_re"] = model.latent(kind="re")
    target.uns[key_added] = {
        "batch_key": batch_key,
        "layer": layer if layer is not None else "",
        "seed": seed,
        "preset": model.preset,
        "n_latent": model.config.n_latent,
        "n_genes": len(model.genes),
        "epochs": {k: v["epochs_run"] for k, v in model.train_info.items()},
    }
    return (target, model) if copy else model
