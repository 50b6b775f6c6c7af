"""Scaling benchmarks (prints figures; not a test).

    # an .h5ad of N cells written in chunks (never held in memory)
    python benchmarks/scale.py write --cells 10000000 --path /tmp/amedl-scale/c1e7.h5ad
    # preprocessing and a fixed number of training steps, in memory or from disk, with peak RSS
    python benchmarks/scale.py train --path /tmp/amedl-scale/c1e7.h5ad --backed --steps 200
    # 1 vs 2 gloo processes: fit time per process and the latents' silhouettes (amedl fit --nproc)
    python benchmarks/scale.py ddp --cells 20000 --nproc 2 --epochs 4

The written data are sparse counts with cell types and batches (marker genes per
type, a gene-wise factor per batch), drawn directly in sparse form so that
10^7 cells take minutes; `amedl.datasets.simulate` is the realistic simulator
used for the quality comparison of `ddp`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write(path: str, n_cells: int, n_genes: int = 2000, nnz_per_cell: int = 60, n_batches: int = 20,
          n_types: int = 10, chunk: int = 200_000, seed: int = 0) -> None:
    """Sparse simulated counts written chunk by chunk as an anndata CSR .h5ad."""
    import anndata as ad
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    base = rng.dirichlet(np.full(n_genes, 0.3))
    markers = rng.integers(0, n_genes, (n_types, n_genes // 20))
    batch_factor = rng.lognormal(0, 0.5, (n_batches, n_genes))
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        X = f.create_group("X")
        X.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = X.create_dataset("data", (0,), "float32", maxshape=(None,), chunks=(1 << 20,))
        indices = X.create_dataset("indices", (0,), "int32", maxshape=(None,), chunks=(1 << 20,))
        indptr = X.create_dataset("indptr", (n_cells + 1,), "int64")
        indptr[0] = 0
        total = 0
        for lo in range(0, n_cells, chunk):
            hi = min(lo + chunk, n_cells)
            n = hi - lo
            p = np.stack([base * batch_factor[b] for b in range(n_batches)])  # per batch gene weights
            cols = np.empty((n, nnz_per_cell), np.int64)
            for b in range(n_batches):
                cells = np.flatnonzero(batches[lo:hi] == b)
                w = p[b] / p[b].sum()
                cols[cells] = rng.choice(n_genes, (len(cells), nnz_per_cell), p=w)
            is_marker = rng.random((n, nnz_per_cell)) < 0.3  # a third of each cell's genes are its type's markers
            cols[is_marker] = markers[types[lo:hi][np.nonzero(is_marker)[0]], rng.integers(0, markers.shape[1], is_marker.sum())]
            cols.sort(axis=1)
            keep = np.ones_like(cols, bool)
            keep[:, 1:] = cols[:, 1:] != cols[:, :-1]
            vals = (rng.poisson(2.0, cols.shape) + 1).astype(np.float32)
            row_nnz = keep.sum(1)
            d, i = vals[keep], cols[keep].astype(np.int32)
            data.resize((total + len(d),))
            indices.resize((total + len(d),))
            data[total:], indices[total:] = d, i
            indptr[lo + 1 : hi + 1] = total + np.cumsum(row_nnz)
            total += len(d)
        obs = pd.DataFrame({"batch": pd.Categorical([f"b{b}" for b in batches]),
                            "cell_type": pd.Categorical([f"t{t}" for t in types])},
                           index=pd.Index([f"c{i}" for i in range(n_cells)]))
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            ad.io.write_elem(f, key, {})
    print(json.dumps({"written": path, "cells": n_cells, "genes": n_genes, "nnz": int(total),
                      "GiB": round(os.path.getsize(path) / 2**30, 2), "peak_rss_gib": round(_rss_gib(), 2)}))


def train(path: str, backed: bool, steps: int, threads: int, kinds=("fe", "re"), **settings) -> dict:
    """Preprocess ``path`` (in memory or from disk), then time ``steps`` training steps of each network."""
    import anndata as ad
    import torch

    import amedl
    from amedl.data import make_loader
    from amedl.train import NETWORKS

    torch.set_num_threads(threads)
    rec = {"path": path, "mode": "backed" if backed else "memory", "steps": steps, "threads": threads}
    t = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    rec.update(read_s=round(time.perf_counter() - t, 1), rss_after_read=round(_rss_gib(), 2), cells=adata.n_obs)
    t = time.perf_counter()
    m = amedl.AMEDL(adata, "batch", threads=threads, **settings)
    rec.update(preprocess_s=round(time.perf_counter() - t, 1), rss_after_preprocess=round(_rss_gib(), 2))
    c, prep = m.config, m.prep
    train_idx, _ = m._split(0)
    for kind in kinds:
        net = NETWORKS[kind]
        t = time.perf_counter()
        ctx = m._plan_context(kind, train_idx, 0)  # as AMEDL.fit (FE: with the training cells' reference PCA)
        if ctx.reference is not None:
            rec["reference_pca_s"] = round(time.perf_counter() - t, 1)
        modules = net.build(c, prep)
        plan = net.plan(modules, c, ctx)
        loader = make_loader(m._X, m._codes, prep, rows=train_idx, batch_size=c.batch_size, shuffle=True,
                             rng=np.random.default_rng(0), library=m._library if net.needs_counts(c) else None,
                             blocks=(c.block_size, c.buffer_blocks))
        it = iter(loader)
        plan.train_epoch(itertools.islice(it, 5))  # warm-up (allocations, first reads)
        t = time.perf_counter()
        plan.train_epoch(itertools.islice(it, steps))
        sec = time.perf_counter() - t
        cps = steps * c.batch_size / sec
        rec[kind] = {"cells_per_s": round(cps), "projected_epoch_s": round(len(train_idx) / cps)}
    rec["peak_rss_gib"] = round(_rss_gib(), 2)
    print(json.dumps(rec))
    return rec


def ddp(n_cells: int, nproc: int, epochs: int, threads: int) -> None:
    """``amedl fit --nproc`` on ``amedl.datasets.simulate`` data: fit seconds and silhouettes."""
    import amedl

    tmp = Path(tempfile.mkdtemp(prefix="amedl-ddp-"))
    data = tmp / "sim.h5ad"
    amedl.datasets.simulate(n_cells=n_cells, n_genes=2000, n_batches=6, n_cell_types=8, seed=0).write_h5ad(data)
    cmd = [sys.executable, "-m", "amedl.cli", "fit", str(data), "--batch-key", "batch", "--label-key", "cell_type",
           "--out", str(tmp / "out.h5ad"), "--epochs", str(epochs), "--threads", str(threads), "--quiet",
           "--nproc", str(nproc)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    print(f"# {' '.join(cmd[2:])}  ({time.perf_counter() - t:.0f}s wall)")
    print("\n".join(line for line in out.stdout.splitlines() if line.startswith(("FE", "RE"))) or out.stderr[-2000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--cells", type=int, required=True)
    w.add_argument("--genes", type=int, default=2000)
    w.add_argument("--nnz-per-cell", type=int, default=60)
    w.add_argument("--path", required=True)
    t = sub.add_parser("train")
    t.add_argument("--path", required=True)
    t.add_argument("--backed", action="store_true")
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--block-size", type=int, default=None)
    d = sub.add_parser("ddp")
    d.add_argument("--cells", type=int, default=20_000)
    d.add_argument("--nproc", type=int, default=2)
    d.add_argument("--epochs", type=int, default=4)
    d.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.cmd == "write":
        write(a.path, a.cells, a.genes, a.nnz_per_cell)
    elif a.cmd == "train":
        settings = {"block_size": a.block_size} if a.block_size else {}
        train(a.path, a.backed, a.steps, a.threads, **settings)
    else:
        ddp(a.cells, a.nproc, a.epochs, a.threads)


if __name__ == "__main__":
    main()
