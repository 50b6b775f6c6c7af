"""The benchmark's methods: every one an embedding of the same cells behind one interface.

PCA, the plain autoencoder (AE) and the aMEDL fixed- and random-effects
latents share one :class:`amedl.AMEDL` model per fold, so they see identical
preprocessing. Harmony (harmonypy) corrects that PCA; it cannot embed new
cells, so it runs on all cells (the PCA fitted on the training cells only)
and is scored on the held-out ones. scVI (scvi-tools, its defaults but the
latent size) trains on the raw counts of the model's genes.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from ..errors import AMEDLConfigError

__all__ = ["FoldContext", "Method", "METHODS", "DEFAULT_METHODS", "resolve_methods"]


@dataclass
class FoldContext:
    """What the methods of one fold share.

    ``adata`` holds all cells; ``train_idx`` / ``test_idx`` index into it.
    :meth:`get_model` fits the fold's :class:`amedl.AMEDL` on the training
    cells (once, for ``kinds``); ``fit_seconds`` and ``cache`` collect what
    the methods time and keep.
    """

    adata: object
    train_idx: np.ndarray
    test_idx: np.ndarray
    batch_key: str
    seed: int = 0
    max_epochs: int | None = None
    progress: bool = True
    model_kwargs: dict = field(default_factory=dict)
    kinds: tuple = ("ae", "fe", "re")
    model: object = None
    fit_seconds: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    def get_model(self):
        """The fold's model, fitted on the training cells (preprocessing and each network timed)."""
        if self.model is None:
            from ..model import AMEDL

            t0 = time.perf_counter()
            m = AMEDL(self.adata[self.train_idx].copy(), batch_key=self.batch_key, **self.model_kwargs)
            self.fit_seconds["preprocess"] = time.perf_counter() - t0
            for kind in self.kinds:
                t0 = time.perf_counter()
                m.fit(seed=self.seed, max_epochs=self.max_epochs, progress=self.progress, kinds=(kind,))
                self.fit_seconds[kind] = time.perf_counter() - t0
            self.model = m
        return self.model

    def pca(self, idx) -> np.ndarray:
        """PCA (``n_latent`` components) of the model input, fitted on the training cells."""
        from ..baselines import pca_latent

        return np.asarray(pca_latent(self.get_model(), self.adata[idx]))


@dataclass
class Method:
    """One method: ``embed(ctx, targets)`` returns one latent per target (an array
    of cell indices into ``ctx.adata``). ``requires`` names optional modules; a
    method whose module is missing is skipped with ``note`` (how to install it)."""

    name: str
    embed: Callable
    description: str
    requires: tuple = ()
    kinds: tuple = ()  # the aMEDL networks it needs fitted
    note: str = ""

    def available(self) -> tuple[bool, str]:
        """``(True, "")``, or ``(False, why)`` when an optional package is missing."""
        missing = [r for r in self.requires if importlib.util.find_spec(r) is None]
        if missing:
            return False, f"{self.name} skipped: {', '.join(missing)} not installed ({self.note})"
        return True, ""

    def fit_seconds(self, ctx: FoldContext) -> float:
        """Seconds spent fitting this method in ``ctx``, the shared preprocessing included."""
        t = ctx.fit_seconds
        return float(t.get("preprocess", 0.0) + sum(t.get(k, 0.0) for k in self.kinds) + t.get(self.name, 0.0))


def _amedl_latent(kind: str) -> Callable:
    def embed(ctx: FoldContext, targets):
        m = ctx.get_model()
        return [np.asarray(m.latent(ctx.adata[idx], kind=kind)) for idx in targets]

    return embed


def _pca(ctx: FoldContext, targets):
    return [ctx.pca(idx) for idx in targets]


def _harmony(ctx: FoldContext, targets):
    import harmonypy

    if "Harmony" not in ctx.cache:
        ctx.get_model()
        t0 = time.perf_counter()
        pcs = ctx.pca(np.arange(ctx.adata.n_obs)).astype(np.float64)
        meta = pd.DataFrame({"batch": ctx.adata.obs[ctx.batch_key].astype(str).to_numpy()})
        ho = harmonypy.run_harmony(pcs, meta, "batch", random_state=ctx.seed, verbose=False)
        ctx.cache["Harmony"] = np.asarray(ho.Z_corr, dtype=np.float32)
        ctx.fit_seconds["Harmony"] = time.perf_counter() - t0
    return [ctx.cache["Harmony"][idx] for idx in targets]


