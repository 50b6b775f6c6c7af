"""Scanpy-style tools, and the one writer of aMEDL outputs into an AnnData.

:func:`amedl` fits and writes; :func:`add_latents` writes the latents of a
fitted model with its :func:`record`. ``amedl fit`` (the command line) and the
R package (``RunAMEDL()``, through :mod:`amedl._rbridge`) write their outputs
through these functions, so every output carries the same ``uns['amedl']``.
"""
from __future__ import annotations

import anndata as ad

from . import __version__
from .config import make_config
from .model import AMEDL

__all__ = ["amedl", "add_latents", "record"]


def record(model: AMEDL) -> dict:
    """What was fitted, as stored in ``uns['amedl']``: batch key, counts layer,
    seed, preset, latent size, genes, batches, epochs run per network, the
    settings that differ from the preset (``settings``; those set to ``None``,
    i.e. off or no limit, by name in ``settings_none``), the engine version and
    the model's :attr:`~amedl.AMEDL.fingerprint`.

    Only plain values (strings, integers, lists, dicts), so that the record
    survives ``.h5ad``, ``.rds`` and reticulate unchanged.
    """
    info = model.train_info
    if not info:
        raise RuntimeError("the model is not fitted: call fit() first")
    preset, config = make_config(model.preset).to_dict(), model.config.to_dict()
    return {
        "batch_key": str(model.batch_key),
        "layer": "" if model.layer is None else str(model.layer),
        "seed": int(next(iter(info.values()))["seed"]),
        "preset": str(model.preset),
        "n_latent": int(model.config.n_latent),
        "genes": [str(g) for g in model.genes],
        "batches": [str(b) for b in model.batches],
        "epochs": {kind: int(v["epochs_run"]) for kind, v in info.items()},
        # how the cells were read, which changes the latents for the same seed (README, "Scaling")
        "processes": max(int(v.get("processes", 1)) for v in info.values()),
        "from_disk": any(bool(v.get("from_disk", False)) for v in info.values()),
        # settings that differ from the preset's (None, i.e. "no limit", cannot be stored in .h5ad)
        # (device and threads are how it ran, not what was fitted)
        "settings": {k: v for k, v in config.items() if v != preset.get(k) and v is not None
                     and k not in ("n_latent", "device", "threads")},
        # ... so the settings turned off (None) where the preset has a value are listed by name
        "settings_none": sorted(k for k, v in config.items() if v is None and preset.get(k) is not None
                                and k not in ("device", "threads")),
        "amedl_version": __version__,
        "fingerprint": model.fingerprint,
    }


def add_latents(adata: ad.AnnData, model: AMEDL, *, key_added: str = "amedl", kinds=("fe", "re"),
                layer: str | None = None) -> dict:
    """Write a fitted model's latents of ``adata`` and its record into ``adata``.

    Adds ``obsm['X_{key_added}_fe']`` (batch-invariant), ``obsm['X_{key_added}_re']``
    (batch-specific) and ``uns[key_added]`` (:func:`record`); returns the record.
    ``kinds`` chooses the latents (e.g. ``("fe",)`` for cells without a batch column);
    a latent of another kind already in ``adata`` under ``key_added`` is removed, since
    it is not this model's. All latents are computed before anything is written into ``adata``.
    ``layer``: where ``adata`` holds the counts (:meth:`~amedl.AMEDL.latent`'s ``layer``).
    """
    latents = {kind: model.latent(adata, kind=kind, layer=layer) for kind in kinds}
    rec = record(model)
    for kind in ("fe", "re"):
        if kind not in latents:
            adata.obsm.pop(f"X_{key_added}_{kind}", None)
    for kind, z in latents.items():
        adata.obsm[f"X_{key_added}_{kind}"] = z
    adata.uns[key_added] = rec
    return rec


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
    """Fit aMEDL and store both latents in ``adata`` (like scanpy's ``tl`` functions, this writes into it).

    Parameters
    ----------
    adata
        Raw counts in ``X`` or ``layer``, the batch in ``obs[batch_key]``.
    batch_key, layer
        Passed to :class:`amedl.AMEDL`.
    seed, max_epochs, progress
        Passed to :meth:`amedl.AMEDL.fit`.
    key_added
        Writes ``obsm['X_{key_added}_fe']``, ``obsm['X_{key_added}_re']`` and ``uns[key_added]``.
    copy
        Leave ``adata`` alone and return ``(new_adata, model)``.
    **settings
        Further :class:`amedl.AMEDLConfig` settings (``preset``, ``n_latent``, ``lr``, ...).

    Returns
    -------
    The fitted model, or ``(new_adata, model)`` with ``copy=True``.
    """
    target = adata.copy() if copy else adata
    model = AMEDL(target, batch_key, layer=layer, **settings)
    model.fit(seed=seed, max_epochs=max_epochs, progress=progress)
    add_latents(target, model, key_added=key_added)
    return (target, model) if copy else model
