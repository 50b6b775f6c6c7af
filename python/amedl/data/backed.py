"""Out-of-core training: counts read from an on-disk ``.h5ad`` in blocks of contiguous rows.

Nothing the size of the count matrix is ever held in memory:

- :func:`fit_backed` computes the preprocessing statistics (library sizes,
  per-batch gene means and variances for the highly variable genes, the
  scaling) in one pass over chunks of cells, and selects the same genes as
  the in-memory path (scanpy's Seurat flavour, batch-aware) from those
  statistics;
- :class:`BackedMatrix` reads the log1p-normalised model genes of a range of
  rows (anndata's sparse datasets over h5py);
- :class:`BackedLoader` yields minibatches in block order
  (:func:`~amedl.data.loader.block_order`): blocks of contiguous rows in a
  shuffled order, rows shuffled within a buffer of blocks, so that a read is
  one contiguous slice of the file, never a scattered row;

Peak memory is bounded by the chunk, block and buffer sizes, plus a few
numbers per cell (batch code, library size, the validation split).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .loader import CSRLoader, Minibatch, RowBlocks, block_order
from .preprocess import SCALINGS, Preprocessor, _normalised_log, check_model_genes, requested_genes
from .validate import AMEDLInputError, check_batch_column, check_batches, check_counts, check_names, first_non_count_row

logger = logging.getLogger("amedl")

#: Cells per chunk of the statistics pass and of latents written to disk.
CHUNK = 16_384
#: Training reads from disk in blocks of this many contiguous cells when ``block_size`` is None,
#: with ``buffer_blocks`` blocks (this many unless given) shuffled together.
DISK_BLOCK_SIZE, DISK_BUFFER_BLOCKS = 1024, 16


class BackedCounts:
    """The raw count matrix of an ``.h5ad`` file (``X`` or a layer), read by ranges of rows."""

    def __init__(self, path: str | os.PathLike, layer: str | None = None):
        self.path = Path(path)
        self.file = h5py.File(self.path, "r")
        key = "X" if layer is None else f"layers/{layer}"
        if key not in self.file:
            raise AMEDLInputError(f"{self.path} has no {'X' if layer is None else f'layer {layer!r}'}; "
                                  "pass the layer that holds the raw counts")
        self.where = f"{self.path.name}:{key}"
        node = self.file[key]
        if isinstance(node, h5py.Dataset):
            self._dense, self._sparse = node, None
            self.shape = tuple(node.shape)
        else:
            self._dense, self._sparse = None, ad.io.sparse_dataset(node)
            if self._sparse.format != "csr":
                matrix = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
                raise AMEDLInputError(
                    f"{self.where} is stored as {self._sparse.format.upper()}: its rows cannot be read from disk in "
                    f"blocks. Train in memory (drop --backed, or read the file without backed='r'), or rewrite the "
                    f"file with that matrix as CSR ({matrix} = scipy.sparse.csr_matrix({matrix}), then write_h5ad)."
                )
            self.shape = tuple(self._sparse.shape)

    def read(self, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo:hi`` as a CSR matrix (one contiguous read)."""
        if self._sparse is not None:
            return sp.csr_matrix(self._sparse[lo:hi])
        return sp.csr_matrix(self._dense[lo:hi])

    def chunks(self, chunk: int = CHUNK) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        for lo in range(0, self.shape[0], chunk):
            hi = min(lo + chunk, self.shape[0])
            yield lo, hi, self.read(lo, hi)

    def close(self) -> None:
        self.file.close()


