"""The benchmark's summaries: one set of sections, rendered as ``summary.md`` and ``report.html``."""
from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import os
import platform
import re
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Sequence

import numpy as np
import pandas as pd

from .._utils import atomic_open
from ..metrics import KMEANS_INITS

__all__ = ["summarize", "pattern_check", "training_table", "per_seed_table", "sections", "summary_markdown",
           "write_report"]

#: The aMEDL paper's metrics (first table).
PAPER_COLUMNS = {"batch_asw": "batch ASW", "label_asw": "label ASW", "batch_inv_db": "batch 1/DB",
                 "label_inv_db": "label 1/DB", "batch_ch": "batch CH", "label_ch": "label CH",
                 "same_batch_neighbours": "same-batch nbrs", "same_batch_mixed": "(mixed)",
                 "label_purity": "label purity"}
#: The scIB metrics (second table).
SCIB_COLUMNS = {"batch_correction": "batch correction", "bio_conservation": "bio conservation", "scib_total": "total",
                "scib_total_kmeans_mean": f"total ({KMEANS_INITS} k-means)",
                "ilisi": "iLISI", "kbet": "kBET", "graph_connectivity": "graph conn.",
                "scaled_batch_asw": "batch ASW (scaled)", "pcr_comparison": "PCR comp.", "clisi": "cLISI",
                "nmi": "NMI", "ari": "ARI", "nmi_kmeans_mean": f"NMI ({KMEANS_INITS} k-means)",
                "ari_kmeans_mean": f"ARI ({KMEANS_INITS} k-means)", "scaled_label_asw": "label ASW (scaled)",
                "isolated_labels": "isolated labels"}
#: The methods aMEDL-FE's scIB total is compared with in :func:`pattern_check`.
INTEGRATION_BASELINES = ("Harmony", "scVI")
TIMING_COLUMNS = {"fit_s": "fit s", "embed_s": "embed s", "score_s": "score s"}


def _t95(v: np.ndarray) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")


