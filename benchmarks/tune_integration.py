"""Compare aMEDL settings against Harmony and scVI with the benchmark's scorer, on
held-out cells of the shared datasets (one or more of the 5 stratified folds).

Used to choose the default network (docs/tuning.md). Each run appends one JSON
line per dataset x fold x method to ``--out``; reference methods (PCA, Harmony,
scVI) are computed once and reused from that file. Example:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_integration.py \\
        --settings '{"likelihood": "nb"}' --name nb --folds 0

    .venv/bin/python benchmarks/tune_integration.py --table   # summary of the file
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

DATASETS = {
    "cellbench": ("cellbench_celseq2_dropseq.h5ad", "batch", "cell_line"),
    "symphony": ("symphony_pbmcs_small.h5ad", "donor", "cell_type"),
    "kang": ("muscat_kang_example.h5ad", "sample_id", "cluster_id"),
}
REFERENCES = ("pca", "harmony", "scvi")


def load(name: str, data_dir: str):
    import anndata as ad

    if name == "demo":
        from amedl.datasets import simulate
        from amedl.demo import DEMO_SIMULATION

        return simulate(seed=0, **DEMO_SIMULATION), "batch", "cell_type"
    if name.startswith("pseudo_"):
        adata, batch_key, label_key = load(name[len("pseudo_"):], data_dir)
        from amedl.datasets import pseudo_batches

        return pseudo_batches(adata, batch_key), "pseudo_batch", label_key
    file, batch_key, label_key = DATASETS[name]
    return ad.read_h5ad(Path(data_dir) / file), batch_key, label_key


def neighbour_mixing(latent, batch, labels, k: int = 15) -> dict:
    """Fraction of each cell's k nearest neighbours from its own batch (and the value
    for perfectly mixed batches) and the fraction sharing its label (purity)."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent, return_distance=False)[:, 1:]
    batch, labels = np.asarray(batch), np.asarray(labels)
    counts = pd.Series(batch).value_counts()
    n = len(batch)
    mixed = float(((counts * (counts - 1)) / (n - 1)).sum() / n)
    return {"same_batch": float((batch[idx] == batch[:, None]).mean()), "same_batch_mixed": mixed,
            "label_purity": float((labels[idx] == labels[:, None]).mean())}


def folds(batch, labels, k: int = 5, seed: int = 0):
    """The benchmark's own folds (``amedl benchmark``: fold f here is its fold f + 1)."""
    from amedl.benchmark.folds import stratified_folds

    return stratified_folds(batch, labels, k, seed)


def score(latent, batch, labels, unintegrated) -> dict:
    from amedl.metrics import evaluate_latent

    out = evaluate_latent(latent, batch, labels, scib=True, unintegrated=unintegrated, max_cells=None, seed=0)
    return {**out, **neighbour_mixing(latent, batch, labels)}


def latent_size(settings: dict) -> int:
    """The latent size of an aMEDL setting (the config's default unless it sets one): PCA,
    Harmony and scVI are compared at it."""
    from amedl import AMEDLConfig

    return int(settings.get("n_latent", AMEDLConfig().n_latent))


