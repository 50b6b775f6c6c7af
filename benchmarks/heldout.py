"""Held-out batches: how a trained model treats a batch it has never seen.

On each shared dataset every batch is held out in turn: the model is fitted on
the other batches (defaults, seed 0), then the held-out cells (the query) are

* reconstructed under **zero** random effects (the population-level decoder),
  the **predicted** mixture of the learned batches' effects (the
  batch-membership predictor) and **adapted** effects (:meth:`amedl.AMEDL.adapt`,
  every trained weight frozen): mean squared error of log1p CP10k over the
  model genes (the FE network's mixed-effects decoder; ``--kinds fe,re`` adds
  the RE network);
* embedded with the FE latent: the fraction of each query cell's 15 nearest
  neighbours (query and reference cells together) that are query cells, beside
  its perfectly mixed value, and the accuracy of transferring the reference's
  labels to the query by 15-nearest-neighbour vote; PCA fitted on the
  reference (same preprocessing) is the baseline of both.

Prints one table per dataset (and writes them all with ``--out``). Example::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/heldout.py --out docs/benchmark-results/heldout.md
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from _shared import load_shared
from amedl.benchmark.report import _md_table

DATASETS = ("cellbench", "symphony", "kang")


def _query_neighbours(ref: np.ndarray, query: np.ndarray, k: int = 15) -> tuple[float, float]:
    """Mean fraction of a query cell's ``k`` nearest neighbours that are query cells, and its mixed value."""
    from sklearn.neighbors import NearestNeighbors

    both = np.vstack([ref, query])
    nn = NearestNeighbors(n_neighbors=k + 1).fit(both)
    idx = nn.kneighbors(query, return_distance=False)[:, 1:]
    frac = float((idx >= len(ref)).mean())
    mixed = (len(query) - 1) / (len(both) - 1)
    return frac, mixed


def _transfer(ref: np.ndarray, ref_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray, k: int = 15) -> float:
    """kNN label-transfer accuracy on the query cells whose label the reference has."""
    from sklearn.neighbors import KNeighborsClassifier

    known = np.isin(query_labels, np.unique(ref_labels))
    if not known.any():
        return float("nan")
    clf = KNeighborsClassifier(n_neighbors=k).fit(ref, ref_labels)
    return float((clf.predict(query[known]) == query_labels[known]).mean())


def _mse(model, query, kind: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = model.reconstruct(query, kind=kind)
    return float(((r - model.prep.transform(query).toarray()) ** 2).mean())


def evaluate(name: str, kinds: tuple[str, ...], steps: int, max_holdouts: int | None, seed: int = 0) -> pd.DataFrame:
    import copy

    from sklearn.decomposition import PCA

    import amedl

    adata, batch_key, label_key = load_shared(name)
    batches = list(pd.Categorical(adata.obs[batch_key].astype(str)).categories)
    rows = []
    for held in batches[: max_holdouts or None]:
        is_query = (adata.obs[batch_key].astype(str) == held).to_numpy()
        ref, query = adata[~is_query].copy(), adata[is_query].copy()
        t = time.perf_counter()
        model = amedl.AMEDL(ref, batch_key, threads=1).fit(seed=seed, progress=False, kinds=kinds)
        fit_s = time.perf_counter() - t
        row = {"dataset": name, "held_out": held, "n_query": int(is_query.sum()), "n_reference": int((~is_query).sum()),
               "fit_s": round(fit_s, 1)}
        for kind in kinds:
            model.unseen_batches = "zero"
            row[f"{kind}_mse_zero"] = _mse(model, query, kind)
            model.unseen_batches = "predict"
            row[f"{kind}_mse_predicted"] = _mse(model, query, kind)
        t = time.perf_counter()
        adapted = copy.deepcopy(model).adapt(query, steps=steps, seed=seed)
        row["adapt_s"] = round(time.perf_counter() - t, 1)
        for kind in kinds:
            row[f"{kind}_mse_adapted"] = _mse(adapted, query, kind)
        # the adapted model: the query's batch has its latent intercepts (the reference's latents do not change)
        z_ref, z_query = adapted.latent(ref, kind="fe"), adapted.latent(query, kind="fe")
        pca = PCA(n_components=model.config.n_latent, random_state=0).fit(model.transform(ref))
        p_ref, p_query = pca.transform(model.transform(ref)), pca.transform(model.transform(query))
        row["fe_query_neighbours"], row["mixed_value"] = _query_neighbours(z_ref, z_query)
        row["pca_query_neighbours"], _ = _query_neighbours(p_ref, p_query)
        labels_ref, labels_query = ref.obs[label_key].astype(str).to_numpy(), query.obs[label_key].astype(str).to_numpy()
        row["fe_label_transfer"] = _transfer(z_ref, labels_ref, z_query, labels_query)
        row["pca_label_transfer"] = _transfer(p_ref, labels_ref, p_query, labels_query)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, kinds: tuple[str, ...]) -> str:
    cols = ["held_out", "n_query"]
    for kind in kinds:
        cols += [f"{kind}_mse_zero", f"{kind}_mse_predicted", f"{kind}_mse_adapted"]
    cols += ["adapt_s", "fe_query_neighbours", "pca_query_neighbours", "mixed_value", "fe_label_transfer", "pca_label_transfer"]
    out = []
    for name, t in table.groupby("dataset", sort=False):
        out.append(f"### {name}\n")
        out.append(_md_table(t[cols].round(3).set_index("held_out")))
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--kinds", default="fe", help="networks to fit and score (fe, or fe,re)")
    ap.add_argument("--steps", type=int, default=300, help="adaptation steps")
    ap.add_argument("--max-holdouts", type=int, default=None, help="hold out only the first N batches of each dataset")
    ap.add_argument("--out", type=Path, help="write the tables as markdown")
    args = ap.parse_args()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    tables = [evaluate(n.strip(), kinds, args.steps, args.max_holdouts) for n in args.datasets.split(",")]
    table = pd.concat(tables, ignore_index=True)
    text = markdown(table, kinds)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
