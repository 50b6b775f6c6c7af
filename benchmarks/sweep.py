"""Many aMEDL settings x datasets x folds in parallel processes, scored afterwards.

``benchmarks/tune_integration.py`` runs one setting at a time; this script
spreads the fits over worker processes (one thread each) and keeps the
embedding apart from the scoring, so that the fits can run on a machine with
many cores and the scoring wherever scib-metrics is installed:

    # fit: one .npz per (setting, dataset, fold) with the held-out cells' latent
    .venv/bin/python benchmarks/sweep.py embed --settings settings.json --folds 0,1,2,3,4 \\
        --jobs 2 --dir /tmp/sweep
    # score every .npz not yet scored (one JSON line each, as tune_integration writes)
    .venv/bin/python benchmarks/sweep.py score --dir /tmp/sweep --out /tmp/sweep.jsonl
    .venv/bin/python benchmarks/tune_integration.py --table --out /tmp/sweep.jsonl

Each scored row also carries ``scib_total_kmeans_mean``: the total with k-means
NMI / ARI averaged over 20 initialisations (scib-metrics clusters once), the
steadier figure for choosing between settings; ``rescore`` adds it to rows
scored before it existed.

``settings.json`` maps a name to AMEDLConfig overrides, e.g.
``{"default": {}, "gain10": {"fe_adv_lead_gain": 10}}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tune_integration as tune  # noqa: E402


def _job_path(out_dir: Path, name: str, dataset: str, fold: int, seed: int) -> Path:
    return out_dir / f"{name}__{dataset}__{fold}__{seed}.npz"


def _fit_one(name: str, settings: dict, dataset: str, fold: int, seed: int, data_dir: str, out_dir: str, kind: str) -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    adata, batch_key, label_key = tune.load(dataset, data_dir)
    batch = adata.obs[batch_key].astype(str).to_numpy()
    labels = adata.obs[label_key].astype(str).to_numpy()
    tr, te = tune.folds(batch, labels)[fold]
    t0 = time.perf_counter()
    z, info = tune.embed(kind, adata, tr, te, batch_key, dict(settings), seed=seed + fold,
                         n_latent=tune.latent_size(settings))
    info["seconds"] = time.perf_counter() - t0
    path = _job_path(Path(out_dir), name, dataset, fold, seed)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, latent=np.asarray(z, dtype=np.float32), test=te,
             meta=json.dumps({"name": name, "settings": settings, "dataset": dataset, "fold": fold, "seed": seed,
                              "method": kind, "info": {k: v for k, v in info.items()
                                                       if isinstance(v, (int, float, bool, str))}}))
    os.replace(tmp, path)
    return f"{name} {dataset} fold {fold}: {info['seconds']:.0f}s"


def embed_all(args) -> None:
    settings = json.loads(Path(args.settings).read_text()) if os.path.exists(args.settings) else json.loads(args.settings)
    out_dir = Path(args.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(name, s, d, int(f), args.seed) for name, s in settings.items() for f in args.folds.split(",")
            for d in args.datasets.split(",")]
    jobs = [j for j in jobs if not _job_path(out_dir, j[0], j[2], j[3], j[4]).exists()]
    # the slowest datasets first, so that the pool ends together
    order = {"cellbench": 0, "kang": 1, "symphony": 2}
    jobs.sort(key=lambda j: (order.get(j[2], 3), j[3]))
    print(f"{len(jobs)} fits on {args.jobs} workers", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_fit_one, *j, args.data_dir, str(out_dir), args.method) for j in jobs]
        for fut in as_completed(futures):
            try:
                print(f"[{time.perf_counter() - t0:6.0f}s] {fut.result()}", flush=True)
            except Exception as e:  # keep the others going
                print(f"failed: {e!r}", flush=True)


def score_all(args) -> None:
    import amedl
    from amedl.baselines import pca_latent

    warnings.filterwarnings("ignore")
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                d = json.loads(line)
                if "file" in d:
                    done.add(d["file"])
    cache: dict = {}
    for path in sorted(Path(args.dir).glob("*.npz")):
        if path.name in done or path.name.endswith(".tmp.npz"):
            continue
        with np.load(path) as f:
            z, te, meta = f["latent"], f["test"], json.loads(str(f["meta"]))
        ds, fold = meta["dataset"], meta["fold"]
        if ds not in cache:
            cache[ds] = tune.load(ds, args.data_dir)
        adata, batch_key, label_key = cache[ds]
        batch = adata.obs[batch_key].astype(str).to_numpy()
        labels = adata.obs[label_key].astype(str).to_numpy()
        tr, te2 = tune.folds(batch, labels)[fold]
        assert np.array_equal(te, te2)
        key = (ds, fold, z.shape[1])
        if key not in cache:
            cache[key] = pca_latent(amedl.AMEDL(adata[tr].copy(), batch_key, n_latent=z.shape[1]), adata[te])
        row = {"dataset": ds, "fold": fold, "method": meta["method"], "name": meta["name"], "settings": meta["settings"],
               "seed": meta["seed"], "file": path.name, **tune.score(z, batch[te], labels[te], cache[key]),
               **{f"info_{k}": v for k, v in meta["info"].items()}}
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{ds:9s} fold {fold} {row['name']:>24s}: batch ASW {row['batch_asw']:+.3f} label ASW {row['label_asw']:+.3f}"
              f" | batch {row['batch_correction']:.3f} bio {row['bio_conservation']:.3f} total {row['scib_total']:.3f}",
              flush=True)


def rescore_all(args) -> None:
    """Add the k-means-averaged NMI / ARI (``amedl.metrics.kmeans_mean_scores``) to
    the rows of ``--out`` scored before it existed, from their ``.npz`` in ``--dir``."""
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    cache: dict = {}
    added = 0
    from amedl import metrics

    for row in rows:
        path = Path(args.dir) / row.get("file", "")
        if "scib_total_kmeans_mean" in row or not path.is_file():
            continue
        if row["dataset"] not in cache:
            adata, _, label_key = tune.load(row["dataset"], args.data_dir)
            cache[row["dataset"]] = adata.obs[label_key].astype(str).to_numpy()
        with np.load(path) as f:
            z, te = f["latent"], f["test"]
        row.update(metrics.kmeans_mean_scores(z, cache[row["dataset"]][te], row))
        added += 1
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out)
    print(f"added the k-means average to {added} rows", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--settings", required=True, help="a JSON file or string: {name: {setting: value}}")
    e.add_argument("--datasets", default=",".join(tune.DATASETS))
    e.add_argument("--folds", default="0,1,2,3,4")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--jobs", type=int, default=2)
    e.add_argument("--method", default="fe")
    e.add_argument("--dir", required=True)
    e.add_argument("--data-dir", default=os.environ.get("AMEDL_TEST_DATA", "../shared/data"))
    s = sub.add_parser("score")
    s.add_argument("--dir", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data-dir", default=os.environ.get("AMEDL_TEST_DATA", "../shared/data"))
    r = sub.add_parser("rescore", help="add the k-means-averaged NMI / ARI to rows scored without it")
    r.add_argument("--dir", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--data-dir", default=os.environ.get("AMEDL_TEST_DATA", "../shared/data"))
    args = p.parse_args(argv)
    {"embed": embed_all, "score": score_all, "rescore": rescore_all}[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
