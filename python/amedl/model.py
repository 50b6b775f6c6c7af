"""The user-facing aMEDL model: fit, latents, reconstructions, counterfactuals, save/load."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from . import __version__, distributed, modelfile
from .config import ADAPT_STEPS, RULES, AMEDLConfig, make_config
from .data import AMEDLInputError, CSRLoader, DeviceCSR, Preprocessor, make_loader
from .data.validate import lookalike_labels
from .errors import AMEDLConfigError, AMEDLModelError, preview
from .intercepts import MAX_CELLS as INTERCEPT_CELLS
from .intercepts import LatentIntercepts
from .nn import predicts_unseen
from .train import NETWORKS, LoopSettings, PlanContext, adapt_new_batches, fit_loop
from ._utils import Staging, apply_threads, resolve_device, seed_everything, whole_number

logger = logging.getLogger("amedl")

KINDS = tuple(NETWORKS)
KIND_NAMES = {k: n.description for k, n in NETWORKS.items()}
#: Training cells (at most) whose PCA is the within-batch neighbourhood reference of ``fe_neighbour_weight``.
REFERENCE_CELLS = 20_000
_CONFIG_FILE, _WEIGHTS_FILE = modelfile.CONFIG_FILE, modelfile.WEIGHTS_FILE
#: Cells per minibatch when the networks only encode or decode (no gradients).
INFERENCE_BATCH = 4096
#: The entry of ``weights.pt`` that holds the FE latent's batch intercepts.
_INTERCEPTS = "fe_intercepts"


class AMEDL:
    """aMEDL: a batch-invariant fixed-effects (FE) latent and a batch-specific
    random-effects (RE) latent for single-cell RNA-seq counts.

    Parameters
    ----------
    adata
        Cells × genes AnnData with raw counts in ``X`` (or in ``layer``). It is
        validated and preprocessed (normalise to 10⁴, log1p, batch-aware highly
        variable genes, scaling) on a copy; it is not modified.
    batch_key
        Column of ``adata.obs`` naming each cell's batch (donor, chemistry, site...).
    layer
        Layer holding raw counts; ``None`` (or ``"X"``) uses ``adata.X``.
    preset
        ``"default"`` (tuned for speed and quality) or ``"paper"`` (the
        published configuration). See :mod:`amedl.config`.
    genes
        Genes to model instead of the highly variable ones.
    **settings
        Any field of :class:`amedl.config.AMEDLConfig` (``n_latent``,
        ``n_top_genes``, ``scaling``, ``lr``, ``batch_size``, ``max_epochs``, ...).

    Examples
    --------
    >>> m = amedl.AMEDL(adata, batch_key="donor")
    >>> m.fit(seed=0)
    >>> adata.obsm["X_amedl_fe"] = m.latent(adata, kind="fe")
    >>> adata.obsm["X_amedl_re"] = m.latent(adata, kind="re")
    """

    def __init__(
        self,
        adata: ad.AnnData,
        batch_key: str,
        *,
        layer: str | None = None,
        preset: str = "default",
        genes: Sequence[str] | None = None,
        **settings,
    ):
        self.config: AMEDLConfig = make_config(preset, **settings)
        self.device = resolve_device(self.config.device)  # before any work: a device that does not exist is an error
        apply_threads(self.config.threads)
        self.preset = preset
        self.batch_key = batch_key
        self.layer = layer = None if layer == "X" else layer
        if getattr(adata, "isbacked", False):  # out of core: statistics in chunks, minibatches read from disk
            from .data.backed import fit_backed

            self.prep, self._X, self._codes, self._library = fit_backed(
                adata, batch_key, layer=layer, n_top_genes=self.config.n_top_genes, scaling=self.config.scaling, genes=genes,
            )
        else:
            self.prep, self._X, self._codes = Preprocessor.fit(
                adata,
                batch_key,
                layer=layer,
                n_top_genes=self.config.n_top_genes,
                scaling=self.config.scaling,
                genes=genes,
            )
            self._library = Preprocessor.library_size(adata, layer)
        self._X_on_device: DeviceCSR | None = None
        self.modules: dict[str, nn.Module] = {}
        self.history: dict[str, pd.DataFrame] = {}
        self.train_info: dict[str, dict] = {}
        self.adapted: dict[str, dict] = {}  # batch -> how adapt() learned its effects
        self.intercepts: LatentIntercepts | None = None  # the batches' intercepts in the FE latent

    # ------------------------------------------------------------------ info
    @property
    def genes(self) -> list[str]:
        """The genes the model uses, in model order."""
        return list(self.prep.genes)

    @property
    def batches(self) -> list[str]:
        """The batch categories seen in training, in code order."""
        return list(self.prep.batches)

    @property
    def is_trained(self) -> bool:
        return bool(self.modules)

    @property
    def fingerprint(self) -> str:
        """A short checksum of what the model computes with: its networks' weights, the
        latent intercepts, the genes and the batches (the same after :meth:`save` and
        :meth:`load`; another fit or :meth:`adapt` changes it). Recorded in
        ``uns['amedl']`` so that a saved object can tell whether a model folder still
        holds the model it was fitted with."""
        if not self.modules:
            raise RuntimeError("the model is not fitted: call fit() first")
        h = hashlib.sha256()
        state = {k: m.state_dict() for k, m in self.modules.items()}
        if self.intercepts is not None:
            state[_INTERCEPTS] = self.intercepts.state()
        for kind in sorted(state):
            for name in sorted(state[kind]):
                t = state[kind][name].detach().cpu().contiguous()
                h.update(f"{kind}/{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
        h.update("\x00".join(self.genes).encode() + b"\x01" + "\x00".join(self.batches).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        trained = ", ".join(self.modules) or "not trained"
        return (
            f"AMEDL(batch_key={self.batch_key!r}, {len(self.batches)} batches, {len(self.genes)} genes, "
            f"n_latent={self.config.n_latent}, preset={self.preset!r}; {trained})"
        )

    # -------------------------------------------------------------- building
    def _build(self, kind: str) -> nn.Module:
        return NETWORKS[kind].build(self.config, self.prep)

    def _split(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Validation split stratified by batch (every batch keeps at least one training cell)."""
        frac = self.config.validation_fraction
        n = self._X.shape[0]
        if frac <= 0:
            idx = np.arange(n)
            return idx, idx
        rng = np.random.default_rng([seed, 7919])
        val = []
        for b in range(len(self.prep.batches)):
            cells = np.flatnonzero(self._codes == b)
            k = min(len(cells) - 1, int(round(frac * len(cells))))
            if k > 0:
                val.append(rng.choice(cells, size=k, replace=False))
        val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
        train_idx = np.setdiff1d(np.arange(n), val_idx)
        if len(val_idx) == 0:
            val_idx = train_idx
        return train_idx, val_idx

    # --------------------------------------------------------------- fitting
    def fit(
        self,
        seed: int = 0,
        max_epochs: int | None = None,
        progress: bool = True,
        kinds: Iterable[str] = ("fe", "re"),
        callback=None,
    ) -> "AMEDL":
        """Train the networks.

        Parameters
        ----------
        seed
            Seeds weights, minibatch order, the validation split and the
            random-effects sampling: the same seed gives identical latents on the CPU.
        max_epochs
            Epoch budget; default from the preset (scaled with the number of cells).
            Training stops earlier when the validation loss has not improved for
            ``patience`` epochs (``re_patience`` for the RE network), and the best
            epoch's weights are kept.
        progress
            Show a tqdm progress bar.
        kinds
            Which networks: ``"fe"`` (fixed effects), ``"re"`` (random effects) and
            ``"ae"`` (the plain autoencoder baseline on the same data and loop).
        callback
            Optional ``callback(model, kind, epoch, record)`` called after every
            epoch with that epoch's losses (e.g. for custom logging).
        """
        if max_epochs is not None:
            max_epochs = RULES["max_epochs"].check("max_epochs", max_epochs)
        seed = whole_number("seed", seed, 0)  # a Python int: numpy integers (np.arange) are not seeds for Python's random
        kinds = [kinds] if isinstance(kinds, str) else list(dict.fromkeys(kinds))
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise AMEDLConfigError(f"unknown kind(s) {bad}; choose from {KINDS}" if bad else f"kinds is empty; choose from {KINDS}")
        if self._X is None:
            raise RuntimeError("this model was loaded from disk without its training data; create a new AMEDL to train")
        c = self.config
        train_idx, val_idx = self._split(seed)
        n_train = len(train_idx)
        epochs = int(max_epochs) if max_epochs is not None else c.epochs_for(n_train)
        batch_size = min(c.batch_size, n_train)
        for kind in kinds:
            network = NETWORKS[kind]
            context = self._plan_context(kind, train_idx, seed)
            seed_everything(seed + network.seed_offset)
            modules = self._build(kind).to(self.device)
            X = self._matrix_for_device(self._X)
            library = self._library if network.needs_counts(c) else None
            blocks = (c.block_size, c.buffer_blocks)
            train_loader = make_loader(
                X, self._codes, self.prep, rows=train_idx, batch_size=batch_size, shuffle=True,
                rng=np.random.default_rng([seed, network.seed_offset]), device=self.device,
                drop_last=n_train % batch_size == 1, library=library, blocks=blocks,
            )
            val_loader = make_loader(X, self._codes, self.prep, rows=val_idx, batch_size=1024, device=self.device,
                                     library=library, blocks=blocks)
            trainer = network.plan(modules, c, context)
            if distributed.active():  # a torchrun launch: this rank's shard, gradients averaged by DDP
                distributed.check_shardable(n_train, len(val_idx))
                train_loader = distributed.ShardedLoader(train_loader, self._codes, seed + network.seed_offset)
                val_loader = distributed.ShardedLoader(val_loader, self._codes, seed, train=False)
                distributed.wrap_plan(trainer)
            settings = LoopSettings(
                max_epochs=epochs, patience=network.patience(c), min_epochs=min(c.min_epochs, epochs),
                burn_in=c.fe_burn_in_epochs(n_train, epochs) if network.burn_in else 0, restore_best=c.restore_best,
                callback=None if callback is None else (lambda e, r, k=kind: callback(self, k, e, r)),
                progress=progress and distributed.rank() == 0, desc=f"aMEDL {kind.upper()}",
            )
            t0 = time.perf_counter()
            previous = self.modules.get(kind)
            self.modules[kind] = modules  # visible to the callback during training
            try:
                history = fit_loop(
                    modules, lambda: trainer.train_epoch(train_loader), lambda: trainer.evaluate(val_loader), settings,
                    snapshot=getattr(trainer, "snapshot", None),
                )
            except BaseException:
                if previous is None:
                    del self.modules[kind]
                else:
                    self.modules[kind] = previous
                raise
            seconds = time.perf_counter() - t0
            modules.eval()
            self.history[kind] = history
            if NETWORKS[kind].latent_intercepts:
                self.intercepts = self._fit_intercepts(modules, seed)
            self.train_info[kind] = {
                "seed": seed,
                "epochs_run": int(len(history)),
                "epoch_budget": epochs,
                "best_epoch": int(history.attrs["best_epoch"]),
                "stopped_early": bool(history.attrs["stopped_early"]),
                "seconds": round(seconds, 3),
                "n_train": n_train,
                "n_validation": int(len(val_idx)),
                "chance_accuracy": context.chance_acc,
                "chance_cross_entropy": context.chance_ce,
                # what changes the latents for the same seed besides the settings (README, "Scaling")
                "processes": distributed.world_size(),
                "from_disk": not sp.issparse(self._X),
            }
            if distributed.active():
                self.train_info[kind]["epochs_per_rank"] = distributed.gather(int(len(history)))
            logger.info("amedl: trained %s in %.1fs (%d epochs)", KIND_NAMES[kind], seconds, len(history))
        return self

    def _fit_intercepts(self, net: nn.Module, seed: int) -> LatentIntercepts | None:
        """The batches' random intercepts in the trained FE network's latent
        (``fe_intercept_clusters``; :mod:`amedl.intercepts`), estimated on at most
        :data:`amedl.intercepts.MAX_CELLS` of the model's cells (training and
        validation alike: no labels are read)."""
        c = self.config
        if c.fe_intercept_clusters is None:
            return None
        n = self._X.shape[0]
        rows, X = np.arange(n), self._X
        if n > INTERCEPT_CELLS:  # only the sampled cells are encoded
            rows = np.sort(np.random.default_rng([seed, 23]).choice(rows, size=INTERCEPT_CELLS, replace=False))
            X = self._X[rows] if sp.issparse(self._X) else self._X.read_rows(rows)
        z = self._run((X, self._codes[rows], self._library[rows]), net.latent, INFERENCE_BATCH)
        return LatentIntercepts.fit(z, self._codes[rows], len(self.prep.batches), n_clusters=c.fe_intercept_clusters,
                                    shrinkage=c.fe_intercept_shrinkage, rounds=c.fe_intercept_rounds, seed=seed,
                                    offsets=c.fe_intercept_offsets)

    def _plan_context(self, kind: str, train_idx: np.ndarray, seed: int) -> PlanContext:
        """What network ``kind``'s training plan is built with, for the cells ``train_idx``
        (the FE network's neighbourhood loss also needs their reference PCA)."""
        context = PlanContext.from_codes(self._codes[train_idx], len(self.prep.genes), len(self.prep.batches))
        if NETWORKS[kind].needs_reference(self.config):
            context = dataclasses.replace(context, reference=self._reference_pca(train_idx, seed))
        return context

    def _reference_pca(self, train_idx: np.ndarray, seed: int) -> tuple:
        """(center, components) of a ``fe_neighbour_pcs``-component PCA of the scaled
        model input of at most :data:`REFERENCE_CELLS` training cells (a random
        subset, the same for the same seed), as torch tensors on the model's device."""
        from sklearn.decomposition import PCA

        rng = np.random.default_rng([seed, 17])
        rows = np.sort(rng.choice(np.asarray(train_idx), size=min(len(train_idx), REFERENCE_CELLS), replace=False))
        log = self._X[rows] if sp.issparse(self._X) else self._X.read_rows(rows)
        x = self.prep.scale_dense(log.toarray())
        k = min(self.config.fe_neighbour_pcs, x.shape[0] - 1, x.shape[1])
        pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(x)
        return (torch.as_tensor(pca.mean_, dtype=torch.float32, device=self.device),
                torch.as_tensor(pca.components_.T.copy(), dtype=torch.float32, device=self.device))

    # ------------------------------------------------------------ adaptation
    def adapt(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        steps: int = ADAPT_STEPS,
        lr: float = 1e-2,
        batch_size: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> "AMEDL":
        """Learn random effects for the batches of ``adata`` that the model has not
        seen (query mapping), with every trained weight frozen.

        The cells of new batches (``adata.obs[batch_key]`` values not in
        :attr:`batches`) are used; cells of known batches are ignored. Each
        batch-aware network (the mixed-effects FE decoder, the RE network) gets
        random effects for the new batches, trained for ``steps`` minibatch steps
        (Adam, ``lr``) on its reconstruction loss plus their KL to the prior; the
        encoders, the fixed effects and the learned batches' effects do not
        change, so latents of earlier cells stay exactly as they were. Afterwards
        the new batches are ordinary batches of the model: :meth:`latent`,
        :meth:`reconstruct`, :meth:`differential` and :meth:`batch_effects` use
        their effects, and :meth:`save` keeps them. Returns the model.
        """
        if not self.modules:
            raise RuntimeError("the model is not trained: call fit() (or load a saved model) before adapt()")
        kinds = [k for k, m in self.modules.items() if getattr(m, "batch_aware", False) and hasattr(m, "add_batches")]
        if not kinds:
            raise ValueError("no network of this model has random effects to adapt (the paper preset's FE decoder and the "
                             "plain autoencoder have no batch input); train the RE network or use the default FE network")
        if self.batch_key not in adata.obs.columns:
            raise AMEDLInputError(f"adata.obs has no {self.batch_key!r} column: adapt() needs the batch of each new cell")
        whole_number("steps", steps, 1)
        if not lr > 0:
            raise AMEDLConfigError(f"lr must be > 0, got {lr!r}")
        batch = adata.obs[self.batch_key]
        if batch.isna().any():
            raise AMEDLInputError(f"adata.obs[{self.batch_key!r}] has missing values; give every cell a batch.")
        batch = batch.astype(str).to_numpy()
        new = self.new_batches(adata)
        if not new:
            raise AMEDLInputError(f"every batch in adata.obs[{self.batch_key!r}] is already known to the model; "
                                  "adapt() learns effects for new batches only")
        alike = lookalike_labels(new, self.prep.batches)
        if alike:
            warnings.warn(f"adapt() learns these as new batches; {alike}", UserWarning, stacklevel=2)
        cells = np.flatnonzero(np.isin(batch, new))
        sub = adata[cells]
        layer = self._counts_layer(layer)
        X = self.prep.transform(sub, layer=layer)
        library = Preprocessor.library_size(sub, layer)
        n_old = len(self.prep.batches)
        lookup = {b: n_old + i for i, b in enumerate(new)}
        codes = np.array([lookup[b] for b in batch[cells]], dtype=np.int64)
        c = self.config
        size = min(batch_size or c.batch_size, len(cells))
        adapted, info = {}, {}
        t0 = time.perf_counter()
        for kind in kinds:
            net = copy.deepcopy(self.modules[kind])  # the model is untouched until every network is adapted
            torch.manual_seed(seed)
            grown = net.add_batches(len(new), c.re_init_scale)
            loader = CSRLoader(
                self._matrix_for_device(X), codes, self.prep, batch_size=size, shuffle=True,
                rng=np.random.default_rng([seed, 104729]), device=self.device, drop_last=len(cells) % size == 1,
                library=library if net.output_space == "log1p" else None,
            )
            weight = NETWORKS[kind].adapt_kl_weight(c, len(cells), len(self.prep.genes))
            losses = adapt_new_batches(net, grown, loader, int(steps), float(lr), weight, progress)
            adapted[kind] = net
            info[kind] = {"first_loss": losses[0], "last_loss": float(np.mean(losses[-10:]))}
        intercepts = self.intercepts
        if intercepts is not None and "fe" in self.modules:
            z = self._run((X, codes, library), self.modules["fe"].latent, INFERENCE_BATCH)
            intercepts = intercepts.add_batches(z, codes - n_old, len(new))
        self.modules.update(adapted)
        self.intercepts = intercepts
        self.prep.batches = [*self.prep.batches, *new]
        counts = pd.Series(batch[cells]).value_counts()
        self.adapted.update(
            {b: {"n_cells": int(counts[b]), "steps": int(steps), "lr": float(lr), "seed": int(seed)} for b in new}
        )
        logger.info("amedl: adapted %d new batch(es) in %.1fs (%s)", len(new), time.perf_counter() - t0, info)
        return self

    def new_batches(self, adata: ad.AnnData) -> list[str]:
        """The batches of ``adata.obs[batch_key]`` the model does not know, in order of appearance."""
        if self.batch_key not in adata.obs.columns:
            return []
        known = set(self.prep.batches)
        return [b for b in pd.unique(adata.obs[self.batch_key].astype(str)) if b not in known]

    @property
    def adapted_batches(self) -> list[str]:
        """The batches added by :meth:`adapt` (not seen in training)."""
        return list(self.adapted)

    # ------------------------------------------------------------- inference
    def _module(self, kind: str) -> nn.Module:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind not in self.modules:
            trained = list(self.modules) or "none"
            raise RuntimeError(f"the {KIND_NAMES[kind]} network is not trained (trained: {trained}); call fit(kinds=[..., {kind!r}]) first")
        return self.modules[kind]

    def _counts_layer(self, layer: str | None) -> str | None:
        """Where new cells hold their raw counts: the model's own layer (``None``), ``adata.X``
        (``"X"``, returned as ``None``) or the named layer."""
        if layer is None:
            return self.layer
        return None if layer == "X" else layer

    def _inputs(
        self, adata: ad.AnnData | None, layer: str | None, need_batches: bool, predicted: bool = False,
        needs: str = "the random-effects network", instead: str = "",
    ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """Model-input matrix (unscaled log1p on the model genes), batch codes (-1: unknown)
        and library sizes (total counts over all genes) of ``adata`` (default: the training cells).
        ``predicted``: whether the network that reads them predicts unseen batches (for the warning);
        ``needs`` and ``instead``: what needs the batch column and the alternative, for the error
        when ``need_batches`` and there is none."""
        if adata is None:
            if self._X is None:
                raise AMEDLInputError("this model was loaded from disk: pass the AnnData to embed (adata=...).")
            return self._X, self._codes, self._library
        layer = self._counts_layer(layer)
        if getattr(adata, "isbacked", False):
            from .data.backed import model_inputs

            self.prep.check_library_genes(adata.n_vars)
            X, library = model_inputs(self, adata, layer)
        else:
            X = self.prep.transform(adata, layer=layer)
            library = Preprocessor.library_size(adata, layer)
        if self.batch_key in adata.obs.columns:
            batch = adata.obs[self.batch_key]
            if batch.isna().any():
                raise AMEDLInputError(f"adata.obs[{self.batch_key!r}] has missing values; give every cell a batch.")
            codes = self.prep.encode_batches(batch.astype(str))
        elif need_batches:
            unseen = ("the mixture of the learned batches' effects that the batch-membership predictor gives each "
                      "cell" if predicted else "zero random effects")
            raise AMEDLInputError(
                f"{needs} needs each cell's batch, but adata.obs has no {self.batch_key!r} column. Add it (cells of "
                f"batches not seen in training get {unseen}){instead}."
            )
        else:
            codes = np.full(X.shape[0], -1, dtype=np.int64)
        if need_batches and (codes < 0).any():
            unseen = sorted(set(batch.astype(str)[codes < 0]))
            how = (
                "they get the mixture of the learned batches' random effects that the batch-membership predictor "
                "gives each cell" if predicted else "their random effects are set to zero (the population-level network)"
            )
            alike = lookalike_labels(unseen, self.prep.batches)
            warnings.warn(
                f"{int((codes < 0).sum())} cell(s) come from batch(es) not seen in training ({unseen[:5]}); {how}. "
                "To learn their own effects, call adapt() with these cells first (command line: amedl embed --adapt)."
                + (f" But {alike}" if alike else ""),
                UserWarning,
                stacklevel=3,
            )
        return X, codes, library

    def _matrix_for_device(self, X: sp.csr_matrix):
        """``X`` as the loaders should read it: on an accelerator the matrix is
        copied there once (the training matrix is kept for later fits)."""
        if self.device.type == "cpu" or not sp.issparse(X):  # rows read from disk stay there
            return X
        if X is self._X:
            if self._X_on_device is None or self._X_on_device.device != self.device:
                self._X_on_device = DeviceCSR(X, self.device)
            return self._X_on_device
        return DeviceCSR(X, self.device)

    def _loader(self, inputs, batch_size: int, library: bool = False) -> CSRLoader:
        """Minibatches of ``inputs`` in order (with raw counts when ``library``)."""
        X, codes, lib = inputs
        return make_loader(
            self._matrix_for_device(X), codes, self.prep, batch_size=batch_size, device=self.device,
            library=lib if library else None,
        )

    @torch.no_grad()
    def _run(self, inputs, fn, batch_size: int, library: bool = False, minibatches=None) -> np.ndarray:
        """``fn(minibatch)`` over minibatches of cells (``minibatches``, or those of
        ``inputs``), written into one preallocated float32 array."""
        whole_number("batch_size", batch_size, 1)
        X = inputs[0]
        out, lo = None, 0
        for mb in minibatches if minibatches is not None else self._loader(inputs, batch_size, library):
            y = fn(mb).float().cpu().numpy()
            if out is None:
                out = np.empty((X.shape[0], y.shape[1]), dtype=np.float32)
            out[lo : lo + len(y)] = y
            lo += len(y)
        return out

    @property
    def unseen_batches(self) -> str:
        """How cells of batches not seen in training (nor added by :meth:`adapt`) are
        treated by the random effects: ``"predict"`` (the default where the networks
        have a batch-membership predictor: each cell gets the predicted mixture of
        the learned batches' effects) or ``"zero"`` (no random effects: the
        population-level network). Settable."""
        nets = [m for m in self.modules.values() if getattr(m, "membership", None) is not None]
        return "predict" if nets and all(m.predict_unseen for m in nets) else "zero"

    @unseen_batches.setter
    def unseen_batches(self, how: str) -> None:
        if how not in ("predict", "zero"):
            raise ValueError(f"unseen_batches must be 'predict' or 'zero', got {how!r}")
        if how == "predict" and not any(getattr(m, "membership", None) is not None for m in self.modules.values()):
            raise ValueError("this model has no batch-membership predictor (membership_hidden=None, or saved by an older amedl)")
        for m in self.modules.values():
            if hasattr(m, "predict_unseen"):
                m.predict_unseen = how == "predict"

    def _batch_code(self, batch) -> int:
        if str(batch) not in self.prep.batches:
            raise AMEDLInputError(f"unknown batch {batch!r}; the model knows {self.prep.batches}. To use a new batch, "
                                  "learn its effects first with model.adapt(adata_of_that_batch).")
        return self.prep.batches.index(str(batch))

    def latent(self, adata: ad.AnnData | None = None, kind: str = "fe", *, layer: str | None = None,
               batch_size: int = INFERENCE_BATCH, intercepts: bool = True) -> np.ndarray:
        """Latent representation of cells, ``(n_cells, n_latent)`` float32.

        ``adata=None`` embeds the training cells. For new cells the genes are
        matched to the model's by name. ``kind="re"`` uses the batch column;
        cells of batches not seen in training get the random effects that
        :attr:`unseen_batches` says (with a warning), or their own after
        :meth:`adapt`. ``kind="fe"``: the encoder's latent minus each cell's
        batch intercepts (:attr:`intercepts`, where ``fe_intercept_clusters`` is
        set; ``intercepts=False`` gives the encoder's latent alone). The
        intercepts read the batch column; cells without one, or of batches the
        model does not know, keep the encoder's latent (with a warning).

        ``layer``, here and in every method that reads cells: where ``adata``
        holds the raw counts; ``None``, the layer the model was fitted on;
        ``"X"``, ``adata.X``; else the name of a layer.
        """
        net = self._module(kind)
        inputs = self._inputs(adata, layer, need_batches=NETWORKS[kind].latent_needs_batch, predicted=predicts_unseen(net),
                              needs=f"the {KIND_NAMES[kind]} latent", instead=", or use kind='fe', which needs no batch")
        z = self._run(inputs, net.latent, batch_size)
        if intercepts and NETWORKS[kind].latent_intercepts and self.intercepts is not None:
            codes = inputs[1]
            if (codes < 0).any():
                what = (f"adata.obs has no {self.batch_key!r} column" if (codes < 0).all() and adata is not None
                        and self.batch_key not in adata.obs.columns
                        else f"{int((codes < 0).sum())} cell(s) come from batches the model does not know")
                warnings.warn(f"{what}: those cells keep the encoder's FE latent, without their batch's latent "
                              "intercepts (give the batch column; for new batches call adapt() first, or amedl embed --adapt).",
                              UserWarning, stacklevel=2)
            z = self.intercepts.apply(z, codes)
        return z

    def reconstruct(
        self,
        adata: ad.AnnData | None = None,
        batch: str | None = None,
        kind: str = "fe",
        *,
        layer: str | None = None,
        batch_size: int = INFERENCE_BATCH,
    ) -> np.ndarray:
        """Reconstructed expression, ``(n_cells, n_genes)`` as log1p of counts per
        ``target_sum`` (10⁴; genes: :attr:`genes`), never negative.

        ``batch=None`` decodes every cell as its own batch. ``batch=name``
        decodes every cell's latent with batch ``name``'s random effects: the
        counterfactual expression of the same cells as if measured in that
        batch. The default fixed-effects network decodes its batch-blind latent
        with the batch's effects (the mixed-effects model); ``kind="re"`` uses
        the random-effects network (its encoder sees the cell's own batch).
        The published tied FE decoder (``preset="paper"``) and the plain
        autoencoder have no batch input.
        """
        net = self._module(kind)
        if batch is not None and not net.batch_aware:
            raise ValueError(
                f"the {KIND_NAMES[kind]} decoder of this model has no batch input, so it cannot decode "
                "'as if from batch'; use the default fixed-effects network (mixed-effects decoder) or kind='re'"
            )
        if NETWORKS[kind].latent_needs_batch:
            needs, instead = f"the {KIND_NAMES[kind]} network's encoder", ""
        else:  # a batch-blind latent decoded with each cell's own batch
            needs = "reconstruct() (each cell decoded with its own batch's random effects)"
            instead = f", or pass batch=... ({preview(self.batches, 5)}) to decode every cell as that batch"
        need = NETWORKS[kind].latent_needs_batch or (net.batch_aware and batch is None)
        inputs = self._inputs(adata, layer, need_batches=need, predicted=predicts_unseen(net), needs=needs,
                              instead=instead)
        return self._decode(inputs, net, None if batch is None else self._batch_code(batch), batch_size)

    def _decode(self, inputs, net: nn.Module, target: int | None, batch_size: int, minibatches=None) -> np.ndarray:
        """``net``'s reconstruction of ``inputs`` (decoded as batch code ``target``, or
        as each cell's own batch) as non-negative log1p expression per ``target_sum``."""
        if target is None:
            fn = net.reconstruct
        else:
            fn = lambda mb: net.reconstruct(mb, torch.full_like(mb.batch, target))  # noqa: E731
        out = self._run(inputs, fn, batch_size, library=net.output_space == "log1p", minibatches=minibatches)
        if net.output_space == "scaled":
            self.prep.unscale(out)
        return np.maximum(out, 0.0, out=out)

    def differential(
        self,
        adata: ad.AnnData | None = None,
        batch_a: str | None = None,
        batch_b: str | None = None,
        groupby: str | None = None,
        **options,
    ) -> pd.DataFrame:
        """Differential expression between batches: per gene (and per cell group with
        ``groupby``, a column of ``adata.obs``), the log2 fold change of the cells'
        counterfactual expression as batch ``batch_a`` against ``batch_b``, from Monte
        Carlo draws of the random-effects posterior. Without ``batch_b``, against the
        average over the training batches (``attrs["averaged_batches"]``), ``batch_a``
        included when it is one of them: its effect relative to the average batch.
        Batches added by :meth:`adapt` do not change that average.

        Returns a tidy table sorted by ``lfc`` within each group: ``lfc`` (posterior
        mean of the log2 fold change of mean expression per 10⁴ counts, pseudocount
        0.1), ``lfc_sd``, ``ci_low``/``ci_high`` (the ``credible`` interval, 95% by
        default), ``p_effect`` (the posterior probability that ``|lfc| > delta``,
        0.5 by default), ``credible`` (the interval excludes 0), ``mean_a``/``mean_b``
        and ``n_cells`` (the group's cells that were decoded). Options: ``kind`` ("fe"),
        ``n_samples`` (100; the interval's ends are Monte Carlo estimates, so give
        1,000 for results to report), ``delta``, ``credible``, ``max_cells`` (at most
        this many cells of each group are decoded, a seeded subsample; 20,000),
        ``seed``, ``layer``, ``batch_size``.

        The interval is the random effects' posterior uncertainty given the fitted
        network: it leaves out cell-to-cell sampling, so it does not widen for a small
        group, and ``credible`` has no multiple-testing correction. See
        :mod:`amedl.differential`.
        """
        from .differential import differential

        return differential(self, adata, batch_a, batch_b, groupby, **options)

    def batch_effects(self, batch: str, kind: str = "fe") -> pd.DataFrame:
        """The random effects of one batch on the decoder's output layer, per gene.

        Columns ``scale`` and ``shift`` are the posterior means of γ and β in
        ``out·(1+γ) + β``, ``scale_sd`` and ``shift_sd`` their posterior
        standard deviations. These are parameters, not effect sizes: a batch
        also acts through the random effects of every hidden layer, and with
        the count likelihood (``likelihood="nb"``) the output layer gives
        log-proportions through a softmax over genes, so adding one constant to
        all of a batch's shifts changes nothing. For how a batch changes each
        gene's expression, with credible intervals, use :meth:`differential`.
        """
        head = getattr(self._module(kind), "expression_head", None)
        if head is None:
            raise ValueError(f"the {KIND_NAMES[kind]} network of this model has no per-batch output effects")
        b = self._batch_code(batch)
        with torch.no_grad():
            return pd.DataFrame(
                {
                    "scale": head.gamma.mean[b].cpu().numpy(),
                    "shift": head.beta.mean[b].cpu().numpy(),
                    "scale_sd": head.gamma.scale[b].cpu().numpy(),
                    "shift_sd": head.beta.scale[b].cpu().numpy(),
                },
                index=pd.Index(self.prep.genes, name="gene"),
            )

    def training_summary(self) -> list[str]:
        """One line per trained network: epochs run, the kept epoch, why training ended, and its time."""
        return [f"{kind.upper()}: {info['epochs_run']} epochs (best {info['best_epoch']}, "
                f"{'early stop' if info['stopped_early'] else 'budget'}) in {info['seconds']:.1f}s"
                for kind, info in self.train_info.items()]

    def transform(self, adata: ad.AnnData | None = None, *, layer: str | None = None) -> np.ndarray:
        """The scaled model-input matrix (dense float32) of ``adata`` (default: the training cells).

        Baselines such as PCA use it so that every comparison sees identical preprocessing.
        """
        X, _, _ = self._inputs(adata, layer, need_batches=False)
        if not sp.issparse(X):  # a backed AnnData's rows, read from disk (the result is dense in memory)
            X = X.read_log(0, X.shape[0])
        return self.prep.scale_dense(X.toarray())

    # ------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike, overwrite: bool = False, *, staging: Staging | None = None) -> Path:
        """Save the model to a folder: ``.amedl-model`` (the marker of a model
        folder), ``amedl.json`` (settings, genes, batches, preprocessing, training
        record, model format, checksums), ``weights.pt`` and loss histories.

        An existing folder is replaced only if it is an amedl model folder that
        holds nothing but its own files, and only with ``overwrite=True``; an
        empty folder is used; anything else is refused
        (:class:`~amedl.errors.AMEDLFolderExistsError`), so nothing that is not
        amedl's is ever removed. The folder is written beside its destination
        and moved into place, so an interrupted save never leaves a half-written
        model. With ``staging`` (an :class:`amedl._utils.Staging`) the folder is
        written and moved into place by the caller's ``staging.commit()``,
        together with the caller's other outputs.
        """
        if not self.modules:
            raise RuntimeError("nothing to save: call fit() first")
        modelfile.check_target(path, overwrite)
        with contextlib.ExitStack() as stack:
            stage = staging if staging is not None else stack.enter_context(Staging())
            tmp = stage.add(path, directory=True)
            state = {k: {n: t.cpu() for n, t in m.state_dict().items()} for k, m in self.modules.items()}
            if self.intercepts is not None:
                state[_INTERCEPTS] = self.intercepts.state()
            torch.save(state, tmp / _WEIGHTS_FILE)
            for kind, hist in self.history.items():
                hist.to_csv(tmp / f"history_{kind}.csv", index=False)
            modelfile.write_meta(tmp, {
                "amedl_version": __version__,
                "preset": self.preset,
                "batch_key": self.batch_key,
                "layer": self.layer,
                "config": self.config.to_dict(),
                "preprocessing": self.prep.to_dict(),
                "kinds": list(self.modules),
                "train_info": self.train_info,
                "adapted": self.adapted,
                "unseen_batches": self.unseen_batches,
            })
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", *, threads: int | None = None) -> "AMEDL":
        """Load a model saved with :meth:`save`.

        ``amedl.json`` is checked first (:func:`amedl.modelfile.read_meta`:
        format, settings, unique genes, finite positive scales, known kinds,
        checksums), then ``weights.pt`` (its checksum; read with
        ``weights_only=True``, so it cannot run code; shapes must match the
        settings; every weight finite). A failure raises
        :class:`~amedl.errors.AMEDLModelError` naming the file and the problem.
        Models of older formats load; a newer format says which amedl wrote it.
        ``threads`` sets the CPU threads (see :class:`amedl.AMEDLConfig`).
        """
        path = Path(os.path.expanduser(os.fspath(path)))
        meta = modelfile.read_meta(path, kinds=KINDS)
        modelfile.verify_weights(path, meta)
        self = cls.__new__(cls)
        self.config = AMEDLConfig.from_dict({**meta["config"], "device": device, "threads": threads})
        self.device = resolve_device(device)
        apply_threads(threads)
        self.preset = meta["preset"]
        self.batch_key = meta["batch_key"]
        self.layer = meta.get("layer")
        self.prep = Preprocessor.from_dict(meta["preprocessing"])
        self._X, self._codes, self._library, self._X_on_device = None, None, None, None
        self.train_info = meta.get("train_info", {})
        self.adapted = dict(meta.get("adapted", {}))
        weights = path / _WEIGHTS_FILE
        written = f"written by amedl {meta.get('amedl_version', '?')}, model format {meta.get('format', 1)}"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors alike: the file is not amedl weights
            raise AMEDLModelError(f"{weights}: cannot be read as amedl weights ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(state, dict):
            raise AMEDLModelError(f"{weights}: holds a {type(state).__name__}, not the weights of an amedl model")
        self.modules, self.history = {}, {}
        self.intercepts = None
        if self.config.fe_intercept_clusters is not None and "fe" in meta["kinds"]:
            saved = state.get(_INTERCEPTS)
            if not isinstance(saved, dict) or any(not torch.is_tensor(saved.get(n)) for n in
                                                  ("centres", "means", "offsets", "scales", "shrinkage")):
                raise AMEDLModelError(f"{weights}: has no latent intercepts, but {_CONFIG_FILE} sets fe_intercept_clusters; "
                                      f"the model is incomplete: refit it")
            if not all(torch.isfinite(t).all() for t in saved.values()):
                raise AMEDLModelError(f"{weights}: the latent intercepts hold NaN or infinite values: the model is damaged; refit it")
            self.intercepts = LatentIntercepts.from_state(saved)
            ref, ref_codes = self.intercepts.reference, self.intercepts.reference_codes
            if ref is not None and (ref.ndim != 3 or ref.shape[0] != len(self.intercepts.centres)
                                    or ref.shape[2] != self.config.n_latent or ref_codes is None
                                    or ref_codes.shape != (ref.shape[1],) or (ref_codes < 0).any()
                                    or (ref_codes >= self.intercepts.n_batches).any()):
                raise AMEDLModelError(f"{weights}: the latent intercepts' reference cells do not match their "
                                      f"intercepts: the model is damaged; refit it")
            if self.intercepts.n_batches != len(self.prep.batches) or self.intercepts.centres.shape[-1] != self.config.n_latent:
                raise AMEDLModelError(f"{weights}: the latent intercepts are for {self.intercepts.n_batches} batches and "
                                      f"{self.intercepts.centres.shape[-1]} dimensions, but {_CONFIG_FILE} describes "
                                      f"{len(self.prep.batches)} and {self.config.n_latent}: refit the model")
        for kind in meta["kinds"]:
            if not isinstance(state.get(kind), dict):
                raise AMEDLModelError(f"{weights}: has no weights for the {KIND_NAMES[kind]} network listed in {_CONFIG_FILE}")
            bad = [n for n, t in state[kind].items() if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                raise AMEDLModelError(f"{weights}: the {KIND_NAMES[kind]} weights hold NaN or infinite values "
                                      f"(in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}): the model is damaged; refit it")
            m = self._build(kind)
            if getattr(m, "membership", None) is not None and not any(n.startswith("membership.") for n in state[kind]):
                m.membership = None  # saved before amedl had a batch-membership predictor
            try:
                m.load_state_dict(state[kind])
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()
                detail = "; ".join(line.strip() for line in first[:3])
                raise AMEDLModelError(f"{weights}: the {KIND_NAMES[kind]} weights do not fit the networks that "
                                      f"{_CONFIG_FILE} describes ({detail[:300]}); {written}") from None
            m.to(self.device).eval()
            self.modules[kind] = m
            hist = path / f"history_{kind}.csv"
            if hist.exists():
                self.history[kind] = pd.read_csv(hist, float_precision="round_trip")  # the saved floats, exactly
                info = self.train_info.get(kind, {})
                self.history[kind].attrs.update({k: info[k] for k in ("best_epoch", "stopped_early") if k in info})
        if meta.get("unseen_batches") == "zero":  # as it was set when saved (older models: the default)
            self.unseen_batches = "zero"
        return self
