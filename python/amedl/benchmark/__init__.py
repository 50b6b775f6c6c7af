"""Benchmark aMEDL against baselines on held-out cells: tables, UMAPs, a report.

=========  ==========================================================================
PCA        PCA of the model input (fitted on the training cells)
AE         a plain autoencoder (the paper's tied autoencoder: no batch input, no adversary)
aMEDL-FE   the batch-invariant fixed-effects latent
aMEDL-RE   the batch-specific random-effects latent
Harmony    harmonypy on the PCA above (optional; transductive)
scVI       scvi-tools SCVI on the raw counts of the model's genes (optional)
=========  ==========================================================================

With ``folds=k > 1`` the cells are split into k folds stratified on
batch x label; each fold's methods are fitted on the other k-1 folds and
scored on its held-out cells (the aMEDL paper's protocol); ``folds=1`` fits
and scores on all cells. Several seeds repeat the whole cross-validation,
folds drawn anew, once per seed. :func:`run_benchmark` writes, atomically, into
``out_dir``: ``results.csv`` (one row per method x seed x fold),
``summary.md`` (means ± 95% confidence intervals over folds, and per seed
when there are several), ``umap.png`` (the first fold's models applied to
all cells) and ``report.html`` (one page).

Rooms: :mod:`.methods` (the methods and the fold's shared model),
:mod:`.folds`, :mod:`.report` (summaries; one HTML template); the run loop is here.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import metrics as _metrics
from .._utils import Staging, atomic_open
from ..errors import AMEDLError, AMEDLInputError, preview
from .folds import stratified_folds
from .methods import DEFAULT_METHODS, METHODS, FoldContext, Method, resolve_methods
from .report import (pattern_check, per_seed_table, sections, summarize, summary_markdown, training_table,
                     write_report)

__all__ = ["METHODS", "DEFAULT_METHODS", "Method", "FoldContext", "resolve_methods", "stratified_folds",
           "run_benchmark", "summarize", "pattern_check", "training_table", "per_seed_table", "sections",
           "summary_markdown", "write_report"]


#: What a run writes into its folder, and the table of finished folds that a stopped run leaves.
OUTPUTS = ("results.csv", "summary.md", "umap.png", "report.html")
PARTIAL = "results.partial.csv"


#: Fewer cells than this of a batch or label per held-out fold (on average) make its scores noisy: a note says so.
FEW_PER_FOLD = 5


def _check_fold_sizes(splits_of: dict, batch: np.ndarray, labels: np.ndarray, max_cells: int | None) -> list[str]:
    """An error, before anything is fitted, where a fold has too few cells to score (the silhouette
    needs more cells than groups); notes for batches or labels with few cells per fold."""
    for s, splits in splits_of.items():
        for f, (_, te) in enumerate(splits):
            n = len(te) if max_cells is None else min(len(te), max_cells)
            groups = max(len(set(batch[te])), len(set(labels[te])))
            if n <= groups:
                raise AMEDLInputError(
                    f"fold {f + 1} (seed {s}) has {n} held-out cells to score for {len(set(batch[te]))} batches and "
                    f"{len(set(labels[te]))} labels: scores need more cells than groups. Use fewer folds (--folds) "
                    "or a larger max_cells (--max-cells)")
    n_folds = len(next(iter(splits_of.values())))
    notes = []
    for what, values in (("batch", batch), ("label", labels)):
        names, counts = np.unique(values, return_counts=True)
        few = [f"{name!r} ({count} cells)" for name, count in zip(names, counts) if count / n_folds < FEW_PER_FOLD]
        if few and n_folds > 1:
            notes.append(f"few cells of {what} {', '.join(few[:5])}{' ...' if len(few) > 5 else ''}: fewer than "
                         f"{FEW_PER_FOLD} per held-out fold, so the scores of the folds that hold them move with a "
                         "few cells")
    return notes


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[amedl benchmark] {msg}", file=sys.stderr, flush=True)


def _check_input(adata, batch_key: str, label_key: str, layer, progress: bool):
    """Check the keys; leave out cells without counts. Returns ``(adata, notes)``."""
    from ..data.validate import _counts_matrix

    notes = []
    if batch_key == label_key:
        raise AMEDLInputError(f"the batch and label columns are both {batch_key!r}: the benchmark scores how a latent "
                              "mixes batches while keeping the labels (cell types) apart; name two columns")
    for what, key in (("batch", batch_key), ("label", label_key)):
        if key not in adata.obs.columns:
            raise AMEDLInputError(f"{what} column {key!r} is not in adata.obs (columns: {preview(adata.obs.columns, 10)})")
        missing = int((adata.obs[key].isna() | (adata.obs[key].astype(str).str.strip() == "")).sum())
        if missing:
            raise AMEDLInputError(f"{what} column {key!r} has {missing} missing or empty value(s); drop those cells or "
                                  "fill them in first")
        values = adata.obs[key].astype(str).unique()
        if len(values) < 2:
            raise AMEDLInputError(f"{what} column {key!r} has a single value ({values[0]!r}); the benchmark needs "
                                  f"at least 2 {'batches' if what == 'batch' else 'labels'}")
    X, _ = _counts_matrix(adata, layer)
    empty = np.asarray(X.sum(axis=1)).ravel() == 0
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
    """The fold model's training record: epochs run, and at the kept epoch the validation
    reconstruction error and the batch adversary / classifier accuracy."""
    out = {}
    wanted = {"fe": ("val_recon", "val_adv_acc"), "re": ("val_recon", "val_cls_acc"), "ae": ("val_recon",)}
    for kind, cols in wanted.items():
        df = (getattr(model, "history", None) or {}).get(kind)
        if df is None or not len(df):
            continue
        info = (getattr(model, "train_info", None) or {}).get(kind) or {}
        row = df[df["epoch"] == info.get("best_epoch")] if "epoch" in df.columns else df.iloc[:0]
        row = row if len(row) else df.iloc[[-1]]
        out[f"{kind}_epochs"] = float(len(df))
        out.update({f"{kind}_{c}": float(row[c].iloc[0]) for c in cols if c in df.columns})
        if info.get("chance_accuracy") is not None:
            out.setdefault("chance_acc", float(info["chance_accuracy"]))
    return out


def check_seeds(seed, name: str = "seed") -> list[int]:
    """``seed`` (one, or a list) as a list of distinct non-negative integers; ``name``
    is what the error messages call it (the command line's ``--seed``)."""
    values = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise AMEDLInputError(f"{name} must be a non-negative integer or a list of them, got {seed!r}")
    if len(set(values)) < len(values):
        raise AMEDLInputError(f"{name} lists a seed twice ({' '.join(map(str, values))}); give each seed once")
    return [int(v) for v in values]


def run_benchmark(
    adata,
    batch_key: str,
    label_key: str,
    out_dir,
    methods: Sequence[str] | str | None = None,
    folds: int = 5,
    seed: int | Sequence[int] = 0,
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
        (created if needed). They are moved in together at the end, replacing a
        previous run's (whose figure or report this run does not make is removed);
        a stopped run leaves the previous outputs as they were, and its finished
        folds in ``results.partial.csv``.
    methods
        Names from :data:`METHODS` (or ``pca, ae, fe, re, harmony, scvi``);
        default all. Methods whose optional package is missing are skipped
        with a note.
    folds
        k of the k-fold split stratified on batch x label; 1: fit and score on all cells.
    seed
        Seed of the folds, the models (fold f uses ``seed + f``), the subsamples and the UMAPs.
        A list of seeds repeats the whole cross-validation once per seed (the rows of
        each seed are those of a run with that seed alone); the tables then average over
        every seed x fold and a per-seed table shows how much the totals move with the
        seed. The UMAPs are the first seed's.
    progress
        Print progress lines and model progress bars (stderr).
    scib
        Also compute the scIB metrics (needs ``scib-metrics``; a note says when it is missing).
    max_epochs
        Epoch cap for the aMEDL networks and scVI; ``None``: each model's own budget.
    layer, preset, model_kwargs
        Passed to :class:`amedl.AMEDL` (``model_kwargs`` for anything else, e.g. ``n_latent``).
    max_cells
        Score a seeded subsample of at most this many held-out cells per fold
        (10,000 as in the paper; ``None``: all).
    umap, report
        Write ``umap.png`` / ``report.html``.
    title, command
        Shown in ``summary.md`` and the report.

    Returns
    -------
    The results table (also ``results.csv``): one row per method x seed x fold.
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    seeds = check_seeds(seed)
    names = resolve_methods(methods)
    layer = None if layer == "X" else layer
    adata, notes = _check_input(adata, batch_key, label_key, layer, progress)
    chosen: list[Method] = []
    for name in names:
        ok, why = METHODS[name].available()
        chosen += [METHODS[name]] if ok else []
        if not ok:
            notes.append(why)
            _say(progress, why)
    if not chosen:
        raise AMEDLError("none of the requested methods can run: " + "; ".join(notes))
    use_scib = bool(scib) and _metrics.scib_available()
    if scib and not use_scib:
        notes.append("scIB metrics skipped: scib-metrics not installed (pip install '<amedl checkout>[benchmark]')")
        _say(progress, notes[-1])

    kinds = tuple(k for k in ("ae", "fe", "re") if any(k in m.kinds for m in chosen))
    mkw = {"preset": preset, **({"layer": layer} if layer is not None else {}), **(model_kwargs or {})}
    batch = adata.obs[batch_key].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    splits_of = {s: stratified_folds(batch, labels, folds, s) for s in seeds}
    splits = splits_of[seeds[0]]
    for note in _check_fold_sizes(splits_of, batch, labels, max_cells):
        notes.append(note)
        _say(progress, note)
    _say(progress, f"{adata.n_obs} cells x {adata.n_vars} genes, {len(set(batch))} batches, {len(set(labels))} "
                   f"labels; {len(splits)} fold(s)" + (f" x {len(seeds)} seeds" if len(seeds) > 1 else "")
                   + f"; methods: {', '.join(m.name for m in chosen)}" + ("; scIB metrics on" if use_scib else ""))
    all_idx = np.arange(adata.n_obs)
    want_all = umap and len(splits) > 1  # the first fold's models also embed all cells, for the figure
    rows, umap_latents = [], {}
    runs = [(s, f, tr, te) for s in seeds for f, (tr, te) in enumerate(splits_of[s])]
    for i, (run_seed, f, tr, te) in enumerate(runs):
        is_first = run_seed == seeds[0] and f == 0
        where = f"fold {f + 1}/{len(splits)}" + (f" (seed {run_seed})" if len(seeds) > 1 else "")
        ctx = FoldContext(adata, tr, te, batch_key, seed=run_seed + f, max_epochs=max_epochs, progress=progress,
                          model_kwargs=mkw, kinds=kinds)
        _say(progress, f"{where}: fitting aMEDL ({', '.join(kinds) or 'preprocessing'}) on {len(tr)} cells")
        ctx.get_model()  # every method uses the fold's preprocessing: fit it before timing the embeddings
        hist = _history_summary(ctx.model)
        unintegrated = ctx.pca(te).astype(np.float32) if use_scib else None  # for PCR comparison, as scIB does
        n_scored = len(_metrics.subsample_indices(len(te), max_cells, seed=run_seed, strata=batch[te]))
        for meth in chosen:
            t0, fitted_before = time.perf_counter(), ctx.fit_seconds.get(meth.name, 0.0)
            lat = meth.embed(ctx, [te, all_idx] if want_all and is_first else [te])
            # Harmony and scVI fit inside embed: that time is theirs to fit, not to embed
            embed_s = time.perf_counter() - t0 - (ctx.fit_seconds.get(meth.name, 0.0) - fitted_before)
            if umap and is_first:
                umap_latents[meth.name] = lat[-1]
            t0 = time.perf_counter()
            scores = _metrics.evaluate_latent(lat[0], batch[te], labels[te], scib=use_scib,
                                              unintegrated=unintegrated, max_cells=max_cells, seed=run_seed)
            rows.append({"method": meth.name, "seed": run_seed, "fold": f + 1, "n_train": len(tr),
                         "n_test": len(te), "n_scored": n_scored, "fit_s": meth.fit_seconds(ctx), "embed_s": embed_s,
                         "score_s": time.perf_counter() - t0, **scores, **hist})
            _say(progress, f"{where} {meth.name:9s} batch ASW {scores['batch_asw']:+.3f}  "
                           f"label ASW {scores['label_asw']:+.3f}"
                           + (f"  scIB total {scores['scib_total']:.3f}" if "scib_total" in scores else ""))
        with atomic_open(out_dir / PARTIAL) as fh:  # a long run that is stopped keeps its finished folds
            pd.DataFrame(rows).to_csv(fh, index=False)
    results = pd.DataFrame(rows)
    meta = {"title": title or "amedl benchmark", "command": command, "n_cells": adata.n_obs, "n_genes": adata.n_vars,
            "batch_key": batch_key, "label_key": label_key, "n_batches": len(set(batch)),
            "n_labels": len(set(labels)), "folds": len(splits), "seed": seeds[0] if len(seeds) == 1 else seeds,
            "methods": [m.name for m in chosen],
            "descriptions": {m.name: m.description for m in chosen}, "notes": notes, "scib": use_scib,
            "max_epochs": max_epochs, "preset": mkw.get("preset"),
            "max_cells": max_cells,
            "umap_caption": ("UMAPs of all cells embedded by the first fold's models (fitted on its training cells); "
                             "the ASWs in the panels' titles are those of the first fold's held-out cells, the "
                             "tables' are means over folds") if len(splits) > 1 else
                            "UMAPs of all cells (models fitted on all cells); the ASWs in the titles are the table's"}
    # the outputs are written beside their places and moved in together at the end: an
    # interrupted run leaves the previous run's files as they were (and its finished folds)
    with Staging() as staging:
        results.to_csv(staging.add(out_dir / "results.csv"), index=False)
        umap_path = None
        if umap_latents:
            import matplotlib.pyplot as plt

            from ..pl import umap_grid

            _say(progress, "UMAP panels")
            first = results[(results["seed"] == seeds[0]) & (results["fold"] == 1)].set_index("method")
            titles = {m: {"batch": f"batch ASW {first.loc[m, 'batch_asw']:+.2f}",
                          "label": f"label ASW {first.loc[m, 'label_asw']:+.2f}"} for m in umap_latents}
            cells = all_idx if want_all else splits[0][1]
            umap_path = staging.add(out_dir / "umap.png")
            fig, _ = umap_grid(umap_latents, {"batch": batch[cells], "label": labels[cells]}, umap_path,
                               titles=titles, seed=seeds[0])
            plt.close(fig)
        meta["wall_s"], meta["cpu_s"] = time.perf_counter() - t_start, time.process_time() - cpu_start
        import torch

        meta["threads"] = torch.get_num_threads()
        with open(staging.add(out_dir / "summary.md"), "w", encoding="utf-8") as fh:
            fh.write(summary_markdown(results, meta))
        if report:
            write_report(staging.add(out_dir / "report.html"), results, meta, umap_path)
        staging.commit()
    written = ["results.csv", "summary.md"] + (["umap.png"] if umap_path else []) + (["report.html"] if report else [])
    stale = [name for name in OUTPUTS if name not in written and (out_dir / name).exists()]
    for name in stale + [PARTIAL]:  # a previous run's figure or report would not match these results
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()
    _say(progress, f"done in {meta['wall_s']:.0f} s: {out_dir}/{', '.join(written)}"
                   + (f" (removed the previous run's {', '.join(stale)})" if stale else ""))
    return results