@contextlib.contextmanager
def _quiet_scvi():
    """scvi-tools' and Lightning's info messages and warnings off (progress bars stay)."""
    import scvi

    loggers = [logging.getLogger(n) for n in ("scvi", "lightning", "lightning.pytorch", "lightning.fabric")]
    levels, verbosity = [lg.level for lg in loggers], scvi.settings.verbosity
    try:
        scvi.settings.verbosity = logging.WARNING
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield scvi
    finally:
        scvi.settings.verbosity = verbosity
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _scvi(ctx: FoldContext, targets):
    m = ctx.get_model()
    genes, layer = list(m.genes), ctx.model_kwargs.get("layer")
    with _quiet_scvi() as scvi:
        if "scVI" not in ctx.cache:
            t0 = time.perf_counter()
            scvi.settings.seed = ctx.seed
            train = ctx.adata[ctx.train_idx, genes].copy()
            scvi.model.SCVI.setup_anndata(train, batch_key=ctx.batch_key, layer=layer)
            model = scvi.model.SCVI(train, n_latent=m.config.n_latent)
            epochs = {} if ctx.max_epochs is None else {"max_epochs": int(ctx.max_epochs)}
            model.train(enable_progress_bar=ctx.progress, **epochs)
            ctx.cache["scVI"] = model
            ctx.fit_seconds["scVI"] = time.perf_counter() - t0
        model = ctx.cache["scVI"]
        return [np.asarray(model.get_latent_representation(ctx.adata[idx, genes].copy())) for idx in targets]


_INSTALL = "pip install '<amedl checkout>[benchmark]'"

#: The registry of benchmark methods, in display order.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("PCA", _pca, "PCA of the aMEDL model input (n_latent components, fitted on the training cells)"),
        Method("AE", _amedl_latent("ae"), "plain autoencoder, same input and training loop", kinds=("ae",)),
        Method("aMEDL-FE", _amedl_latent("fe"), "aMEDL fixed-effects (batch-invariant) latent", kinds=("fe",)),
        Method("aMEDL-RE", _amedl_latent("re"), "aMEDL random-effects (batch-specific) latent", kinds=("re",)),
        Method("Harmony", _harmony, "harmonypy on the PCA above (transductive: run on all cells, scored on "
               "held-out cells)", requires=("harmonypy",), note=_INSTALL),
        Method("scVI", _scvi, "scvi-tools SCVI with its defaults (latent size n_latent) on the raw counts of the "
               "model's genes", requires=("scvi",), note=_INSTALL),
    )
}
#: Methods run when none are named.
DEFAULT_METHODS = tuple(METHODS)

_ALIASES = {
    **{name.lower(): name for name in METHODS},
    "autoencoder": "AE", "fe": "aMEDL-FE", "amedl_fe": "aMEDL-FE", "re": "aMEDL-RE", "amedl_re": "aMEDL-RE",
}


def resolve_methods(methods: Iterable[str] | str | None) -> list[str]:
    """Canonical method names from user spellings (``fe``, ``amedl-re``, ``harmony``, ``pca,ae``...).

    ``None`` means :data:`DEFAULT_METHODS`. Raises :class:`~amedl.errors.AMEDLConfigError`
    (a ``ValueError``) for an unknown name.
    """
    if methods is None:
        return list(DEFAULT_METHODS)
    out: list[str] = []
    for item in [methods] if isinstance(methods, str) else methods:
        for name in filter(None, (n.strip() for n in str(item).split(","))):
            canon = _ALIASES.get(name.lower())
            if canon is None:
                raise AMEDLConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)} (or pca, ae, fe, re, "
                                 "harmony, scvi)")
            if canon not in out:
                out.append(canon)
    if not out:
        raise AMEDLConfigError("no methods given")
    return out