class BackedMatrix(RowBlocks):
    """Log1p-normalised expression of the model genes, read from disk by ranges of rows."""

    def __init__(self, counts: BackedCounts, var_names: pd.Index, genes: Sequence[str], target_sum: float):
        self.counts, self.target_sum = counts, float(target_sum)
        self.var = pd.DataFrame(index=var_names)
        self.genes = list(genes)
        self.shape = (counts.shape[0], len(self.genes))

    def read_log(self, lo: int, hi: int) -> sp.csr_matrix:
        block = ad.AnnData(X=self.counts.read(lo, hi), var=self.var)
        return _normalised_log(block, None, self.target_sum, self.genes)

    def read_rows(self, rows: np.ndarray, chunk: int = CHUNK) -> sp.csr_matrix:
        """The log CSR of ``rows`` (sorted, unique), read one contiguous slice per
        ``chunk`` rows that holds any of them."""
        rows = np.asarray(rows)
        pieces = []
        for c in np.unique(rows // chunk):
            mine = rows[(rows // chunk) == c]
            lo = int(mine[0])
            pieces.append(self.read_log(lo, int(mine[-1]) + 1)[mine - lo])
        return sp.vstack(pieces, format="csr") if len(pieces) > 1 else pieces[0]


class BackedLoader(CSRLoader):
    """:class:`~amedl.data.CSRLoader` over a :class:`BackedMatrix`: the same minibatches
    (rows sorted within each) for the same row order, read from disk one buffer of
    contiguous blocks at a time. With ``shuffle`` the order is
    :func:`~amedl.data.loader.block_order` (``blocks=(block_size, buffer_blocks)``; a ``block_size``
    of None reads :data:`DISK_BLOCK_SIZE` cells a block);
    without, the rows in order."""

    def __init__(self, X: BackedMatrix, codes, prep, *, blocks: tuple[int | None, int] | None = None, **options):
        block_size, buffer_blocks = blocks or (None, DISK_BUFFER_BLOCKS)
        super().__init__(X, codes, prep, blocks=(block_size or DISK_BLOCK_SIZE, buffer_blocks), **options)

    def __iter__(self) -> Iterator[Minibatch]:
        n = len(self.rows)
        block_size, buffer_blocks = self.blocks
        # the order is consumed buffer by buffer; a buffer is the rows of up to buffer_blocks blocks
        if self.shuffle:
            rows, bounds = block_order(self.rows, self.rng, block_size, buffer_blocks, return_bounds=True)
        else:
            rows, bounds = self.rows, list(range(0, n, block_size * buffer_blocks)) + [n]
        loaded: list[tuple[int, np.ndarray, sp.csr_matrix]] = []  # (end position in the order, sorted rows, log CSR)
        next_buffer = 0
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            while next_buffer < len(bounds) - 1 and bounds[next_buffer] < hi:
                a, b = bounds[next_buffer], bounds[next_buffer + 1]
                loaded.append((b, *self._read(rows[a:b])))
                next_buffer += 1
            loaded = [buf for buf in loaded if buf[0] > lo]
            idx = np.sort(rows[lo:hi])
            x = np.zeros((len(idx), self.X.shape[1]), dtype=np.float32)
            for _, buf_rows, buf_X in loaded:
                mine = np.isin(idx, buf_rows, assume_unique=True)
                if mine.any():
                    x[mine] = buf_X[np.searchsorted(buf_rows, idx[mine])].toarray()
            library = None if self._library is None else self._library[torch.from_numpy(idx)]
            yield self._minibatch(torch.from_numpy(x).to(self.device), torch.from_numpy(self.codes[idx]).to(self.device), library)

    def _read(self, rows: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
        """The log CSR of ``rows`` (sorted), read as one contiguous slice per block."""
        rows = np.sort(rows)
        return rows, self.X.read_rows(rows, chunk=self.blocks[0])


def make_loader(X, codes: np.ndarray, prep: Preprocessor, **options) -> CSRLoader:
    """The loader for ``X``: :class:`CSRLoader` for a matrix in memory (or on a device),
    :class:`BackedLoader` for rows read from disk."""
    if isinstance(X, RowBlocks):
        return BackedLoader(X, codes, prep, **options)
    return CSRLoader(X, codes, prep, **options)


# ------------------------------------------------------------------------------ statistics in one pass


class _Moments:
    """Per-group, per-gene count, mean and sum of squared deviations, merged chunk by chunk
    (Chan et al.'s pairwise update, in float64)."""

    def __init__(self, n_groups: int, n_genes: int):
        self.n = np.zeros(n_groups, np.float64)
        self.mean = np.zeros((n_groups, n_genes), np.float64)
        self.m2 = np.zeros((n_groups, n_genes), np.float64)

    def add(self, X: sp.csr_matrix, groups: np.ndarray) -> None:
        n_groups = len(self.n)
        G = sp.csr_matrix((np.ones(len(groups)), (groups, np.arange(len(groups)))), shape=(n_groups, X.shape[0]))
        X = X.astype(np.float64)
        n_b = np.asarray(G.sum(axis=1)).ravel()
        s = np.asarray((G @ X).todense())
        sq = np.asarray((G @ X.multiply(X)).todense())
        has = n_b > 0
        mean_b = np.zeros_like(s)
        mean_b[has] = s[has] / n_b[has, None]
        m2_b = np.maximum(sq - n_b[:, None] * mean_b**2, 0.0)
        total = self.n + n_b
        delta = mean_b - self.mean
        w = np.divide(n_b, total, out=np.zeros_like(total), where=total > 0)
        self.mean += delta * w[:, None]
        self.m2 += m2_b + delta**2 * (self.n * w)[:, None]
        self.n = total

    def pooled(self) -> "_Moments":
        """The moments of all groups together."""
        out = _Moments(1, self.mean.shape[1])
        n = self.n.sum()
        out.n[:] = n
        out.mean[0] = (self.n[:, None] * self.mean).sum(0) / n
        out.m2[0] = self.m2.sum(0) + (self.n[:, None] * (self.mean - out.mean[0]) ** 2).sum(0)
        return out


def _seurat_batch(mean: np.ndarray, var: np.ndarray, n_top_genes: int, n_bins: int = 20) -> pd.DataFrame:
    """Scanpy's Seurat-flavour dispersion statistics of one batch from the genes' means and
    (unbiased) variances of the normalised, un-logged expression."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(dispersion)
    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": dispersion})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    stats = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
    single = stats["dev"].isnull()  # one gene in its bin: normalised dispersion 1
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    stats = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
    norm = df["dispersions_norm"].to_numpy()
    finite = np.sort(norm[~np.isnan(norm)])[::-1]
    cut = finite[min(n_top_genes, len(finite)) - 1] if len(finite) else np.inf
    df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cut
    return df.drop(columns="mean_bin")


def _hvg_from_moments(moments: _Moments, genes: list[str], n_top_genes: int) -> np.ndarray:
    """Batch-aware highly variable genes as :func:`amedl.data.preprocess._highly_variable`
    selects them (scanpy's ``flavor="seurat"`` with ``batch_key``), from per-batch moments."""
    frames = []
    for b in range(len(moments.n)):
        n = moments.n[b]
        if n == 0:
            continue
        expressed = moments.mean[b] > 0
        var = moments.m2[b] / (n - 1) if n > 1 else moments.m2[b] / n
        df = _seurat_batch(moments.mean[b][expressed], var[expressed], min(n_top_genes, int(expressed.sum())))
        df.index = pd.Index(np.asarray(genes)[expressed])
        missing = pd.DataFrame(0.0, index=pd.Index(np.asarray(genes)[~expressed]), columns=df.columns)
        missing["highly_variable"] = False
        frames.append(pd.concat([df, missing]).loc[genes])
    df = pd.concat(frames, axis=0)
    df["highly_variable"] = df["highly_variable"].astype(int)
    df = df.groupby(df.index, observed=True).agg(
        {"means": "mean", "dispersions": "mean", "dispersions_norm": "mean", "highly_variable": "sum"})
    df = df.sort_values(["highly_variable", "dispersions_norm"], ascending=False, na_position="last")
    df["selected"] = np.arange(df.shape[0]) < n_top_genes
    return df.loc[genes, "selected"].to_numpy(dtype=bool)


def _hvg_without_batches(moments: _Moments, genes: list[str], n_top_genes: int) -> np.ndarray:
    pooled = moments.pooled()
    n = pooled.n[0]
    return _seurat_batch(pooled.mean[0], pooled.m2[0] / max(n - 1, 1), n_top_genes)["highly_variable"].to_numpy(bool)


def fit_backed(
    adata: ad.AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    n_top_genes: int | None = 2000,
    scaling: str = "zscore",
    genes: Sequence[str] | None = None,
    target_sum: float = 1e4,
    chunk: int = CHUNK,
) -> tuple[Preprocessor, BackedMatrix, np.ndarray, np.ndarray]:
    """:meth:`Preprocessor.fit` for an AnnData opened with ``backed="r"``, in one pass over
    chunks of ``chunk`` cells: the counts are checked, the library sizes, per-batch gene
    moments (for the highly variable genes) and the moments or maximum of the log1p values
    (for the scaling) are accumulated. Returns the preprocessor, the model-input matrix
    read from disk, the batch codes and the library sizes."""
    if scaling not in SCALINGS:
        raise AMEDLInputError(f"scaling must be one of {SCALINGS}, got {scaling!r}.")
    check_whole_file(adata)
    check_names(adata)
    check_batch_column(adata, batch_key)
    batch = check_batches(adata.obs[batch_key], batch_key)
    codes = np.asarray(batch.codes, dtype=np.int64)
    counts = BackedCounts(adata.filename, layer)
    n_cells, n_genes = counts.shape
    all_genes = [str(g) for g in adata.var_names]
    library = np.empty(n_cells, np.float64)
    expm1_moments = _Moments(len(batch.categories), n_genes)  # normalised values, per batch (HVG)
    log_moments = _Moments(1, n_genes)  # log1p values, all cells (z-score)
    log_max = np.zeros(n_genes, np.float64)
    var = pd.DataFrame(index=adata.var_names)
    for lo, hi, X in counts.chunks(chunk):
        try:
            check_counts(X, counts.where)
        except AMEDLInputError as err:  # name the first cell with a value that is not a count
            row = first_non_count_row(X)
            if row is None:
                raise
            raise AMEDLInputError(f"{err} (the first is in cell {adata.obs_names[lo + row]!r}, row {lo + row})") from None
        library[lo:hi] = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        if (library[lo:hi] == 0).any():
            empty = adata.obs_names[lo:hi][library[lo:hi] == 0]
            raise AMEDLInputError(f"cell(s) with no counts at all (e.g. {list(empty[:3])}); remove them first, "
                                  "e.g. sc.pp.filter_cells(adata, min_counts=1).")
        L = _normalised_log(ad.AnnData(X=X, var=var), None, target_sum)
        E = L.copy()
        np.expm1(E.data, out=E.data)  # float32, as scanpy's Seurat flavour un-logs
        expm1_moments.add(E, codes[lo:hi])
        log_moments.add(L, np.zeros(hi - lo, np.int64))
        if L.nnz:
            np.maximum(log_max, L.max(axis=0).toarray().ravel(), out=log_max)
    totals = expm1_moments.n @ expm1_moments.mean
    expressed = totals > 0
    dropped = int((~expressed).sum())
    if genes is not None:
        genes = requested_genes(genes)
        missing = [g for g in genes if g not in set(all_genes)]
        if missing:
            raise AMEDLInputError(f"{len(missing)} requested gene(s) are not in adata.var_names (e.g. {missing[:10]}).")
        selected = genes
    else:
        candidates = np.flatnonzero(expressed)
        selected = [all_genes[i] for i in candidates]
        if n_top_genes is not None and n_top_genes < len(candidates):
            sub = _Moments(len(expm1_moments.n), len(candidates))
            sub.n, sub.mean, sub.m2 = expm1_moments.n, expm1_moments.mean[:, candidates], expm1_moments.m2[:, candidates]
            try:
                hv = _hvg_from_moments(sub, selected, n_top_genes)
            except Exception as exc:  # as the in-memory path: tiny batches can break the per-batch binning
                logger.info("amedl: batch-aware HVG selection failed (%s); selecting without batches", exc)
                hv = _hvg_without_batches(sub, selected, n_top_genes)
            selected = [g for g, h in zip(selected, hv) if h]
    cols = pd.Index(all_genes).get_indexer(selected)
    if scaling == "minmax":
        gmax = float(log_max[cols].max()) if len(cols) else 1.0
        center = np.zeros(len(cols), np.float32)
        scale = np.full(len(cols), gmax if gmax > 0 else 1.0, np.float32)
    else:
        mean = log_moments.mean[0, cols]
        var = (log_moments.m2[0, cols] / n_cells).astype(np.float32)  # float32, as sklearn's for float32 data
        std = np.sqrt(np.maximum(var, 0.0))
        std[std < 1e-6] = 1.0
        center, scale = mean.astype(np.float32), std.astype(np.float32)
    prep = Preprocessor(genes=list(selected), scaling=scaling, center=center, scale=scale,
                        batches=[str(c) for c in batch.categories], target_sum=target_sum,
                        n_cells_fit=n_cells, dropped_genes=dropped, n_genes_fit=adata.n_vars)
    return prep, BackedMatrix(counts, adata.var_names, prep.genes, target_sum), codes, library


def library_sizes(counts: BackedCounts, chunk: int = CHUNK) -> np.ndarray:
    """Each cell's total counts, in chunks."""
    out = np.empty(counts.shape[0], np.float64)
    for lo, hi, X in counts.chunks(chunk):
        out[lo:hi] = np.asarray(X.sum(axis=1)).ravel()
    return out


def check_whole_file(adata: ad.AnnData) -> None:
    """A backed AnnData is read from its whole file: a view of one (``adata[mask]``) is an error."""
    if getattr(adata, "is_view", False):
        raise AMEDLInputError(
            f"this is a view (a subset) of an AnnData backed by {adata.filename}; amedl reads backed data from the "
            "whole file. Load the subset into memory, adata[mask].to_memory(), or write it to its own file: "
            "adata[mask].write_h5ad('subset.h5ad')")


def model_inputs(model, adata: ad.AnnData, layer: str | None):
    """``(matrix, library sizes)`` of a backed AnnData for a fitted model: the training
    file's are reused, another file's genes are matched by name."""
    check_whole_file(adata)
    if isinstance(model._X, BackedMatrix) and Path(model._X.counts.path).resolve() == Path(adata.filename).resolve() \
            and layer == model.layer:
        return model._X, model._library
    check_model_genes(model.prep.genes, adata.var_names)
    counts = BackedCounts(adata.filename, layer)
    return BackedMatrix(counts, adata.var_names, model.prep.genes, model.prep.target_sum), library_sizes(counts)
