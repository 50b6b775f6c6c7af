"""Benchmark aMEDL against baselines on held-out cells: tables, UMAPs, a report.

Every method is an embedding of the same cells, behind one interface
(:class:`Method`). The aMEDL-based methods share one :class:`amedl.AMEDL`
model per fold, so PCA, the plain autoencoder (AE) and the aMEDL fixed- and
random-effects latents (FE, RE) all see the identical preprocessing:

=========  ==========================================================================
PCA        PCA of the model input (fitted on the training cells)
AE         the plain autoencoder (FE architecture, no adversary)
aMEDL-FE   the batch-invariant fixed-effects latent
aMEDL-RE   the batch-specific random-effects latent
Harmony    harmonypy on the PCA above (optional; transductive, see below)
scVI       scvi-tools SCVI on the raw counts of the model's genes (optional)
=========  ==========================================================================

With ``folds=k > 1`` the cells are split into k folds stratified on
batch x label; each fold's methods are fitted on the other k-1 folds and
scored on its held-out cells (the aMEDL paper's protocol). Harmony has no
way to embed new cells, so it is run on all cells (PCA fitted on the training
cells only) and scored on the held-out ones; batch and label are the only
inputs it gets, and it never sees labels. ``folds=1`` fits and scores on
all cells.

Outputs (written atomically into ``out_dir``): ``results.csv`` (one row per
method x fold), ``summary.md`` (means +- 95% confidence intervals over folds),
``umap.png`` (one row per method, coloured by batch and by label; from the
first fold's fitted models applied to all cells) and ``report.html`` (one
self-contained page).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import html
import importlib.util
import io
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from . import metrics as _metrics

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "Method",
    "resolve_methods",
    "stratified_folds",
    "run_benchmark",
    "summarize",
    "summary_markdown",
    "write_report",
    "atomic_write",
    "add_benchmark_arguments",
    "benchmark_command",
]

#: Metrics shown in the summary's first table (the aMEDL paper's).
PAPER_COLUMNS = {
    "batch_asw": "batch ASW",
    "label_asw": "label ASW",
    "batch_inv_db": "batch 1/DB",
    "label_inv_db": "label 1/DB",
    "batch_ch": "batch CH",
    "label_ch": "label CH",
}
#: Metrics shown in the summary's scIB table.
SCIB_COLUMNS = {
    "batch_correction": "batch correction",
    "bio_conservation": "bio conservation",
    "scib_total": "total",
    "ilisi": "iLISI",
    "kbet": "kBET",
    "graph_connectivity": "graph conn.",
    "scaled_batch_asw": "batch ASW (scaled)",
    "pcr_comparison": "PCR comp.",
    "clisi": "cLISI",
    "nmi": "NMI",
    "ari": "ARI",
    "scaled_label_asw": "label ASW (scaled)",
    "isolated_labels": "isolated labels",
}


# ---------------------------------------------------------------------------
# small utilities


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to ``path``; on success move it into place atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[amedl benchmark] {msg}", file=sys.stderr, flush=True)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


# ---------------------------------------------------------------------------
# folds


def stratified_folds(batch, labels, n_folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split cells into ``n_folds`` folds stratified on batch x label.

    Uses scikit-learn's ``StratifiedKFold`` (shuffled, seeded) on the combined
    key ``batch|label``. Strata with fewer cells than folds are pooled first
    within their batch (``batch|rare``) and, if still too small, into one
    ``rare`` stratum; a ``rare`` pool smaller than ``n_folds`` is spread over
    the largest stratum of each cell's batch. Every cell is held out exactly once.

    Parameters
    ----------
    batch, labels
        One batch and one label per cell.
    n_folds
        Number of folds; 1 returns a single split whose training and test sets
        are both all cells.
    seed
        Seed of the shuffle.

    Returns
    -------
    List of ``(train_indices, test_indices)`` pairs (sorted integer arrays).
    """
    from sklearn.model_selection import StratifiedKFold

    batch = np.asarray(batch).astype(str)
    labels = np.asarray(labels).astype(str)
    n = batch.shape[0]
    if labels.shape[0] != n:
        raise ValueError("batch and labels must have one entry per cell")
    if int(n_folds) != n_folds or n_folds < 1:
        raise ValueError(f"folds must be a positive integer, got {n_folds!r}")
    n_folds = int(n_folds)
    if n_folds == 1:
        idx = np.arange(n)
        return [(idx, idx)]
    if n_folds > n:
        raise ValueError(f"folds={n_folds} is more than the number of cells ({n})")
    key = pd.Series(np.char.add(np.char.add(batch, "|"), labels))
    counts = key.value_counts()
    rare = key.map(counts) < n_folds
    key[rare] = pd.Series(batch, dtype=object)[rare] + "|rare"
    counts = key.value_counts()
    rare = key.map(counts) < n_folds
    key[rare] = "rare"
    if 0 < int(rare.sum()) < n_folds:
        # too few even pooled: each joins the largest stratum of its own batch (else the largest overall)
        common = key[~rare]
        fallback = common.value_counts().idxmax() if len(common) else "all"
        biggest = {b: common[batch[~rare.to_numpy()] == b].value_counts().idxmax()
                   for b in np.unique(batch[~rare.to_numpy()])}
        key[rare] = [biggest.get(b, fallback) for b in batch[rare.to_numpy()]]
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in skf.split(np.zeros(n), key.to_numpy())]