def embed(method: str, adata, tr, te, batch_key, settings: dict, seed: int, n_latent: int):
    """Latent of the held-out cells ``te`` (and train-time info)."""
    import amedl
    from amedl.baselines import pca_latent

    train = adata[tr].copy()
    info: dict = {}
    if method == "pca":
        m = amedl.AMEDL(train, batch_key, n_latent=n_latent)
        return pca_latent(m, adata[te]), info
    if method == "harmony":
        import harmonypy

        m = amedl.AMEDL(train, batch_key, n_latent=n_latent)
        pcs = np.asarray(pca_latent(m, adata), dtype=np.float64)
        meta = pd.DataFrame({"batch": adata.obs[batch_key].astype(str).to_numpy()})
        ho = harmonypy.run_harmony(pcs, meta, "batch", random_state=seed, verbose=False)
        z = np.asarray(ho.Z_corr)
        z = z if z.shape[0] == pcs.shape[0] else z.T
        return z[te], info
    if method == "scvi":
        import scvi

        m = amedl.AMEDL(train, batch_key)
        genes = m.genes
        scvi.settings.seed = seed
        sub = adata[tr, genes].copy()
        scvi.model.SCVI.setup_anndata(sub, batch_key=batch_key)
        model = scvi.model.SCVI(sub, n_latent=n_latent)
        model.train(enable_progress_bar=False)
        return np.asarray(model.get_latent_representation(adata[te, genes].copy())), info
    kind = {"fe": "fe", "re": "re", "ae": "ae"}[method]
    t0 = time.perf_counter()
    m = amedl.AMEDL(train, batch_key, **settings)
    m.fit(seed=seed, progress=False, kinds=(kind,))
    info = {**m.train_info[kind], "fit_s": time.perf_counter() - t0}
    best = m.history[kind].set_index("epoch").loc[info["best_epoch"]]
    info.update({k: float(v) for k, v in best.items() if k.startswith("val_")})
    return m.latent(adata[te], kind=kind), info


def run(args) -> None:
    import amedl
    from amedl.baselines import pca_latent

    out = Path(args.out)
    done = []
    if out.exists():
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    settings = json.loads(args.settings)
    methods = args.methods.split(",")
    n_latent = latent_size(settings)
    for name in args.datasets.split(","):
        adata, batch_key, label_key = load(name, args.data_dir)
        batch = adata.obs[batch_key].astype(str).to_numpy()
        labels = adata.obs[label_key].astype(str).to_numpy()
        splits = folds(batch, labels)
        for f in [int(x) for x in args.folds.split(",")]:
            tr, te = splits[f]
            unintegrated = None
            for method in methods:
                key = dict(dataset=name, fold=f, method=method)
                if method in REFERENCES and any(all(d.get(k) == v for k, v in key.items()) for d in done):
                    continue
                if unintegrated is None:
                    unintegrated = pca_latent(amedl.AMEDL(adata[tr].copy(), batch_key, n_latent=n_latent), adata[te])
                t0 = time.perf_counter()
                z, info = embed(method, adata, tr, te, batch_key, settings, seed=args.seed + f, n_latent=n_latent)
                row = {**key, "name": args.name if method not in REFERENCES else method,
                       "settings": settings if method not in REFERENCES else {}, "seed": args.seed,
                       "seconds": time.perf_counter() - t0, **score(z, batch[te], labels[te], unintegrated),
                       **{f"info_{k}": v for k, v in info.items() if isinstance(v, (int, float, bool))}}
                with out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                done.append(row)
                print(f"{name:9s} fold {f} {row['name']:>24s}: batch ASW {row['batch_asw']:+.3f} label ASW "
                      f"{row['label_asw']:+.3f} | batch {row['batch_correction']:.3f} bio {row['bio_conservation']:.3f} "
                      f"total {row['scib_total']:.3f} | {row['seconds']:.0f}s", flush=True)


def table(args) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    cols = ["scib_total", "scib_total_kmeans_mean", "batch_correction", "bio_conservation", "batch_asw", "label_asw", "same_batch", "same_batch_mixed", "label_purity"]
    g = df.groupby(["name", "dataset"])[[c for c in cols if c in df]].mean().round(3)
    wide = g["scib_total"].unstack("dataset")
    wide["mean"] = wide.mean(axis=1)
    print(g.to_string())
    print()
    print(wide.sort_values("mean").to_string())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.environ.get("AMEDL_TEST_DATA", "../shared/data"))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--folds", default="0", help="comma-separated fold indices (0-4)")
    p.add_argument("--methods", default="fe", help="fe, re, ae and references pca, harmony, scvi")
    p.add_argument("--settings", default="{}", help="JSON of AMEDLConfig overrides")
    p.add_argument("--name", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/amedl-tune.jsonl")
    p.add_argument("--table", action="store_true", help="print the summary of --out and exit")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.table:
        table(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
