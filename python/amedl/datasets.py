"""Datasets: a simulator with known cell types and batch effects (the demo's data), and the names of the
real datasets the benchmarks use."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import preview

_CHUNK = 20_000


def simulate(
    n_cells: int = 2000,
    n_genes: int = 1000,
    n_batches: int = 3,
    n_cell_types: int = 5,
    *,
    seed: int = 0,
    marker_fraction: float = 0.05,
    marker_lfc: float = 2.0,
    batch_gene_sd: float = 0.5,
    batch_program_fraction: float = 0.03,
    batch_program_lfc: float = 1.5,
    library_size: float = 3000.0,
    library_batch_sd: float = 0.4,
    dispersion: float = 0.3,
    gene_mean_sd: float = 1.2,
    n_states: int = 0,
    state_lfc: float = 0.5,
    n_jobs: int = 1,
) -> ad.AnnData:
    """Simulate raw counts with known cell types and batch effects.

    Expression is negative binomial (gamma–Poisson) around a mean built from:

    - a baseline per gene (log-normal with sd ``gene_mean_sd``: larger values
      give sparser data) and, per cell type, marker genes
      (``marker_fraction`` of genes, log fold change about ``marker_lfc``);
    - per batch, a **library-size** effect (the batch's mean log library size
      shifts with sd ``library_batch_sd``), a **gene-wise technical** effect
      (a log-normal factor per gene with sd ``batch_gene_sd``), and a
      **batch-specific expression program** (``batch_program_fraction`` of genes
      raised by about ``batch_program_lfc`` in every cell of the batch);
    - cell-type proportions that differ between batches (Dirichlet);
    - optionally, continuous **cell states** shared by all cell types and
      batches (``n_states`` gene programs, each with log fold changes of sd
      ``state_lfc`` on every gene and a standard-normal score per cell), the
      variation within a cell type that real cells have (cycle, activation,
      stress) and that makes neighbourhoods within a cell type meaningful.

    ``n_jobs`` processes draw the counts (the result does not depend on it).

    Returns an AnnData with integer counts (CSR, float32) in ``X`` and
    ``obs['batch']``, ``obs['cell_type']`` (categoricals), ``obs['library_size']``;
    ``var['marker_of']`` and ``var['batch_program']`` record the truth.
    """
    if n_batches < 1 or n_cell_types < 1 or n_cells < 1 or n_genes < 1:
        raise ValueError("n_cells, n_genes, n_batches and n_cell_types must be positive")
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, gene_mean_sd, n_genes)

    type_lfc = np.zeros((n_cell_types, n_genes))
    marker_of = np.full(n_genes, "", dtype=object)
    n_markers = max(1, int(marker_fraction * n_genes))
    for t in range(n_cell_types):
        idx = rng.choice(n_genes, n_markers, replace=False)
        type_lfc[t, idx] += rng.normal(marker_lfc, 0.5, n_markers)
        marker_of[idx] = f"type_{t + 1}"

    batch_lfc = rng.normal(0.0, batch_gene_sd, (n_batches, n_genes))
    program = np.full(n_genes, "", dtype=object)
    n_prog = max(1, int(batch_program_fraction * n_genes))
    for b in range(n_batches):
        idx = rng.choice(n_genes, n_prog, replace=False)
        batch_lfc[b, idx] += rng.normal(batch_program_lfc, 0.3, n_prog)
        program[idx] = f"batch_{b + 1}"
    batch_lib = rng.normal(0.0, library_batch_sd, n_batches)

    batch = rng.integers(0, n_batches, n_cells)
    props = rng.dirichlet(np.full(n_cell_types, 3.0), n_batches)
    cum = props.cumsum(axis=1)
    cell_type = np.minimum((rng.random(n_cells)[:, None] > cum[batch]).sum(axis=1), n_cell_types - 1)
    lib = np.exp(np.log(library_size) + batch_lib[batch] + rng.normal(0, 0.3, n_cells))
    # the state programs are drawn after everything else, so that n_states=0 gives the
    # same data as before the option existed
    cell_lfc = None
    if n_states > 0:
        loadings = rng.normal(0.0, state_lfc, (n_states, n_genes))
        cell_lfc = (rng.normal(0.0, 1.0, (n_cells, n_states)) @ loadings).astype(np.float32)

    # Counts are drawn in fixed-size chunks of cells, each with its own seeded
    # generator, so that millions of cells fit in memory and chunks can be drawn
    # in parallel with the same result.
    chunks = [
        (base, type_lfc, batch_lfc, cell_type[lo:lo + _CHUNK], batch[lo:lo + _CHUNK], lib[lo:lo + _CHUNK], dispersion, (seed, c),
         None if cell_lfc is None else cell_lfc[lo:lo + _CHUNK])
        for c, lo in enumerate(range(0, n_cells, _CHUNK))
    ]
    if n_jobs > 1 and len(chunks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("fork")) as pool:
            blocks = list(pool.map(_simulate_chunk, chunks))
    else:
        blocks = [_simulate_chunk(c) for c in chunks]
    X = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    totals = np.asarray(X.sum(axis=1)).ravel()

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{b + 1}" for b in batch], categories=[f"batch_{b + 1}" for b in range(n_batches)]),
            "cell_type": pd.Categorical([f"type_{t + 1}" for t in cell_type], categories=[f"type_{t + 1}" for t in range(n_cell_types)]),
            "library_size": totals,
        },
        index=[f"cell_{i + 1}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"marker_of": marker_of.astype(str), "batch_program": program.astype(str)}, index=[f"gene_{j + 1}" for j in range(n_genes)])
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["simulation"] = {
        "seed": seed,
        "n_batches": n_batches,
        "n_cell_types": n_cell_types,
        "batch_gene_sd": batch_gene_sd,
        "batch_program_lfc": batch_program_lfc,
        "library_batch_sd": library_batch_sd,
        "n_states": n_states,
        "state_lfc": state_lfc,
    }
    return adata


def _simulate_chunk(args) -> sp.csr_matrix:
    """Negative-binomial counts of one chunk of cells around its log-means."""
    base, type_lfc, batch_lfc, cell_type, batch, lib, dispersion, chunk_seed, cell_lfc = args
    crng = np.random.default_rng(list(chunk_seed))
    log_mu = base[None, :] + type_lfc[cell_type] + batch_lfc[batch]
    if cell_lfc is not None:
        log_mu = log_mu + cell_lfc
    mu = np.exp(log_mu)
    mu *= (lib / mu.sum(axis=1))[:, None]
    shape = 1.0 / dispersion
    counts = crng.poisson(crng.gamma(shape, mu / shape)).astype(np.float32)
    empty = counts.sum(axis=1) == 0  # every cell keeps at least one count
    counts[empty, np.argmax(mu[empty], axis=1)] = 1.0
    return sp.csr_matrix(counts)


#: The real datasets of the benchmarks and tests (files in the shared data folder): file name, batch
#: column, label column. Finding the folder is the job of the tests and benchmark scripts.
SHARED = {
    "cellbench": ("cellbench_celseq2_dropseq.h5ad", "batch", "cell_line"),
    "symphony": ("symphony_pbmcs_small.h5ad", "donor", "cell_type"),
    "kang": ("muscat_kang_example.h5ad", "sample_id", "cluster_id"),
}


def pseudo_batches(
    adata: ad.AnnData, batch_key: str, n: int = 3, *, batch: str | None = None, key: str = "pseudo_batch", seed: int = 0
) -> ad.AnnData:
    """A null dataset for calibration checks: the cells of one batch (``batch``, by
    default the largest) split at random into ``n`` equal pseudo-batches, named in
    ``obs[key]``. There is no batch effect to find or remove between them, so a
    well-calibrated integration keeps the cell types as PCA does and a batch-specific
    latent or effect should find nothing. Returns a new AnnData; ``adata`` is not changed.
    """
    if batch_key not in adata.obs.columns:
        raise KeyError(f"batch column {batch_key!r} is not in adata.obs")
    if n < 2:
        raise ValueError(f"n must be at least 2 pseudo-batches, got {n}")
    values = adata.obs[batch_key].astype(str)
    batch = values.value_counts().index[0] if batch is None else str(batch)
    if batch not in set(values):
        raise ValueError(f"batch {batch!r} is not a value of adata.obs[{batch_key!r}] "
                         f"({preview(sorted(set(values)), 5)})")
    cells = np.flatnonzero((values == batch).to_numpy())
    if cells.size < 2 * n:
        raise ValueError(f"batch {batch!r} has {cells.size} cells, too few for {n} pseudo-batches")
    sub = adata[cells].copy()
    order = np.random.default_rng(seed).permutation(sub.n_obs)
    sub.obs[key] = pd.Categorical([f"pseudo_{i % n + 1}" for i in order])
    return sub
