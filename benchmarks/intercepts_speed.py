"""Time `LatentIntercepts.fit` at its cell cap with scikit-learn's default
neighbour search (a tree) and with a brute-force one.

Latent-like cells are drawn around the cells of a shared dataset's 10-component
PCA of the model input (each cell jittered by its distance to its fifth
neighbour), which keeps the clusters and the few dominant directions of a
latent; random cells are unclustered Gaussians, the tree's worst case. Run (not
a test; one thread, an idle machine):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/intercepts_speed.py [--cells 50000]
"""
from __future__ import annotations

import argparse
import functools
import time
import warnings

import numpy as np
from sklearn.neighbors import NearestNeighbors

import amedl.intercepts as intercepts
from _shared import load_shared


def latent_like(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` cells drawn around the 10-component PCA of a shared dataset's model input."""
    import amedl
    from amedl.baselines import pca_latent

    adata, batch_key, _ = load_shared(name)
    z = pca_latent(amedl.AMEDL(adata, batch_key, threads=1), n_comps=10).astype(np.float64)
    spread = NearestNeighbors(n_neighbors=6).fit(z).kneighbors(z)[0][:, 5] / np.sqrt(z.shape[1])
    pick = rng.integers(0, len(z), n)
    return z[pick] + rng.normal(size=(n, z.shape[1])) * spread[pick, None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=intercepts.MAX_CELLS)
    p.add_argument("--batches", default="5,20", help="comma-separated numbers of batches")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    n, counts = args.cells, [int(b) for b in args.batches.split(",")]
    tree = intercepts._offsets_from
    print(f"LatentIntercepts.fit (neighbour offsets, 3 rounds, 10 clusters) on {n:,} cells of 10 dimensions, seconds")
    print("| cells | " + " | ".join(f"{b} batches: tree / brute" for b in counts) + " |")
    print("| --- |" + " ---: |" * len(counts))
    data = [("random", rng.normal(size=(n, 10)))]
    data += [(f"{name}-like", latent_like(name, n, rng)) for name in ("cellbench", "symphony")]
    try:
        for label, z in data:
            cells = []
            for b in counts:
                codes = rng.integers(0, b, n)
                times = []
                for search in (tree, functools.partial(tree, algorithm="brute")):
                    intercepts._offsets_from = search
                    t0 = time.perf_counter()
                    intercepts.LatentIntercepts.fit(z, codes, b, offsets="neighbours")
                    times.append(time.perf_counter() - t0)
                cells.append(f"{times[0]:.1f} / {times[1]:.1f}")
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    finally:
        intercepts._offsets_from = tree
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