def summarize(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, 95% confidence half-width (Student t over folds) and fold count per method x metric.

    A long table with columns ``method, metric, mean, ci95, n, n_rows`` (``n``:
    the folds with a value, of ``n_rows``; ``ci95`` is NaN with one fold);
    methods keep their order of appearance. With several seeds every seed x
    fold is one value.
    """
    skip = {"method", "seed", "fold", "n_train", "n_test", "n_scored"}
    metrics = [c for c in (metrics or results.columns) if c not in skip and c in results.columns]
    out = []
    for meth, sub in results.groupby("method", sort=False):
        for col in metrics:
            v = pd.to_numeric(sub[col], errors="coerce").dropna().to_numpy(dtype=float)
            out.append({"method": meth, "metric": col, "mean": float(v.mean()) if v.size else np.nan,
                        "ci95": _t95(v), "n": v.size, "n_rows": len(sub)})
    return pd.DataFrame(out)


def _fmt(mean: float, ci: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if np.isfinite(ci) else "")


def _fold_mean(results: pd.DataFrame, col: str | None) -> tuple[float, float]:
    """Mean and 95% half-width of a fold-level column (one value per fold, of each seed)."""
    if col is None or col not in results.columns:
        return float("nan"), float("nan")
    v = results.groupby(_fold_keys(results))[col].first().dropna().to_numpy(dtype=float)
    return (float(v.mean()) if v.size else float("nan")), _t95(v)


def _fold_keys(results: pd.DataFrame) -> list[str]:
    return ["seed", "fold"] if "seed" in results.columns else ["fold"]


def _seeds_of(results: pd.DataFrame) -> list:
    return list(pd.unique(results["seed"])) if "seed" in results.columns else []


def per_seed_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method (rows) and seed (columns): the fold mean of the scIB totals, one
    k-means run / averaged k-means runs (without scIB metrics: batch ASW / label ASW)."""
    cols = [c for c in ("scib_total", "scib_total_kmeans_mean") if c in results.columns] or ["batch_asw", "label_asw"]
    means = results.groupby(["method", "seed"], sort=False)[cols].mean()
    table = {}
    for (meth, seed), row in means.iterrows():
        table.setdefault(meth, {})[f"seed {seed}"] = " / ".join(
            f"{row[c]:+.3f}" if c.endswith("_asw") else f"{row[c]:.3f}" for c in cols)
    df = pd.DataFrame.from_dict(table, orient="index")
    df.index.name = "method"
    return df


def _wide(summary: pd.DataFrame, columns: dict) -> pd.DataFrame:
    rows = {}
    for meth, sub in summary.groupby("method", sort=False):
        sub = sub.set_index("metric")
        rows[meth] = {label: _fmt(sub.loc[col, "mean"], sub.loc[col, "ci95"], 1 if col.endswith(("_ch", "_s")) else 3)
                      + _missing_folds(sub.loc[col]) for col, label in columns.items() if col in sub.index}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "method"
    return df


def _missing_folds(row: pd.Series) -> str:
    """`` (3 of 5 folds)`` where a metric failed on some folds (its mean is over the others)."""
    n, rows = int(row["n"]), int(row.get("n_rows", row["n"]))
    return f" ({n} of {rows} folds)" if 0 < n < rows else ""


def pattern_check(results: pd.DataFrame) -> list[str]:
    """Sentences checking the aMEDL paper's pattern on the fold means: RE batch ASW
    above PCA's and AE's, FE batch ASW below both, FE label ASW against PCA's;
    and FE's scIB total against Harmony's and scVI's (both totals: one k-means
    run, and the k-means-averaged one)."""
    mean = results.groupby("method", sort=False)[["batch_asw", "label_asw"]].mean()
    refs = [r for r in ("PCA", "AE") if r in mean.index]
    if not refs:
        return []
    ref_txt = " and ".join(f"{r} {mean.loc[r, 'batch_asw']:+.3f}" for r in refs)
    out = []
    for name, sign, want in (("aMEDL-RE", 1, "above"), ("aMEDL-FE", -1, "below")):
        if name in mean.index:
            v = mean.loc[name, "batch_asw"]
            margin = min(sign * (v - mean.loc[r, "batch_asw"]) for r in refs)
            out.append(f"{name[-2:]} batch ASW {v:+.3f} vs {ref_txt}: "
                       + ("" if margin > 0 else "NOT ") + f"{want} {'both' if len(refs) > 1 else 'it'}"
                       + f" (margin {margin:+.3f})")
    if "aMEDL-FE" in mean.index and "PCA" in mean.index:
        fe, pca = mean.loc["aMEDL-FE", "label_asw"], mean.loc["PCA", "label_asw"]
        out.append(f"FE label ASW {fe:+.3f} vs PCA {pca:+.3f} (difference {fe - pca:+.3f})")
    out += _total_comparisons(results)
    return out


def _total_comparisons(results: pd.DataFrame) -> list[str]:
    """FE's scIB total against each of :data:`INTEGRATION_BASELINES` that ran."""
    out = []
    for col, how in (("scib_total", "scIB total"), ("scib_total_kmeans_mean", f"scIB total ({KMEANS_INITS} k-means)")):
        if col not in results.columns:
            continue
        mean = results.groupby("method", sort=False)[col].mean()
        refs = [r for r in INTEGRATION_BASELINES if r in mean.index and np.isfinite(mean[r])]
        if "aMEDL-FE" not in mean.index or not np.isfinite(mean["aMEDL-FE"]) or not refs:
            continue
        fe = mean["aMEDL-FE"]
        closest = min(refs, key=lambda r: fe - mean[r])
        margin = fe - mean[closest]
        diff, ci = _paired_difference(results, col, "aMEDL-FE", closest)
        paired = ""
        if np.isfinite(ci):
            paired = (f"; FE − {closest} paired over folds {diff:+.3f} ± {ci:.3f} (95% CI)"
                      + (": a tie within the folds' spread" if abs(diff) <= ci else ""))
        out.append(f"FE {how} {fe:.3f} vs " + " and ".join(f"{r} {mean[r]:.3f}" for r in refs) + ": "
                   + ("at least " if margin >= 0 else "NOT at least ") + ("both" if len(refs) > 1 else "it")
                   + f" (margin {margin:+.3f}{paired})")
    return out


def _paired_difference(results: pd.DataFrame, col: str, a: str, b: str) -> tuple[float, float]:
    """Mean and 95% half-width (Student t) of method ``a``'s ``col`` minus ``b``'s, fold by fold."""
    wide = results.pivot_table(index=_fold_keys(results), columns="method", values=col, aggfunc="first")
    d = (wide[a] - wide[b]).dropna().to_numpy(dtype=float)
    return (float(d.mean()) if d.size else float("nan")), _t95(d)


def training_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per aMEDL network: epochs run, validation reconstruction loss (each network's own: the negative
    binomial's negative log-likelihood per value, or the mean squared error on scaled expression) and
    batch accuracy at the kept epoch, mean ± CI over folds."""
    rows = {}
    for kind, label, acc in (("ae", "AE", None), ("fe", "FE (adversary)", "fe_val_adv_acc"),
                             ("re", "RE (classifier)", "re_val_cls_acc")):
        if f"{kind}_epochs" in results.columns:
            rows[label] = {"epochs": _fmt(*_fold_mean(results, f"{kind}_epochs"), 0),
                           "validation reconstruction loss": _fmt(*_fold_mean(results, f"{kind}_val_recon"), 3),
                           "validation batch accuracy": _fmt(*_fold_mean(results, acc), 3)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "network"
    return df


def _setup_sentence(results: pd.DataFrame, meta: dict) -> str:
    folds = int(meta.get("folds", results["fold"].nunique()))
    seeds = _seeds_of(results)
    seed_txt = (f"seeds {', '.join(str(s) for s in seeds)} (the cross-validation repeated once per seed; means over "
                "every seed × fold)" if len(seeds) > 1 else f"seed {meta.get('seed')}")
    threads = f"{meta['threads']} threads" if meta.get("threads") else f"{os.cpu_count()} cores"
    cpu = f" (CPU time {meta['cpu_s']:.0f} s, {threads})" if meta.get("cpu_s") else ""
    return (f"{meta.get('n_cells')} cells × {meta.get('n_genes')} genes; batch `{meta.get('batch_key')}` "
            f"({meta.get('n_batches')} levels), label `{meta.get('label_key')}` ({meta.get('n_labels')} levels); "
            + (f"{folds}-fold cross-validation stratified on batch × label, scores on held-out cells, "
               "mean ± 95% CI over folds" if folds > 1 else "fitted and scored on all cells")
            + _scored_text(results, meta)
            + f"; {seed_txt}; preset `{meta.get('preset')}`"
            + (f"; max_epochs {meta['max_epochs']}" if meta.get("max_epochs") else "")
            + (f"; wall time {meta['wall_s']:.0f} s{cpu}" if meta.get("wall_s") else "") + ".")


def _scored_text(results: pd.DataFrame, meta: dict) -> str:
    """Where the scores come from a subsample of the held-out cells (``max_cells``), how large."""
    if "n_scored" not in results.columns or not (results["n_scored"] < results["n_test"]).any():
        return ""
    return (f" (each fold scored on a seeded subsample of at most {meta.get('max_cells') or results['n_scored'].max()} "
            "of its held-out cells, stratified by batch: column n_scored of results.csv)")


def sections(results: pd.DataFrame, meta: dict) -> list[dict]:
    """The report's sections, each ``{"title", "note", "table", "items"}``: the one
    source of its text, rendered by :func:`summary_markdown` and :func:`write_report`."""
    summ = summarize(results)
    out = [{"title": "The aMEDL paper's metrics", "table": _wide(summ, PAPER_COLUMNS), "note":
            "ASW: raw silhouette width on the latent (−1..1). A batch-invariant latent (aMEDL-FE) wants a low batch "
            "ASW and a high label ASW; aMEDL-RE is meant to keep batches apart (high batch ASW). 1/DB: inverse "
            "Davies–Bouldin; CH: Calinski–Harabasz (higher = groups more separated). same-batch nbrs: the mean "
            "fraction of a cell's 15 nearest neighbours in the latent that come from its own batch; (mixed): that "
            "fraction were the batches perfectly mixed (a batch-invariant latent scores near it, one that keeps "
            "batches apart near 1); label purity: the mean fraction of the 15 neighbours that share the cell's "
            "label."}]
    if meta.get("scib") and "scib_total" in results.columns:
        out.append({"title": "scIB metrics (scib-metrics)", "table": _wide(summ, SCIB_COLUMNS), "note":
                    "All in 0..1, higher is better, not min-max scaled; total = 0.4 × batch correction + 0.6 × bio "
                    "conservation. PCR comparison is against the PCA of the model input, so PCA scores 0 on it by "
                    "construction. aMEDL-RE is meant to keep batch information: a low batch-correction score is its "
                    "intended behaviour, not a failure. NMI / ARI are scib-metrics' (one k-means run); the columns "
                    f"marked ({KMEANS_INITS} k-means) average them over {KMEANS_INITS} k-means runs, and their total "
                    "uses those averages: on a few hundred cells the one run alone moves NMI / ARI by a few "
                    "hundredths, so two totals closer than that are a tie."})
    if len(_seeds_of(results)) > 1:
        scib_cols = "scib_total" in results.columns
        out.append({"title": "Per seed", "table": per_seed_table(results), "note":
                    "Fold means for each seed of the run: "
                    + (f"scIB total, one k-means run / averaged over {KMEANS_INITS} k-means runs"
                       if scib_cols and "scib_total_kmeans_mean" in results.columns else
                       "scIB total" if scib_cols else "batch ASW / label ASW")
                    + ". A seed draws the folds (so the scorer's k-means runs see other held-out cells) and the "
                    "models' initialisation anew: the spread between seeds is what a comparison of two methods has "
                    "to exceed."})
    out.append({"title": "Timing", "table": _wide(summ, TIMING_COLUMNS), "note":
                "Seconds per fold. fit: the aMEDL preprocessing plus what the method trains (one aMEDL model per "
                "fold is shared by PCA, AE, FE, RE and Harmony's input PCA); embed: computing the latent; score: "
                "the metrics (the first method scored also pays their one-off compilation, tens of seconds)."})
    tr = training_table(results)
    if len(tr):
        out.append({"title": "Training record of the aMEDL networks", "table": tr, "note":
                    "At the epoch whose weights were kept (early stopping on the validation loss); validation cells "
                    "are from the training folds. Batch accuracy: the FE adversary should be near chance "
                    f"({_fmt(*_fold_mean(results, 'chance_acc'), 3)}), the RE batch classifier high."})
    for title, items in (("Notes", meta.get("notes") or []), ("The paper's pattern", pattern_check(results)),
                         ("Methods", [f"**{k}**: {v}" for k, v in (meta.get("descriptions") or {}).items()])):
        if items:
            out.append({"title": title, "items": list(items)})
    return out


def _md_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join([df.index.name or ""] + list(df.columns)) + " |",
             "| " + " | ".join(["---"] + ["---:"] * len(df.columns)) + " |"]
    lines += ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in df.iterrows()]
    return "\n".join(lines)


def summary_markdown(results: pd.DataFrame, meta: dict) -> str:
    """The ``summary.md`` text."""
    lines = [f"# {meta.get('title', 'amedl benchmark')}", ""]
    if meta.get("command"):
        lines += ["```", meta["command"], "```", ""]
    lines += [_setup_sentence(results, meta), ""]
    for sec in sections(results, meta):
        lines += [f"## {sec['title']}", ""]
        if sec.get("note"):
            lines += [sec["note"], ""]
        if sec.get("table") is not None and len(sec["table"].columns):
            lines += [_md_table(sec["table"]), ""]
        lines += [f"- {item}" for item in sec.get("items", [])] + ([""] if sec.get("items") else [])
    lines += [f"Software: {_versions()}.", ""]
    return "\n".join(lines)


def _html_text(text: str) -> str:
    """Markdown's ``code`` and **bold** as HTML, everything else escaped."""
    text = html.escape(text)
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", re.sub(r"`([^`]+)`", r"<code>\1</code>", text))


def write_report(path, results: pd.DataFrame, meta: dict, umap_path=None) -> None:
    """Write ``report.html``: one self-contained page (tables, the UMAP figure embedded, per-fold results)."""
    body = [f"<p>{_html_text(_setup_sentence(results, meta))}</p>"]
    if meta.get("command"):
        body.append(f"<pre>{html.escape(meta['command'])}</pre>")
    for sec in sections(results, meta):
        body.append(f"<h2>{html.escape(sec['title'])}</h2>")
        if sec.get("note"):
            body.append(f"<p class='note'>{_html_text(sec['note'])}</p>")
        if sec.get("table") is not None and len(sec["table"].columns):
            body.append(sec["table"].reset_index().to_html(index=False, border=0))
        if sec.get("items"):
            body.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in sec["items"]) + "</ul>")
    if umap_path is not None and Path(umap_path).exists():
        png = base64.b64encode(Path(umap_path).read_bytes()).decode("ascii")
        body += ["<h2>UMAPs</h2>", f"<p class='note'>{html.escape(meta.get('umap_caption', ''))}; left: coloured "
                 "by batch, right: by label.</p>", f"<img alt='UMAP panels' src='data:image/png;base64,{png}'>"]
    body += ["<details><summary>Per-fold results (results.csv)</summary>",
             results.to_html(index=False, float_format=lambda v: f"{v:.4g}"), "</details>"]
    page = Template((files(__package__) / "report.html").read_text(encoding="utf-8")).substitute(
        title=html.escape(meta.get("title", "amedl benchmark")), body="\n".join(body),
        footer=html.escape(f"Generated {_dt.datetime.now().isoformat(timespec='seconds')} on {platform.platform()} "
                           f"with {_versions()}."))
    with atomic_open(path) as fh:
        fh.write(page)


def _versions() -> str:
    """The versions of amedl (with its git commit, when run from a checkout) and of the libraries it scores with."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("amedl", "torch", "scanpy", "scikit-learn", "scib-metrics", "harmonypy", "scvi-tools"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{pkg} {version(pkg)}" + (_source_commit() if pkg == "amedl" else ""))
    return ", ".join(out)


def _source_commit() -> str:
    """`` (commit abc1234)`` (``+ changes`` when the checkout differs from it) for amedl run from a git
    checkout, else ''."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        git = lambda *a: subprocess.run(["git", "-C", str(here), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short", "HEAD")
        changed = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (commit {commit}{' + changes' if changed else ''})"