# ---------------------------------------------------------------------------
# methods


@dataclass
class FoldContext:
    """Everything the methods of one fold share.

    ``adata`` holds all cells; ``train_idx`` / ``test_idx`` index into it.
    ``model`` is the shared :class:`amedl.AMEDL` (built lazily by
    :meth:`get_model`), fitted on the training cells.
    """

    adata: object
    train_idx: np.ndarray
    test_idx: np.ndarray
    batch_key: str
    label_key: str
    seed: int = 0
    max_epochs: int | None = None
    progress: bool = True
    model_kwargs: dict = field(default_factory=dict)
    kinds: tuple = ("ae", "fe", "re")
    model: object = None
    fit_seconds: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    @property
    def train(self):
        """The training cells (a view of ``adata``)."""
        return self.adata[self.train_idx]

    @property
    def test(self):
        """The held-out cells (a view of ``adata``)."""
        return self.adata[self.test_idx]

    def get_model(self):
        """The fold's ``amedl.AMEDL`` model, fitted on the training cells for ``kinds``."""
        if self.model is None:
            import amedl

            t0 = time.perf_counter()
            train = self.adata[self.train_idx].copy()
            m = amedl.AMEDL(train, batch_key=self.batch_key, **self.model_kwargs)
            self.fit_seconds["preprocess"] = time.perf_counter() - t0
            for kind in self.kinds:
                t0 = time.perf_counter()
                m.fit(seed=self.seed, max_epochs=self.max_epochs, progress=self.progress, kinds=(kind,))
                self.fit_seconds[kind] = time.perf_counter() - t0
            self.model = m
        return self.model


