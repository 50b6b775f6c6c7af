"""From AnnData to model input: validation, preprocessing, batch encoding, minibatches.

The user's AnnData is never modified: preprocessing works on a light copy of the
count matrix. Preprocessing uses scanpy (``normalize_total``, ``log1p``,
``highly_variable_genes``); the fitted state (selected genes, scaling constants,
batch categories) lives in :class:`Preprocessor` so that new cells go through
exactly the same transformation.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.utils.sparsefuncs import mean_variance_axis

logger = logging.getLogger("amedl")

SCALINGS = ("minmax", "zscore")
_NORMALISE_CHUNK = 10_000
_CHECK_CHUNK = 1 << 24


class AMEDLInputError(ValueError):
    """Raised when the input data cannot be used; the message says how to fix it."""


# ---------------------------------------------------------------------------
# validation


def _counts_matrix(adata: ad.AnnData, layer: str | None):
    if layer is None:
        X = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise AMEDLInputError(
                f"layer {layer!r} is not in adata.layers (available: {list(adata.layers.keys()) or 'none'}). "
                "Pass layer=None to use adata.X, or the name of the layer that holds raw counts."
            )
        X = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if X is None:
        raise AMEDLInputError(f"{where} is empty; put the raw count matrix there.")
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        try:
            X = np.asarray(X)
        except Exception as exc:  # backed or exotic arrays
            raise AMEDLInputError(f"{where} has an unsupported type {type(X).__name__}; load it into memory first.") from exc
    return X, where


def _values(X) -> np.ndarray:
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def check_counts(X, where: str = "adata.X") -> None:
    """Check that ``X`` holds raw counts: finite, non-negative integers.

    Raises :class:`AMEDLInputError` naming the problem and the fix.
    """
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise AMEDLInputError(f"{where} has shape {X.shape}: there are no cells or no genes.")
    if not np.issubdtype(X.dtype, np.number):
        raise AMEDLInputError(f"{where} has non-numeric dtype {X.dtype}; it must hold raw counts.")
    vals = _values(X)
    n_bad = n_neg = n_frac = 0
    example = None
    # chunked so that the checks never allocate temporaries the size of the matrix
    for lo in range(0, vals.size, _CHECK_CHUNK):
        v = vals[lo : lo + _CHECK_CHUNK]
        if np.issubdtype(v.dtype, np.floating):
            n_bad += int(np.count_nonzero(~np.isfinite(v)))
            if n_bad:
                break
            frac = v != np.round(v)
            n_frac += int(np.count_nonzero(frac))
            if example is None and frac.any():
                example = float(v[np.argmax(frac)])
        n_neg += int(np.count_nonzero(v < 0))
    if n_bad:
        raise AMEDLInputError(
            f"{where} contains NaN or infinite value(s). Remove or fix those entries "
            "(raw counts are finite, non-negative integers)."
        )
    if n_neg:
        raise AMEDLInputError(
            f"{where} contains {n_neg} negative value(s): amedl expects raw counts. If these are scaled or "
            "log-normalised values, pass the raw counts instead (e.g. layer='counts')."
        )
    if n_frac:
        raise AMEDLInputError(
            f"{where} contains {n_frac} non-integer value(s) (e.g. {example:.4g}): amedl expects raw "
            "counts, it normalises them itself. Pass the raw counts (e.g. layer='counts' or adata.raw)."
        )


def _row_sums(X) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


def check_batches(batch: pd.Series, batch_key: str, min_cells: int = 2) -> pd.Categorical:
    """Validate a batch column for training and return it as a categorical."""
    if batch.isna().any():
        raise AMEDLInputError(
            f"adata.obs[{batch_key!r}] has {int(batch.isna().sum())} missing value(s); give every cell a batch "
            "(e.g. fill them with 'unknown') or drop those cells."
        )
    cat = pd.Categorical(batch.astype(str))
    cat = cat.remove_unused_categories()
    counts = pd.Series(cat).value_counts()
    if len(counts) < 2:
        raise AMEDLInputError(
            f"adata.obs[{batch_key!r}] has a single batch ({counts.index[0]!r}): aMEDL separates batch effects "
            "and needs at least 2 batches. Check the batch column, or use PCA / a plain autoencoder for one batch."
        )
    small = counts[counts < min_cells]
    if len(small):
        raise AMEDLInputError(
            f"batch(es) {list(small.index)} in adata.obs[{batch_key!r}] have fewer than {min_cells} cells; "
            "merge them with another batch or drop those cells."
        )
    return cat


def validate_adata(
    adata: ad.AnnData,
    batch_key: str | None,
    layer: str | None = None,
    *,
    training: bool = True,
) -> None:
    """Validate an AnnData for amedl.

    Checks the type, unique cell and gene names, the counts (finite,
    non-negative integers), empty cells, and - when ``batch_key`` is given and
    ``training`` - that the batch column exists, has no missing values, at
    least two batches and at least two cells per batch.
    """
    if not isinstance(adata, ad.AnnData):
        raise AMEDLInputError(f"expected an AnnData object, got {type(adata).__name__}.")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:5].tolist()
        raise AMEDLInputError(f"cell names are not unique (e.g. {dup}); call adata.obs_names_make_unique() first.")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()][:5].tolist()
        raise AMEDLInputError(f"gene names are not unique (e.g. {dup}); call adata.var_names_make_unique() first.")
    if batch_key is not None and batch_key not in adata.obs.columns:
        raise AMEDLInputError(
            f"batch column {batch_key!r} is not in adata.obs (columns: {list(adata.obs.columns)}); "
            "pass batch_key= the column that names each cell's batch."
        )
    X, where = _counts_matrix(adata, layer)
    check_counts(X, where)
    empty = _row_sums(X) == 0
    if empty.any():
        names = adata.obs_names[empty][:5].tolist()
        raise AMEDLInputError(
            f"{int(empty.sum())} cell(s) have no counts at all (e.g. {names}); remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_counts=1)."
        )
    if training and batch_key is not None:
        check_batches(adata.obs[batch_key], batch_key)


# ---------------------------------------------------------------------------
# preprocessing


def _normalised_log(adata: ad.AnnData, layer: str | None, target_sum: float, genes: Sequence[str] | None = None) -> sp.csr_matrix:
    """Library-size normalised log1p expression (float32 CSR) of ``genes``
    (default: all, in ``adata.var_names`` order); the input is untouched.

    Library sizes come from all genes. Scanpy normalises blocks of
    ``_NORMALISE_CHUNK`` cells in turn (each cell is scaled on its own, so the
    result is the same as in one call) and only the requested genes of each
    block are kept: the full normalised matrix is never held, and the
    temporaries stay small next to the matrix.
    """
    X, _ = _counts_matrix(adata, layer)
    source = X if sp.isspmatrix_csr(X) else sp.csr_matrix(X, dtype=np.float32)  # a conversion is already a new matrix
    n_cells, n_genes = source.shape
    order = None
    if genes is None:
        keep = None
    else:
        positions = adata.var_names.get_indexer(list(genes))
        keep = np.zeros(n_genes, dtype=bool)
        keep[positions] = True
        if keep.all() and np.array_equal(positions, np.arange(n_genes)):
            keep = None
        elif not np.all(np.diff(positions) > 0):
            order = np.argsort(np.argsort(positions))  # the rank of each requested gene among the kept columns

    if keep is None:
        indptr = source.indptr.copy()
        indices = source.indices if source is not X else source.indices.copy()
    else:
        row_nnz = np.empty(n_cells, dtype=np.int64)
        for lo in range(0, n_cells, _NORMALISE_CHUNK):
            hi = min(lo + _NORMALISE_CHUNK, n_cells)
            a = source.indptr[lo]
            kept = np.concatenate([[0], np.cumsum(keep[source.indices[a : source.indptr[hi]]])])
            row_nnz[lo:hi] = kept[source.indptr[lo + 1 : hi + 1] - a] - kept[source.indptr[lo:hi] - a]
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(row_nnz, out=indptr[1:])
        index_dtype = np.int32 if indptr[-1] < np.iinfo(np.int32).max else np.int64
        indptr = indptr.astype(index_dtype)
        indices = np.empty(indptr[-1], dtype=index_dtype)
        new_column = (np.cumsum(keep) - 1).astype(index_dtype)
    data = np.empty(indptr[-1], dtype=np.float32)

    for lo in range(0, n_cells, _NORMALISE_CHUNK):
        hi = min(lo + _NORMALISE_CHUNK, n_cells)
        a, b = source.indptr[lo], source.indptr[hi]
        block = sp.csr_matrix(
            (source.data[a:b].astype(np.float32), source.indices[a:b], source.indptr[lo : hi + 1] - a),
            shape=(hi - lo, n_genes),
        )
        part = ad.AnnData(X=block)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.normalize_total(part, target_sum=target_sum)
            sc.pp.log1p(part)
        c, d = indptr[lo], indptr[hi]
        if keep is None:
            data[c:d] = part.X.data
        else:
            mask = keep[source.indices[a:b]]
            data[c:d] = part.X.data[mask]
            indices[c:d] = new_column[source.indices[a:b][mask]]
    shape = (n_cells, n_genes if keep is None else int(keep.sum()))
    out = sp.csr_matrix((data, indices, indptr), shape=shape)
    return out if order is None else out[:, order]


@dataclass
class Preprocessor:
    """Fitted preprocessing: normalise to ``target_sum``, log1p, select ``genes``, scale.

    The scaling is an affine map per gene, ``(x - center) / scale``, applied to
    dense minibatches so that the stored matrix stays sparse. ``minmax`` is the
    paper's global min-max scaling of log1p data (its minimum is 0, so it is a
    division by the global maximum); ``zscore`` standardises each gene.
    """

    genes: list[str]
    scaling: str
    center: np.ndarray
    scale: np.ndarray
    batches: list[str]
    target_sum: float = 1e4
    n_cells_fit: int = 0
    dropped_genes: int = 0
    extra: dict = field(default_factory=dict)

    # -- fitting -----------------------------------------------------------
    @classmethod
    def fit(
        cls,
        adata: ad.AnnData,
        batch_key: str,
        *,
        layer: str | None = None,
        n_top_genes: int | None = 2000,
        scaling: str = "zscore",
        genes: Sequence[str] | None = None,
        target_sum: float = 1e4,
    ) -> tuple["Preprocessor", sp.csr_matrix, np.ndarray]:
        """Fit on training data; returns the preprocessor, the log1p matrix on the selected genes, and batch codes."""
        if scaling not in SCALINGS:
            raise AMEDLInputError(f"scaling must be one of {SCALINGS}, got {scaling!r}.")
        validate_adata(adata, batch_key, layer, training=True)
        batch = check_batches(adata.obs[batch_key], batch_key)
        X, _ = _counts_matrix(adata, layer)

        gene_totals = np.asarray(X.sum(axis=0)).ravel()
        expressed = gene_totals > 0
        dropped = int((~expressed).sum())
        if dropped:
            logger.info("amedl: ignoring %d gene(s) with zero counts in every cell", dropped)

        if genes is not None:
            genes = list(dict.fromkeys(str(g) for g in genes))
            known = set(adata.var_names)
            missing = [g for g in genes if g not in known]
            if missing:
                raise AMEDLInputError(
                    f"{len(missing)} requested gene(s) are not in adata.var_names (e.g. {missing[:10]})."
                )
            selected = genes
            Xs = _normalised_log(adata, layer, target_sum, selected)
        else:
            candidates = list(adata.var_names[expressed])
            Xs = _normalised_log(adata, layer, target_sum, candidates)
            if n_top_genes is None or n_top_genes >= len(candidates):
                selected = candidates
            else:
                hv = _highly_variable(Xs, candidates, adata.obs_names, batch, n_top_genes)
                selected = [g for g, h in zip(candidates, hv) if h]
                Xs = Xs[:, np.flatnonzero(hv)]
        if scaling == "minmax":
            gmax = float(Xs.max()) if Xs.nnz else 1.0
            center = np.zeros(len(selected), np.float32)
            scale = np.full(len(selected), gmax if gmax > 0 else 1.0, np.float32)
        else:
            mean, var = mean_variance_axis(Xs, axis=0)
            std = np.sqrt(np.maximum(var, 0.0))
            std[std < 1e-6] = 1.0
            center, scale = mean.astype(np.float32), std.astype(np.float32)
        prep = cls(
            genes=[str(g) for g in selected],
            scaling=scaling,
            center=center,
            scale=scale,
            batches=[str(c) for c in batch.categories],
            target_sum=target_sum,
            n_cells_fit=adata.n_obs,
            dropped_genes=dropped,
        )
        return prep, Xs, np.asarray(batch.codes, dtype=np.int64)

    # -- applying ----------------------------------------------------------
    def transform(self, adata: ad.AnnData, layer: str | None = None) -> sp.csr_matrix:
        """Normalised log1p expression of ``adata`` on the model's genes (unscaled, sparse).

        Genes are matched by name; a clear error lists any that are missing.
        """
        validate_adata(adata, None, layer, training=False)
        known = set(adata.var_names)
        missing = [g for g in self.genes if g not in known]
        if missing:
            raise AMEDLInputError(
                f"{len(missing)} of the model's {len(self.genes)} genes are missing from adata.var_names "
                f"(e.g. {missing[:10]}). The input needs every gene the model was trained on, named the same way "
                "(check gene symbols vs Ensembl IDs); genes may be in any order and extra genes are ignored."
            )
        return _normalised_log(adata, layer, self.target_sum, self.genes)

    def encode_batches(self, values: Sequence) -> np.ndarray:
        """Batch labels to integer codes; labels not seen in training get -1."""
        lookup = {b: i for i, b in enumerate(self.batches)}
        return np.array([lookup.get(str(v), -1) for v in values], dtype=np.int64)

    def scale_dense(self, x: np.ndarray) -> np.ndarray:
        """Apply the per-gene scaling to a dense block (in place)."""
        x -= self.center
        x /= self.scale
        return x

    def unscale(self, x: np.ndarray) -> np.ndarray:
        """Invert the scaling of a dense block (in place): model space back to log1p-normalised expression."""
        x *= self.scale
        x += self.center
        return x

    # -- persistence -------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "genes": self.genes,
            "scaling": self.scaling,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "batches": self.batches,
            "target_sum": self.target_sum,
            "n_cells_fit": self.n_cells_fit,
            "dropped_genes": self.dropped_genes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessor":
        return cls(
            genes=list(d["genes"]),
            scaling=d["scaling"],
            center=np.asarray(d["center"], np.float32),
            scale=np.asarray(d["scale"], np.float32),
            batches=list(d["batches"]),
            target_sum=float(d["target_sum"]),
            n_cells_fit=int(d.get("n_cells_fit", 0)),
            dropped_genes=int(d.get("dropped_genes", 0)),
        )


def _highly_variable(X: sp.csr_matrix, genes: list[str], cells, batch: pd.Categorical, n_top_genes: int) -> np.ndarray:
    """Batch-aware highly variable genes (scanpy, Seurat flavour on log data): a boolean mask over ``genes``.

    Scanpy reads the matrix without changing it, so it is wrapped, not copied.
    """
    work = ad.AnnData(X=X, obs=pd.DataFrame({"_batch": np.asarray(batch)}, index=cells), var=pd.DataFrame(index=genes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, flavor="seurat", batch_key="_batch")
        except Exception as exc:  # tiny batches can break the per-batch binning
            logger.info("amedl: batch-aware HVG selection failed (%s); selecting without batches", exc)
            sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, flavor="seurat")
    return work.var["highly_variable"].to_numpy(dtype=bool)


# ---------------------------------------------------------------------------
# minibatches


class DeviceCSR:
    """A CSR matrix held as torch tensors on an accelerator.

    Minibatch rows are gathered and densified on the device, so a GPU is not
    kept waiting on host-side slicing and copies.
    """

    def __init__(self, X: sp.csr_matrix, device: torch.device | str):
        X = X if sp.isspmatrix_csr(X) else sp.csr_matrix(X)
        self.shape = X.shape
        self.device = torch.device(device)
        self.indptr = torch.as_tensor(X.indptr.astype(np.int64), device=self.device)
        self.indices = torch.as_tensor(X.indices.astype(np.int64), device=self.device)
        self.data = torch.as_tensor(X.data.astype(np.float32, copy=False), device=self.device)

    def dense_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The dense float32 block of ``rows`` (a device tensor of row indices)."""
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        total = int(counts.sum())
        out = torch.zeros(len(rows), self.shape[1], dtype=torch.float32, device=self.device)
        if total == 0:
            return out
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=self.device), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        pos = torch.arange(total, device=self.device) + (starts - first)[row_of]
        out[row_of, self.indices[pos]] = self.data[pos]
        return out


