"""Fitting from a file on disk: ``amedl fit INPUT --backed``.

:func:`fit_backed_command` trains a model whose counts stay in the ``.h5ad``
(:mod:`amedl.data.backed` reads them in blocks) and writes a copy of the file
with the latents; :func:`write_latents` streams a fitted model's latents into
an ``.h5ad`` chunk by chunk, so that nothing the size of the data is held in
memory.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import anndata as ad
import h5py
import torch

from . import distributed
from ._utils import Staging
from .data.backed import CHUNK, BackedLoader
from .errors import AMEDLInputError, AMEDLPathError
from .metrics import silhouette_report
from .model import INFERENCE_BATCH, AMEDL
from .tl import record
from .train import NETWORKS


def write_latents(model, path: str | os.PathLike, kinds: Sequence[str] = ("fe", "re"), *,
                  chunk: int = CHUNK, key_added: str = "amedl", extra_record: dict | None = None) -> None:
    """Write the training cells' latents into ``obsm["X_amedl_<kind>"]`` of the ``.h5ad``
    at ``path`` (opened for writing), ``chunk`` cells at a time, and the fit's record
    (with ``extra_record``'s entries) into ``uns[key_added]``."""
    X = model._X
    with h5py.File(path, "r+") as f:
        obsm = f.require_group("obsm")
        if "encoding-type" not in obsm.attrs:
            obsm.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        for kind in kinds:
            net, name = model._module(kind), f"X_{key_added}_{kind}"
            if name in obsm:
                del obsm[name]
            ds = obsm.create_dataset(name, shape=(X.shape[0], model.config.n_latent), dtype="float32",
                                     chunks=(min(chunk, X.shape[0]), model.config.n_latent))
            ds.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
            lo = 0
            # minibatches of AMEDL.latent's size: a chunk-sized one would add to the fit's peak memory
            loader = BackedLoader(X, model._codes, model.prep, batch_size=min(chunk, INFERENCE_BATCH),
                                  device=model.device)
            with torch.no_grad():
                for mb in loader:
                    z = net.latent(mb).float().cpu().numpy()
                    if NETWORKS[kind].latent_intercepts and model.intercepts is not None:  # the codes are the model's own
                        z = model.intercepts.apply(z, mb.batch.cpu().numpy())
                    ds[lo : lo + len(z)] = z
                    lo += len(z)
        uns = f.require_group("uns")
        if key_added in uns:
            del uns[key_added]
        ad.io.write_elem(uns, key_added, {**record(model), **(extra_record or {})})


def _identity(path) -> tuple[int, int, int, int]:
    """What tells that a file is still the one that was read: device, inode, size, modification time."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _check_unchanged(path, identity: tuple) -> None:
    if _identity(path) != identity:
        raise AMEDLInputError(
            f"{path} changed while the model trained from it (replaced or written to): the output would pair its "
            "cells with latents of the cells trained on, so nothing was written. Rerun on a file that stays as it is."
        )


def check_room_for_copy(path, out: Path, n_obs: int, n_latent: int) -> None:
    """An error, before training, when the output's disk cannot hold the copy of the input plus
    its latents (``amedl fit --backed`` writes both)."""
    need = os.path.getsize(path) + 2 * n_obs * n_latent * 4
    free = shutil.disk_usage(out.parent if out.parent.exists() else Path(".")).free
    if free < need * 1.05:
        raise AMEDLPathError(
            f"the disk of --out {out} has {free / 1e9:.2f} GB free; the output is a copy of the input plus the latents, "
            f"about {need / 1e9:.2f} GB. Free space, or write the output to another disk"
        )


def fit_backed_command(args, settings: dict, out: Path, say) -> int:
    """``amedl fit INPUT --backed``: train from the file, write a copy of it with the latents."""
    t0 = time.perf_counter()
    identity = _identity(args.input)
    adata = ad.read_h5ad(args.input, backed="r")
    say(f"opened {args.input} on disk: {adata.n_obs} cells × {adata.n_vars} genes")
    model = AMEDL(adata, args.batch_key, layer=args.layer, preset=args.preset, **settings)
    if distributed.rank() == 0:
        check_room_for_copy(args.input, out, adata.n_obs, model.config.n_latent)
    model.fit(seed=args.seed, max_epochs=args.epochs, progress=not args.quiet)
    if distributed.rank() != 0:
        return 0
    for line in model.training_summary():
        say(line)
    extra = {"model_dir": str(Path(os.path.expanduser(args.model_dir)).resolve())} if args.model_dir else {}
    with Staging() as stage:
        if args.model_dir:
            model.save(args.model_dir, overwrite=args.overwrite, staging=stage)
        tmp = stage.add(out)
        _check_unchanged(args.input, identity)
        shutil.copyfile(args.input, tmp)
        _check_unchanged(args.input, identity)  # (not written to while it was copied)
        write_latents(model, tmp, extra_record=extra)
        if args.label_key:  # the latents are small: read them back for the report
            with h5py.File(tmp, "r") as f:
                latents = {kind: f[f"obsm/X_amedl_{kind}"][:] for kind in ("fe", "re")}
            for line in silhouette_report(latents, adata.obs[args.batch_key].astype(str),
                                          adata.obs[args.label_key].astype(str), args.label_key):
                say(line)
        distributed.check_launcher_here()
    if args.model_dir:
        say(f"model saved to {args.model_dir}")
    say(f"wrote {args.out} (the input plus obsm X_amedl_fe, X_amedl_re; uns amedl) in {time.perf_counter() - t0:.1f}s total")
    return 0
