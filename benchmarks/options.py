"""Training-speed options measured on this machine: minibatch size, torch.compile
and a sparse first layer (issue 6). Prints training cells/s per option.

Run (not a test), on simulated data cached by ``speed.py``:

    .venv/bin/python benchmarks/options.py --cells 100000 --out /tmp/options.json

- **minibatch size**: FE and RE cells/s at 256 (default), 512 and 1024 cells;
- **torch.compile**: FE and RE cells/s at 256 with the networks compiled
  (the compile time is reported apart);
- **sparse first layer**: the first encoder layer alone, forward and backward,
  dense ``x @ W`` against ``torch.sparse.mm`` on the CSR minibatch (z-scoring
  folded into the weights so that the input stays sparse).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _cells_per_s(model, kind: str, batch_size: int, n_cells: int, ctx, compile_: bool = False) -> dict:
    from amedl.data import make_loader
    from amedl.train import NETWORKS

    network = NETWORKS[kind]
    torch.manual_seed(0)
    modules = model._build(kind)
    if compile_:
        for sub in modules.modules():  # in place, so that the plan's calls (encode, decode, ...) stay as they are
            sub.compile()
    trainer = network.plan(modules, model.config, ctx)
    library = model._library if network.needs_counts(model.config) else None  # counts for the NB decoder
    rows = np.random.default_rng(0).permutation(model._X.shape[0])
    warm = make_loader(model._X, model._codes, model.prep, rows=rows[: batch_size * 5], batch_size=batch_size,
                       library=library)
    t0 = time.perf_counter()
    trainer.train_epoch(warm)  # first steps: allocation, and compilation when asked
    warm_s = time.perf_counter() - t0
    loader = make_loader(model._X, model._codes, model.prep, rows=rows[:n_cells], batch_size=batch_size, shuffle=True,
                         rng=np.random.default_rng(1), library=library)
    t0 = time.perf_counter()
    trainer.train_epoch(loader)
    s = time.perf_counter() - t0
    return {"cells_per_s": min(n_cells, len(rows)) / s, "warmup_s": warm_s}  # no more cells than the data hold


def _first_layer(model, batch_size: int, repeats: int = 50) -> dict:
    """Forward + backward of the first encoder layer: dense input against a sparse CSR input."""
    X = model._X[:batch_size]
    n_genes, width = X.shape[1], model.config.hidden[0]
    W = torch.randn(n_genes, width, requires_grad=True)
    dense = torch.from_numpy(model.prep.scale_dense(X.toarray()))
    inv = torch.from_numpy(1.0 / model.prep.scale)
    sparse = torch.sparse_csr_tensor(torch.from_numpy(X.indptr.astype(np.int64)), torch.from_numpy(X.indices.astype(np.int64)),
                                     torch.from_numpy(X.data), size=X.shape)
    center = torch.from_numpy(model.prep.center)

    def dense_step():
        (dense @ W).sum().backward()

    def sparse_step():
        Ws = W * inv[:, None]  # (x - c)/s @ W = x @ (W/s) - (c/s) @ W
        (torch.sparse.mm(sparse, Ws) - (center @ Ws)).sum().backward()

    out = {}
    for name, step in (("dense", dense_step), ("sparse", sparse_step)):
        step()
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        out[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0) / repeats
    out["density"] = X.nnz / (X.shape[0] * X.shape[1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=100_000, help="size of the simulated dataset (cached by speed.py)")
    p.add_argument("--cache", default="/tmp/amedl-speed-data")
    p.add_argument("--steps-cells", type=int, default=20_480, help="cells trained per measurement")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    import anndata as ad

    import amedl

    sys.path.insert(0, str(Path(__file__).parent))
    from speed import simulate_to

    path = Path(args.cache) / f"sim_{args.cells}x2000_b20_s0.h5ad"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        simulate_to(path, args.cells, 2000, 20, 0)
    model = amedl.AMEDL(ad.read_h5ad(path), "batch", n_top_genes=None, device="cpu")
    results = {"torch_threads": torch.get_num_threads(), "cells": args.cells, "batch_size": {}, "compile": {}}
    for kind in ("fe", "re"):
        ctx = model._plan_context(kind, np.arange(model._X.shape[0]), 0)  # as AMEDL.fit, on all cells
        for bs in (256, 512, 1024):
            r = _cells_per_s(model, kind, bs, args.steps_cells, ctx)
            results["batch_size"][f"{kind}_{bs}"] = r
            print(f"{kind.upper()} minibatch {bs}: {r['cells_per_s']:,.0f} cells/s", flush=True)
        if not args.no_compile:
            try:
                r = _cells_per_s(model, kind, 256, args.steps_cells, ctx, compile_=True)
                results["compile"][kind] = r
                print(f"{kind.upper()} torch.compile, minibatch 256: {r['cells_per_s']:,.0f} cells/s "
                      f"(first 5 steps with compilation {r['warmup_s']:.0f}s)", flush=True)
            except Exception as exc:  # no compiler, or an unsupported op
                results["compile"][kind] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                print(f"{kind.upper()} torch.compile failed: {results['compile'][kind]['error']}", flush=True)
    results["first_layer"] = _first_layer(model, 256)
    fl = results["first_layer"]
    print(f"first layer fwd+bwd, 256 cells (density {fl['density']:.3f}): dense {fl['dense_ms']:.2f} ms, "
          f"sparse {fl['sparse_ms']:.2f} ms", flush=True)
    if args.out:
        from amedl._utils import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