@dataclass
class Method:
    """One embedding method of the benchmark.

    ``embed(ctx, targets)`` returns one latent per requested target: each
    target is an array of cell indices into ``ctx.adata`` (the held-out cells,
    and for the UMAP figure all cells). ``requires`` names optional modules;
    when one is missing the method is skipped with ``note``.
    """

    name: str
    embed: Callable
    requires: tuple = ()
    kinds: tuple = ()  # amedl model kinds the method needs fitted
    note: str = ""
    description: str = ""

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)`` when an optional dependency is missing."""
        missing = [r for r in self.requires if importlib.util.find_spec(r) is None]
        if missing:
            return False, f"{self.name} skipped: {', '.join(missing)} not installed ({self.note})"
        return True, ""

    def fit_seconds(self, ctx: FoldContext) -> float:
        """Seconds spent fitting this method in ``ctx`` (shared preprocessing included)."""
        t = ctx.fit_seconds
        return float(t.get("preprocess", 0.0) + sum(t.get(k, 0.0) for k in self.kinds) + t.get(self.name, 0.0))


def _amedl_latent(kind: str):
    def embed(ctx: FoldContext, targets):
        m = ctx.get_model()
        return [np.asarray(m.latent(ctx.adata[idx], kind=kind)) for idx in targets]

    return embed


def _pca_embed(ctx: FoldContext, targets):
    from . import baselines

    m = ctx.get_model()
    return [np.asarray(baselines.pca_latent(m, ctx.adata[idx])) for idx in targets]


def _harmony_embed(ctx: FoldContext, targets):
    import harmonypy

    from . import baselines

    if "harmony_all" not in ctx.cache:
        m = ctx.get_model()
        t0 = time.perf_counter()
        pcs = np.asarray(baselines.pca_latent(m, ctx.adata), dtype=np.float64)
        meta = pd.DataFrame({"batch": ctx.adata.obs[ctx.batch_key].astype(str).to_numpy()})
        hlog = logging.getLogger("harmonypy")
        level = hlog.level
        hlog.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ho = harmonypy.run_harmony(pcs, meta, "batch", random_state=ctx.seed, verbose=False)
        finally:
            hlog.setLevel(level)
        z = np.asarray(ho.Z_corr)
        if z.shape[0] != pcs.shape[0]:  # harmonypy < 0.1 returns dims x cells
            z = z.T
        ctx.cache["harmony_all"] = z.astype(np.float32)
        ctx.fit_seconds["Harmony"] = time.perf_counter() - t0
    z = ctx.cache["harmony_all"]
    return [z[idx] for idx in targets]


def _model_genes(m, adata) -> list:
    for attr in ("var_names", "genes", "gene_names"):
        g = getattr(m, attr, None)
        if g is not None and len(g):
            return [x for x in list(g) if x in set(adata.var_names)]
    return list(adata.var_names)


@contextlib.contextmanager
def _quiet_scvi():
    """Silence scvi-tools' and Lightning's info logging and warnings (progress bars stay)."""
    import scvi

    loggers = [logging.getLogger(n) for n in ("scvi", "lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    verbosity = scvi.settings.verbosity
    try:
        scvi.settings.verbosity = logging.WARNING
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        scvi.settings.verbosity = verbosity
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _scvi_embed(ctx: FoldContext, targets):
    import scvi

    if "scvi_model" not in ctx.cache:
        t0 = time.perf_counter()
        genes = _model_genes(ctx.get_model(), ctx.adata)
        with _quiet_scvi():
            scvi.settings.seed = ctx.seed
            train = ctx.adata[ctx.train_idx, genes].copy()
            scvi.model.SCVI.setup_anndata(train, batch_key=ctx.batch_key)
            model = scvi.model.SCVI(train, n_latent=10)
            kw = {} if ctx.max_epochs is None else {"max_epochs": int(ctx.max_epochs)}
            model.train(enable_progress_bar=ctx.progress, **kw)
        ctx.cache["scvi_model"] = (model, genes)
        ctx.fit_seconds["scVI"] = time.perf_counter() - t0
    model, genes = ctx.cache["scvi_model"]
    out = []
    for idx in targets:
        sub = ctx.adata[idx, genes].copy()
        with _quiet_scvi():
            out.append(np.asarray(model.get_latent_representation(sub)))
    return out


#: The registry of benchmark methods, in display order.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("PCA", _pca_embed, description="PCA (50 components) of the aMEDL model input"),
        Method("AE", _amedl_latent("ae"), kinds=("ae",), description="plain autoencoder, same input and training loop"),
        Method("aMEDL-FE", _amedl_latent("fe"), kinds=("fe",), description="aMEDL fixed-effects (batch-invariant) latent"),
        Method("aMEDL-RE", _amedl_latent("re"), kinds=("re",), description="aMEDL random-effects (batch-specific) latent"),
        Method("Harmony", _harmony_embed, requires=("harmonypy",), note="pip install 'amedl[benchmark]'",
               description="harmonypy on the PCA (transductive: run on all cells, scored on held-out cells)"),
        Method("scVI", _scvi_embed, requires=("scvi",), note="pip install scvi-tools",
               description="scvi-tools SCVI (10 latent dims) on raw counts of the model's genes"),
    )
}
#: Methods run when none are named.
DEFAULT_METHODS = tuple(METHODS)

_ALIASES = {
    "pca": "PCA", "ae": "AE", "autoencoder": "AE",
    "fe": "aMEDL-FE", "amedl-fe": "aMEDL-FE", "amedl_fe": "aMEDL-FE",
    "re": "aMEDL-RE", "amedl-re": "aMEDL-RE", "amedl_re": "aMEDL-RE",
    "harmony": "Harmony", "scvi": "scVI",
}


def resolve_methods(methods: Iterable[str] | str | None) -> list[str]:
    """Canonical method names from user spellings (``fe``, ``amedl-re``, ``harmony``...).

    ``None`` means :data:`DEFAULT_METHODS`. Accepts a list or one
    comma-separated string. Raises ``ValueError`` for an unknown name.
    """
    if methods is None:
        return list(DEFAULT_METHODS)
    if isinstance(methods, str):
        methods = [methods]
    out: list[str] = []
    for item in methods:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            canon = _ALIASES.get(name.lower())
            if canon is None:
                raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)} "
                                 "(or pca, ae, fe, re, harmony, scvi)")
            if canon not in out:
                out.append(canon)
    if not out:
        raise ValueError("no methods given")
    return out


# ---------------------------------------------------------------------------
# the benchmark


def _check_input(adata, batch_key: str, label_key: str, layer, progress: bool):
    """Validate keys and drop cells the model cannot take (no counts); returns (adata, notes)."""
    import scipy.sparse as sp

    notes = []
    for what, key in (("batch", batch_key), ("label", label_key)):
        if key not in adata.obs.columns:
            raise KeyError(f"{what} column {key!r} is not in adata.obs (columns: {list(adata.obs.columns)})")
        missing = adata.obs[key].isna()
        if missing.any():
            raise ValueError(f"{what} column {key!r} has {int(missing.sum())} missing value(s); "
                             "drop those cells or fill them in first")
    X = adata.layers[layer] if layer is not None else adata.X
    totals = np.asarray(X.sum(axis=1)).ravel() if sp.issparse(X) else np.asarray(X).sum(axis=1)
    empty = totals == 0
    if empty.any():
        notes.append(f"{int(empty.sum())} cell(s) without counts were left out")
        _say(progress, notes[-1])
        adata = adata[~empty]
    if not adata.obs_names.is_unique:
        adata = adata.copy()
        adata.obs_names_make_unique()
        notes.append("cell names were made unique")
    return adata, notes


def _history_summary(model) -> dict:
    """Training record of the fold's model: epochs run, and at the kept (best) epoch the
    validation reconstruction error and the batch adversary / classifier accuracy."""
    out = {}
    hist = getattr(model, "history", None) or {}
    info = getattr(model, "train_info", None) or {}
    wanted = {"fe": ("val_mse", "val_adv_acc"), "re": ("val_mse", "val_cls_acc"), "ae": ("val_mse",)}
    for kind, cols in wanted.items():
        df = hist.get(kind) if isinstance(hist, dict) else None
        if df is None or len(df) == 0:
            continue
        df = pd.DataFrame(df)
        best = (df.attrs or {}).get("best_epoch") or getattr(hist.get(kind), "attrs", {}).get("best_epoch")
        row = df[df["epoch"] == best] if best and "epoch" in df.columns else df.iloc[[-1]]
        if len(row) == 0:
            row = df.iloc[[-1]]
        out[f"{kind}_epochs"] = float(len(df))
        for col in cols:
            if col in df.columns:
                out[f"{kind}_{col}"] = float(row[col].iloc[0])
        chance = (info.get(kind) or {}).get("chance_accuracy")
        if chance is not None and "chance_acc" not in out:
            out["chance_acc"] = float(chance)
    return out


def run_benchmark(
    adata,
    batch_key: str,
    label_key: str,
    out_dir,
    methods: Sequence[str] | str | None = None,
    folds: int = 5,
    seed: int = 0,
    progress: bool = True,
    scib: bool = True,
    max_epochs: int | None = None,
    *,
    layer: str | None = None,
    preset: str = "default",
    model_kwargs: dict | None = None,
    max_cells: int | None = 10_000,
    umap: bool = True,
    report: bool = True,
    title: str | None = None,
    command: str | None = None,
) -> pd.DataFrame:
    """Fit every method on each fold, score the held-out cells, write the report.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` (or ``layer``); not modified.
    batch_key, label_key
        ``adata.obs`` columns with the batch and the cell type.
    out_dir
        Folder for ``results.csv``, ``summary.md``, ``umap.png``, ``report.html``
        (created if needed; files are replaced atomically).
    methods
        Names from :data:`METHODS` (or aliases: ``pca, ae, fe, re, harmony,
        scvi``); default all. Methods whose optional package is missing are
        skipped with a note.
    folds
        k of the k-fold split stratified on batch x label; each fold fits on
        k-1 folds and scores its held-out cells. 1: fit and score on all cells.
    seed
        Seed of the folds, the models, the subsamples and the UMAPs.
    progress
        Print progress lines and model progress bars (stderr).
    scib
        Also compute the scIB metrics (needs ``scib-metrics``; a note is
        written when it is missing).
    max_epochs
        Epoch cap passed to ``AMEDL.fit`` (and scVI); ``None``: the models'
        own budget.
    layer, preset, model_kwargs
        Passed to :class:`amedl.AMEDL` (``model_kwargs`` for anything else,
        e.g. ``n_latent``).
    max_cells
        Score a seeded subsample of at most this many held-out cells per fold
        (10,000 as in the paper; ``None``: all).
    umap, report
        Write ``umap.png`` / ``report.html``.
    title, command
        Shown in ``summary.md`` and the report.

    Returns
    -------
    The results table: one row per method x fold with the metric columns
    (also written to ``results.csv``).
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = resolve_methods(methods)
    adata, notes = _check_input(adata, batch_key, label_key, layer, progress)
    chosen: list[Method] = []
    for name in names:
        ok, why = METHODS[name].available()
        if ok:
            chosen.append(METHODS[name])
        else:
            notes.append(why)
            _say(progress, why)
    if not chosen:
        raise RuntimeError("none of the requested methods can run: " + "; ".join(notes))
    use_scib = bool(scib)
    if scib and not _metrics.scib_available():
        use_scib = False
        notes.append("scIB metrics skipped: scib-metrics not installed (pip install 'amedl[benchmark]')")
        _say(progress, notes[-1])

    kinds = tuple(k for k in ("ae", "fe", "re") if any(k in m.kinds for m in chosen))
    mkw = dict(model_kwargs or {})
    mkw.setdefault("preset", preset)
    if layer is not None:
        mkw.setdefault("layer", layer)

    batch = adata.obs[batch_key].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    splits = stratified_folds(batch, labels, folds, seed)
    _say(progress, f"{adata.n_obs} cells x {adata.n_vars} genes, {len(set(batch))} batches, "
                   f"{len(set(labels))} labels; {len(splits)} fold(s); methods: {', '.join(m.name for m in chosen)}"
                   + ("; scIB metrics on" if use_scib else ""))
    all_idx = np.arange(adata.n_obs)
    rows = []
    umap_latents: dict[str, np.ndarray] = {}
    for f, (tr, te) in enumerate(splits):
        ctx = FoldContext(adata, tr, te, batch_key, label_key, seed=seed + f, max_epochs=max_epochs,
                          progress=progress, model_kwargs=mkw, kinds=kinds)
        if kinds:
            _say(progress, f"fold {f + 1}/{len(splits)}: fitting aMEDL ({', '.join(kinds)}) on {len(tr)} cells")
        ctx.get_model()  # every method uses the fold's preprocessing; fit it before timing the embeddings
        hist = _history_summary(ctx.model)
        if kinds:
            _say(progress, f"fold {f + 1}/{len(splits)}: fitted in {sum(ctx.fit_seconds.values()):.0f} s ("
                           + ", ".join(f"{k.upper()} {ctx.fit_seconds[k]:.0f} s / {int(hist.get(f'{k}_epochs', 0))} epochs"
                                       for k in kinds) + ")")
        for meth in chosen:
            want_all = umap and f == 0 and len(splits) > 1
            targets = [te, all_idx] if want_all else [te]
            t0 = time.perf_counter()
            lat = meth.embed(ctx, targets)
            embed_s = time.perf_counter() - t0
            if f == 0 and umap:
                umap_latents[meth.name] = lat[1] if want_all else lat[0]
            t0 = time.perf_counter()
            unintegrated = None
            if use_scib:
                if "unintegrated" not in ctx.cache:
                    # as scib-metrics' Benchmarker: the PCA of the unintegrated (model-input) data
                    from . import baselines

                    ctx.cache["unintegrated"] = np.asarray(baselines.pca_latent(ctx.model, adata[te]), np.float32)
                unintegrated = ctx.cache["unintegrated"]
            scores = _metrics.evaluate_latent(lat[0], batch[te], labels[te], scib=use_scib,
                                              unintegrated=unintegrated, max_cells=max_cells, seed=seed)
            score_s = time.perf_counter() - t0
            row = {"method": meth.name, "fold": f + 1, "n_train": len(tr), "n_test": len(te),
                   "fit_s": meth.fit_seconds(ctx), "embed_s": embed_s, "score_s": score_s}
            row.update(scores)
            rows.append(row)
            _say(progress, f"fold {f + 1}/{len(splits)} {meth.name:9s} batch ASW {scores['batch_asw']:+.3f}  "
                           f"label ASW {scores['label_asw']:+.3f}"
                           + (f"  scIB total {scores['scib_total']:.3f}" if "scib_total" in scores else ""))
        if hist:
            for r in rows:
                if r["fold"] == f + 1:
                    r.update(hist)
        if len(splits) > 1 and f + 1 < len(splits):
            # keep what is done so far (a long run that is stopped still leaves its finished folds)
            with atomic_write(out_dir / "results.partial.csv") as fh:
                pd.DataFrame(rows).to_csv(fh, index=False)
    results = pd.DataFrame(rows)
    with atomic_write(out_dir / "results.csv") as fh:
        results.to_csv(fh, index=False)
    with contextlib.suppress(FileNotFoundError):
        (out_dir / "results.partial.csv").unlink()

    meta = {
        "title": title or "amedl benchmark",
        "command": command,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "batch_key": batch_key,
        "label_key": label_key,
        "n_batches": len(set(batch)),
        "n_labels": len(set(labels)),
        "folds": len(splits),
        "seed": seed,
        "methods": [m.name for m in chosen],
        "descriptions": {m.name: m.description for m in chosen},
        "notes": notes,
        "scib": use_scib,
        "max_epochs": max_epochs,
        "preset": mkw.get("preset"),
    }
    umap_path = None
    if umap and umap_latents:
        from .plotting import umap_grid

        _say(progress, "UMAP panels")
        asw = results[results["fold"] == 1].set_index("method")
        titles = {m: {"batch": f"batch ASW {asw.loc[m, 'batch_asw']:+.2f}",
                      "label": f"label ASW {asw.loc[m, 'label_asw']:+.2f}"} for m in umap_latents}
        cells = all_idx if len(splits) > 1 else splits[0][1]
        import matplotlib.pyplot as plt

        fig, _ = umap_grid(umap_latents, {"batch": batch[cells], "label": labels[cells]},
                           out_dir / "umap.png", titles=titles, seed=seed)
        plt.close(fig)
        umap_path = out_dir / "umap.png"
    meta["umap_caption"] = (
        "UMAPs of all cells embedded by the first fold's models (fitted on its training cells)"
        if len(splits) > 1 else "UMAPs of all cells (models fitted on all cells)"
    )
    meta["wall_s"] = time.perf_counter() - t_start
    meta["cpu_s"] = time.process_time() - cpu_start
    summary = summary_markdown(results, meta)
    with atomic_write(out_dir / "summary.md") as fh:
        fh.write(summary)
    if report:
        write_report(out_dir / "report.html", results, meta, umap_path)
    _say(progress, f"done in {meta['wall_s']:.0f} s: {out_dir}/results.csv, summary.md"
                   + (", umap.png" if umap_path else "") + (", report.html" if report else ""))
    return results


# ---------------------------------------------------------------------------
# summaries and the report


def summarize(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, 95% confidence half-width (Student t over folds) and fold count per method x metric.

    Returns a long table with columns ``method, metric, mean, ci95, n``
    (``ci95`` is NaN with a single fold). Methods keep their order of appearance.
    """
    from scipy import stats

    skip = {"method", "fold", "n_train", "n_test"}
    metrics = [c for c in (metrics or results.columns) if c not in skip and c in results.columns]
    out = []
    for meth in pd.unique(results["method"]):
        sub = results[results["method"] == meth]
        for col in metrics:
            v = pd.to_numeric(sub[col], errors="coerce").dropna().to_numpy(dtype=float)
            n = v.size
            mean = float(v.mean()) if n else np.nan
            ci = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            out.append({"method": meth, "metric": col, "mean": mean, "ci95": ci, "n": n})
    return pd.DataFrame(out)


def _fmt(mean: float, ci: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "–"
    s = f"{mean:.{digits}f}"
    if np.isfinite(ci):
        s += f" ± {ci:.{digits}f}"
    return s


def _wide(summary: pd.DataFrame, columns: dict) -> pd.DataFrame:
    rows = {}
    for meth in pd.unique(summary["method"]):
        sub = summary[summary["method"] == meth].set_index("metric")
        row = {}
        for col, label in columns.items():
            if col in sub.index:
                digits = 1 if col.endswith(("_ch", "_s")) else 3
                row[label] = _fmt(sub.loc[col, "mean"], sub.loc[col, "ci95"], digits)
        rows[meth] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "method"
    return df


def _md_table(df: pd.DataFrame) -> str:
    cols = [df.index.name or ""] + list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join(["---"] + ["---:"] * len(df.columns)) + " |"]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row.to_numpy()]) + " |")
    return "\n".join(lines)


def pattern_check(results: pd.DataFrame) -> list[str]:
    """Sentences checking the aMEDL paper's pattern on the fold means.

    RE batch ASW above PCA's and AE's; FE batch ASW below both; FE label ASW
    compared with PCA's. Only for the methods present.
    """
    mean = results.groupby("method", sort=False)[["batch_asw", "label_asw"]].mean()
    out = []
    have = set(mean.index)
    refs = [r for r in ("PCA", "AE") if r in have]
    if not refs:
        return out
    ref_txt = " and ".join(f"{r} {mean.loc[r, 'batch_asw']:+.3f}" for r in refs)
    if "aMEDL-RE" in have:
        v = mean.loc["aMEDL-RE", "batch_asw"]
        ok = all(v > mean.loc[r, "batch_asw"] for r in refs)
        margin = min(v - mean.loc[r, "batch_asw"] for r in refs)
        out.append(f"RE batch ASW {v:+.3f} vs {ref_txt}: "
                   + (f"above both (margin {margin:+.3f})" if ok else f"NOT above both (margin {margin:+.3f})"))
    if "aMEDL-FE" in have:
        v = mean.loc["aMEDL-FE", "batch_asw"]
        ok = all(v < mean.loc[r, "batch_asw"] for r in refs)
        margin = min(mean.loc[r, "batch_asw"] - v for r in refs)
        out.append(f"FE batch ASW {v:+.3f} vs {ref_txt}: "
                   + (f"below both (margin {margin:+.3f})" if ok else f"NOT below both (margin {margin:+.3f})"))
        if "PCA" in have:
            d = mean.loc["aMEDL-FE", "label_asw"] - mean.loc["PCA", "label_asw"]
            out.append(f"FE label ASW {mean.loc['aMEDL-FE', 'label_asw']:+.3f} vs PCA "
                       f"{mean.loc['PCA', 'label_asw']:+.3f} (difference {d:+.3f})")
    return out


def _mean_ci(results: pd.DataFrame, col: str) -> tuple[float, float]:
    """Mean and 95% half-width of a fold-level column (one value per fold)."""
    from scipy import stats

    if col not in results.columns:
        return float("nan"), float("nan")
    v = results.groupby("fold")[col].first().dropna().to_numpy(dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    ci = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), ci


def training_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per aMEDL network (AE, FE, RE): epochs run, validation MSE and batch accuracy, mean ± CI over folds."""
    rows = {}
    for kind, acc in (("ae", None), ("fe", "fe_val_adv_acc"), ("re", "re_val_cls_acc")):
        if f"{kind}_epochs" not in results.columns:
            continue
        row = {"epochs": _fmt(*_mean_ci(results, f"{kind}_epochs"), 0),
               "validation MSE": _fmt(*_mean_ci(results, f"{kind}_val_mse"), 3),
               "validation batch accuracy": _fmt(*_mean_ci(results, acc), 3) if acc else "–"}
        rows[{"ae": "AE", "fe": "FE (adversary)", "re": "RE (classifier)"}[kind]] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "network"
    return df


def summary_markdown(results: pd.DataFrame, meta: dict) -> str:
    """The ``summary.md`` text: set-up, the paper's metrics, the scIB metrics, notes."""
    summ = summarize(results)
    folds = int(meta.get("folds", results["fold"].nunique()))
    lines = [f"# {meta.get('title', 'amedl benchmark')}", ""]
    if meta.get("command"):
        lines += ["```", meta["command"], "```", ""]
    lines += [
        f"{meta.get('n_cells')} cells x {meta.get('n_genes')} genes; batch `{meta.get('batch_key')}` "
        f"({meta.get('n_batches')} levels), label `{meta.get('label_key')}` ({meta.get('n_labels')} levels); "
        + (f"{folds}-fold cross-validation stratified on batch x label, scores on held-out cells, "
           f"mean ± 95% CI over folds" if folds > 1 else "fitted and scored on all cells")
        + f"; seed {meta.get('seed')}; preset `{meta.get('preset')}`"
        + (f"; max_epochs {meta['max_epochs']}" if meta.get("max_epochs") else "")
        + (f"; wall time {meta['wall_s']:.0f} s (CPU time {meta.get('cpu_s', float('nan')):.0f} s, "
           f"{os.cpu_count()} cores)" if meta.get("wall_s") else "") + ".",
        "",
        "## The aMEDL paper's metrics",
        "",
        "ASW: raw silhouette width on the latent (−1..1). A batch-invariant latent wants a low batch "
        "ASW and a high label ASW; aMEDL-RE is meant to keep batch apart (high batch ASW). "
        "1/DB: inverse Davies–Bouldin; CH: Calinski–Harabasz (higher = groups more separated).",
        "",
        _md_table(_wide(summ, PAPER_COLUMNS)),
        "",
    ]
    if meta.get("scib") and "scib_total" in results.columns:
        lines += [
            "## scIB metrics (scib-metrics)",
            "",
            "All in 0..1, higher is better; total = 0.4 × batch correction + 0.6 × bio conservation. "
            "PCR comparison is against the PCA of the model input, so PCA scores 0 on it by construction. "
            "aMEDL-RE is meant to keep batch information, so a low batch-correction score is its intended "
            "behaviour, not a failure.",
            "",
            _md_table(_wide(summ, SCIB_COLUMNS)),
            "",
        ]
    t = _wide(summ, {"fit_s": "fit s", "embed_s": "embed s", "score_s": "score s"})
    if len(t.columns):
        lines += ["## Timing", "",
                  "Seconds per fold. fit: the aMEDL preprocessing plus the network(s) the method needs "
                  "(one aMEDL model per fold is shared by PCA, AE, FE, RE and Harmony's input PCA); "
                  "embed: computing the latent; score: the metrics.", "", _md_table(t), ""]
    tr = training_table(results)
    if len(tr):
        lines += ["## Training record of the aMEDL networks", "",
                  "At the epoch whose weights were kept (early stopping on the validation loss); validation "
                  f"cells are from the training folds. Batch accuracy: the FE adversary (should be near chance, "
                  f"{_fmt(*_mean_ci(results, 'chance_acc'), 3)}) and the RE batch classifier (should be high).",
                  "", _md_table(tr), ""]
    checks = pattern_check(results)
    if checks:
        lines += ["## The paper's pattern", ""] + [f"- {c}" for c in checks] + [""]
    if meta.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    desc = meta.get("descriptions") or {}
    if desc:
        lines += ["## Methods", ""] + [f"- **{k}**: {v}" for k, v in desc.items()] + [""]
    return "\n".join(lines)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
code,pre{background:#f6f6f6;padding:.1em .3em} pre{padding:.6em;overflow-x:auto}
img{max-width:100%;height:auto} .note{color:#555} details{margin:.6em 0}
"""


def _html_table(df: pd.DataFrame) -> str:
    return df.reset_index().to_html(index=False, escape=True, border=0)


def write_report(path, results: pd.DataFrame, meta: dict, umap_path=None) -> None:
    """Write the self-contained ``report.html`` (tables and the UMAP figure embedded)."""
    summ = summarize(results)
    esc = html.escape
    folds = int(meta.get("folds", results["fold"].nunique()))
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(meta.get('title', 'amedl benchmark'))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(meta.get('title', 'amedl benchmark'))}</h1>",
        f"<p>{meta.get('n_cells')} cells × {meta.get('n_genes')} genes; batch <code>{esc(str(meta.get('batch_key')))}"
        f"</code> ({meta.get('n_batches')} levels), label <code>{esc(str(meta.get('label_key')))}</code> "
        f"({meta.get('n_labels')} levels). "
        + (f"{folds}-fold cross-validation stratified on batch × label; every score is on held-out cells; "
           "tables show mean ± 95% confidence interval over folds." if folds > 1
           else "Models fitted and scored on all cells.")
        + f" Seed {meta.get('seed')}."
        + (f" Wall time {meta['wall_s']:.0f} s (CPU time {meta.get('cpu_s', float('nan')):.0f} s, "
           f"{os.cpu_count()} cores)." if meta.get("wall_s") else "")
        + "</p>",
    ]
    if meta.get("command"):
        parts.append(f"<pre>{esc(meta['command'])}</pre>")
    parts += [
        "<h2>Batch and cell-type separation (the aMEDL paper's metrics)</h2>",
        "<p class='note'>ASW: silhouette width (−1..1). A batch-invariant latent (aMEDL-FE) should have a low "
        "batch ASW and a high label ASW; the random-effects latent (aMEDL-RE) should keep batches apart "
        "(high batch ASW). 1/DB: inverse Davies–Bouldin; CH: Calinski–Harabasz.</p>",
        _html_table(_wide(summ, PAPER_COLUMNS)),
    ]
    if meta.get("scib") and "scib_total" in results.columns:
        parts += ["<h2>scIB metrics</h2>",
                  "<p class='note'>From scib-metrics; all in 0..1, higher is better; "
                  "total = 0.4 × batch correction + 0.6 × bio conservation. PCR comparison is against the "
                  "PCA of the model input (PCA scores 0 by construction). aMEDL-RE is meant to keep batch "
                  "information: a low batch-correction score is its intended behaviour.</p>",
                  _html_table(_wide(summ, SCIB_COLUMNS))]
    checks = pattern_check(results)
    if checks:
        parts += ["<h2>The paper's pattern</h2><ul>"] + [f"<li>{esc(c)}</li>" for c in checks] + ["</ul>"]
    tr = training_table(results)
    if len(tr):
        parts += ["<h2>Training record of the aMEDL networks</h2>",
                  "<p class='note'>At the kept epoch (early stopping on the validation loss). Batch accuracy: "
                  "the FE adversary should be near chance (about "
                  f"{esc(_fmt(*_mean_ci(results, 'chance_acc'), 3))}); the RE batch classifier should be high.</p>",
                  _html_table(tr)]
    parts += ["<h2>Timing</h2><p class='note'>Seconds per fold (fit includes the shared aMEDL preprocessing).</p>",
              _html_table(_wide(summ, {"fit_s": "fit s", "embed_s": "embed s", "score_s": "score s"}))]
    if umap_path is not None and Path(umap_path).exists():
        b64 = base64.b64encode(Path(umap_path).read_bytes()).decode("ascii")
        parts += ["<h2>UMAPs</h2>", f"<p class='note'>{esc(meta.get('umap_caption', ''))}; left: coloured by "
                  "batch, right: by label.</p>", f"<img alt='UMAP panels' src='data:image/png;base64,{b64}'>"]
    desc = meta.get("descriptions") or {}
    if desc:
        parts += ["<h2>Methods</h2><ul>"] + [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in desc.items()] + ["</ul>"]
    if meta.get("notes"):
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{esc(n)}</li>" for n in meta["notes"]] + ["</ul>"]
    parts += ["<details><summary>Per-fold results (results.csv)</summary>",
              results.to_html(index=False, float_format=lambda v: f"{v:.4g}"), "</details>"]
    versions = _versions()
    parts += [f"<p class='note'>Generated {_dt.datetime.now().isoformat(timespec='seconds')} on "
              f"{esc(platform.platform())} with {esc(versions)}.</p>", "</body></html>"]
    with atomic_write(path) as fh:
        fh.write("\n".join(parts))


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("amedl", "torch", "scanpy", "scikit-learn", "scib-metrics", "harmonypy", "scvi-tools"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


# ---------------------------------------------------------------------------
# command line


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``amedl benchmark`` arguments to an argparse (sub)parser."""
    parser.add_argument("input", help="input .h5ad (raw counts in X or --layer)")
    parser.add_argument("--batch-key", required=True, help="obs column with the batch")
    parser.add_argument("--label-key", required=True, help="obs column with the cell type")
    parser.add_argument("--out-dir", required=True, help="folder for results.csv, summary.md, umap.png, report.html")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"methods to run (default all available): {', '.join(METHODS)}; "
                             "aliases pca ae fe re harmony scvi")
    parser.add_argument("--folds", type=int, default=5,
                        help="k-fold cross-validation stratified on batch x label (1: fit and score on all cells)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                        help="epoch budget per network (default: from the number of cells)")
    parser.add_argument("--preset", default="default", help="amedl preset (default or paper)")
    parser.add_argument("--layer", default=None, help="AnnData layer holding the raw counts")
    parser.add_argument("--max-cells", type=int, default=10_000,
                        help="score a seeded subsample of at most this many held-out cells per fold")
    parser.add_argument("--no-scib", action="store_true", help="skip the scIB metrics")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _read_input(path: str):
    """Read an ``.h5ad``, or an R object through :func:`amedl.io.read` when the R bridge is present."""
    p = str(path)
    if p.lower().endswith(".h5ad"):
        import anndata as ad

        return ad.read_h5ad(p)
    from . import io as amedl_io

    return amedl_io.read(p)


def benchmark_command(args: argparse.Namespace) -> int:
    """Run ``amedl benchmark`` from parsed arguments; prints the summary and returns 0."""
    adata = _read_input(args.input)
    import shlex

    parts = ["amedl", "benchmark", args.input, "--batch-key", args.batch_key, "--label-key", args.label_key,
             "--out-dir", args.out_dir]
    if args.methods:
        parts += ["--methods", *args.methods]
    parts += ["--folds", str(args.folds), "--seed", str(args.seed)]
    for flag, val in (("--epochs", args.epochs), ("--layer", args.layer)):
        if val is not None:
            parts += [flag, str(val)]
    if args.preset != "default":
        parts += ["--preset", args.preset]
    if args.max_cells != 10_000:
        parts += ["--max-cells", str(args.max_cells)]
    if args.no_scib:
        parts.append("--no-scib")
    command = " ".join(shlex.quote(str(p)) for p in parts)
    run_benchmark(
        adata, args.batch_key, args.label_key, args.out_dir,
        methods=args.methods, folds=args.folds, seed=args.seed, progress=not args.quiet,
        scib=not args.no_scib, max_epochs=args.epochs, layer=args.layer, preset=args.preset,
        max_cells=args.max_cells, title=f"amedl benchmark: {Path(args.input).name}", command=command,
    )
    print(Path(args.out_dir, "summary.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m amedl.benchmark INPUT --batch-key ...``."""
    parser = add_benchmark_arguments(argparse.ArgumentParser(prog="amedl benchmark", description=__doc__.split("\n")[0]))
    return benchmark_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