class CSRLoader:
    """Minibatches of a CSR matrix: rows are sliced and densified one minibatch at a time.

    ``X`` is a SciPy CSR matrix (sliced on the host) or a :class:`DeviceCSR`
    (sliced on its device). ``rows`` selects the cells to iterate over
    (default: all) without copying the matrix. Yields ``(x, codes)`` torch
    tensors: ``x`` is the scaled dense block (float32, on ``device``),
    ``codes`` the integer batch codes.
    """

    def __init__(
        self,
        X: sp.csr_matrix,
        codes: np.ndarray,
        prep: Preprocessor,
        *,
        rows: np.ndarray | None = None,
        batch_size: int = 256,
        shuffle: bool = False,
        rng: np.random.Generator | None = None,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ):
        if not isinstance(X, DeviceCSR) and not sp.isspmatrix_csr(X):
            X = sp.csr_matrix(X)
        self.X = X
        self.codes = np.asarray(codes, dtype=np.int64)
        self._codes_on_device = torch.as_tensor(self.codes, device=X.device) if isinstance(X, DeviceCSR) else None
        self.rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.device = torch.device(device)
        self.drop_last = drop_last
        self._center = torch.as_tensor(prep.center, device=self.device)
        self._inv_scale = torch.as_tensor(1.0 / prep.scale, device=self.device)

    def __len__(self) -> int:
        n = len(self.rows)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.rows)
        rows = self.rows[self.rng.permutation(n)] if self.shuffle else self.rows
        if isinstance(self.X, DeviceCSR):
            yield from self._iter_on_device(rows)
            return
        contiguous = not self.shuffle and n == self.X.shape[0]
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if contiguous:
                block, codes = self.X[lo:hi], self.codes[lo:hi]
            else:
                idx = np.sort(rows[lo:hi])
                block, codes = self.X[idx], self.codes[idx]
            x = torch.from_numpy(block.toarray()).to(self.device, non_blocking=True)
            x = (x - self._center) * self._inv_scale
            yield x, torch.from_numpy(codes).to(self.device)

    def _iter_on_device(self, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = torch.as_tensor(rows, device=self.X.device)
        for i in range(len(self)):
            idx = rows[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.X.dense_rows(idx).to(self.device)
            x = (x - self._center) * self._inv_scale
            yield x, self._codes_on_device[idx].to(self.device)
