"""``amedl demo``: aMEDL on the embedded simulator, next to PCA and a plain autoencoder.

Simulates counts with known cell types and batch effects
(:func:`amedl.datasets.simulate`), fits one :class:`amedl.AMEDL` model (the
plain autoencoder, the fixed-effects and the random-effects networks on the
same preprocessing), prints the batch and cell-type silhouettes of PCA, AE,
FE and RE, and writes ``umap.png``, ``summary.md``, ``results.csv`` and
``report.html`` into the output folder.
"""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pandas as pd

__all__ = ["run_demo", "DEMO_SIMULATION", "demo_table"]

#: The demo's simulation: small enough for a few minutes on 2 CPU cores; two
#: continuous cell states give structure within each cell type, and the batch
#: effect is sized like those of the shared real datasets (PCA batch ASW about
#: 0.05 and about twice the perfectly mixed same-batch-neighbour fraction, as on
#: the Kang PBMCs); the simulator's defaults are several times stronger.
DEMO_SIMULATION = dict(
    n_cells=1200, n_genes=1000, n_batches=3, n_cell_types=5, n_states=2, state_lfc=0.5, batch_gene_sd=0.2, batch_program_lfc=1.0
)
#: Methods shown by the demo, in display order.
DEMO_METHODS = ("PCA", "AE", "aMEDL-FE", "aMEDL-RE")


def demo_table(results: pd.DataFrame) -> str:
    """A plain-text table per method: the fraction of each cell's 15 nearest
    neighbours from its own batch (beside the perfectly mixed value) and from its
    own cell type, batch and cell-type silhouettes, with a short reading guide."""
    df = results.set_index("method")
    mixed = float(df["same_batch_mixed"].iloc[0])
    lines = [
        f"{'method':<10} {'same-batch neighbours':>22} {'cell-type purity':>17} {'batch ASW':>10} {'cell-type ASW':>14}",
        f"{'-' * 10} {'-' * 22} {'-' * 17} {'-' * 10} {'-' * 14}",
    ]
    for meth, row in df.iterrows():
        lines.append(
            f"{meth:<10} {row['same_batch_neighbours']:>22.2f} {row['label_purity']:>17.2f} "
            f"{row['batch_asw']:>+10.3f} {row['label_asw']:>+14.3f}"
        )
    lines.append(
        f"same-batch neighbours: of each cell's 15 nearest neighbours, the fraction from its own batch; "
        f"{mixed:.2f} = batches perfectly mixed, 1 = batches apart."
    )
    lines.append("FE should be near the mixed value (batch removed) and RE near 1 (batch kept), both with high purity;")
    lines.append("cell-type purity: the fraction of neighbours of the same cell type (1 = cell types kept apart).")
    return "\n".join(lines)


def _command(out_dir, seed: int, max_epochs, scib: bool, simulate_kwargs: dict) -> str:
    """The command that reproduces a demo run (Python's call where the command line has no flag for a setting)."""
    import torch

    threads = torch.get_num_threads()  # results are bit-identical for a seed *and* a thread count
    if max_epochs is None and not scib and not simulate_kwargs:
        return " ".join(["amedl demo --out-dir", shlex.quote(str(out_dir))] + ([f"--seed {seed}"] if seed else [])
                        + [f"--threads {threads}"])
    extra = "".join(f", {k}={v!r}" for k, v in {"max_epochs": max_epochs, "scib": scib or None, **simulate_kwargs}.items()
                    if v is not None)
    return f"amedl.demo.run_demo({str(out_dir)!r}, seed={seed}{extra}) with {threads} torch thread(s)"


def run_demo(out_dir="amedl-demo", seed: int = 0, progress: bool = True, *, max_epochs: int | None = None,
             scib: bool = False, **simulate_kwargs) -> pd.DataFrame:
    """Run the demo and return its results table (one row per method).

    Parameters
    ----------
    out_dir
        Folder for ``umap.png``, ``report.html``, ``summary.md`` and
        ``results.csv`` (created if needed).
    seed
        Seed of the simulation, the models and the UMAPs.
    progress
        Show progress lines and training progress bars.
    max_epochs
        Cap on training epochs (``None``: the default preset's budget).
    scib
        Also compute the scIB metrics (slower; needs scib-metrics).
    **simulate_kwargs
        Override the simulation size (:data:`DEMO_SIMULATION`), e.g. ``n_cells=500``.
    """
    from . import datasets
    from .benchmark import run_benchmark

    t0 = time.perf_counter()
    sim = {**DEMO_SIMULATION, **simulate_kwargs}
    adata = datasets.simulate(seed=seed, **sim)
    if progress:
        print(f"[amedl demo] simulated {adata.n_obs} cells x {adata.n_vars} genes: "
              f"{adata.obs['batch'].nunique()} batches, {adata.obs['cell_type'].nunique()} cell types "
              "(library-size, gene-wise and batch-specific programme effects)", file=sys.stderr, flush=True)
    out_dir = Path(out_dir)
    results = run_benchmark(
        adata, "batch", "cell_type", out_dir, methods=list(DEMO_METHODS), folds=1, seed=seed,
        progress=progress, scib=scib, max_epochs=max_epochs,
        title="amedl demo: simulated data", command=_command(out_dir, seed, max_epochs, scib, simulate_kwargs),
    )
    print()
    print(f"aMEDL demo on simulated data ({adata.n_obs} cells, {sim['n_batches']} batches, "
          f"{sim['n_cell_types']} cell types), fitted and scored on all cells:")
    print(demo_table(results))
    print()
    print(f"UMAPs: {out_dir / 'umap.png'}")
    print(f"report: {out_dir / 'report.html'}  (tables + figure; open in a browser)")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return results
