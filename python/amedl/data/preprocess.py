"""Preprocessing: library-size normalisation, log1p and HVG selection (scanpy), per-gene scaling.

The user's AnnData is never modified. The fitted state (selected genes,
scaling constants, batch categories) lives in :class:`Preprocessor` so that
new cells go through exactly the same transformation.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from .validate import AMEDLInputError, _counts_matrix, check_batches, validate_adata

logger = logging.getLogger("amedl")

SCALINGS = ("minmax", "zscore")
_BLOCK = 16_384  # cells scaled at a time


def _normalised_log(adata: ad.AnnData, layer: str | None, target_sum: float, genes: Sequence[str] | None = None) -> sp.csr_matrix:
    """Library-size normalised log1p expression (float32 CSR) of ``genes`` (default all, in
    ``adata.var_names`` order), as scanpy's ``normalize_total`` + ``log1p``; the input is untouched.

    Library sizes come from all genes; only the requested genes are copied,
    scaled in place and logged, so the normalised matrix of all genes is never held.
    """
    X, _ = _counts_matrix(adata, layer)
    size = np.asarray(X.sum(axis=1), dtype=np.float64).ravel() / target_sum
    cols = None if genes is None else adata.var_names.get_indexer(list(genes))
    out = sp.csr_matrix(X if cols is None else X[:, cols], dtype=np.float32, copy=cols is None)  # never the input
    inv, ptr = (1.0 / size).astype(np.float32), out.indptr
    for lo in range(0, out.shape[0], _BLOCK):  # in blocks of cells: no temporary the size of the matrix
        hi = min(lo + _BLOCK, out.shape[0])
        block = out.data[ptr[lo] : ptr[hi]]
        block *= np.repeat(inv[lo:hi], np.diff(ptr[lo : hi + 1]))
        np.log1p(block, out=block)
    return out


def requested_genes(genes) -> list[str]:
    """``genes=`` as a list of distinct names, in order; a single string or an empty list is an error."""
    if isinstance(genes, (str, bytes)):
        raise AMEDLInputError(f"genes must be a list of gene names, got the string {genes!r}: write genes=[{genes!r}] "
                              "(or several names)")
    genes = list(dict.fromkeys(str(g) for g in genes))
    if not genes:
        raise AMEDLInputError("genes is empty: name the genes to model, or leave genes=None for the highly variable ones")
    return genes


def seurat_renamed_hint(missing: Sequence[str], present, *, in_file: bool = False) -> str:
    """The fix, where the missing genes are there with '-' for '_' (Seurat renames features so), else '';
    ``in_file``: the genes are those of an input file (the command line), renamed from Python."""
    present = set(present)
    if not all("_" in g and g.replace("_", "-") in present for g in missing):
        return ""
    return (f" All {len(missing)} are there with '-' for '_', as Seurat renames features; rename them back"
            f"{' in the input (in Python, ' if in_file else ' ('}names = {{g.replace('_', '-'): g for g in model.genes}}; "
            "adata.var_names = [names.get(v, v) for v in adata.var_names])")


def check_model_genes(genes: Sequence[str], present, *, where: str = "adata.var_names", in_file: bool = False) -> None:
    """A clear error when any of a model's ``genes`` is not among the input's genes ``present``
    (``where`` names them), with the fix when Seurat renamed them."""
    known = set(present)
    missing = [g for g in genes if g not in known]
    if missing:
        raise AMEDLInputError(
            f"{len(missing)} of the model's {len(genes)} genes are missing from {where} (e.g. {missing[:10]}). "
            "The input needs every gene the model was trained on, named the same way (check gene symbols vs "
            "Ensembl IDs); genes may be in any order." + seurat_renamed_hint(missing, known, in_file=in_file)
        )


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
    #: genes of the training input: each cell's library size was its total over all of them
    n_genes_fit: int = 0

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
        validate_adata(adata, batch_key, layer, training=False)  # the batch column's values: once, here
        batch = check_batches(adata.obs[batch_key], batch_key)
        X, _ = _counts_matrix(adata, layer)

        gene_totals = np.asarray(X.sum(axis=0)).ravel()
        expressed = gene_totals > 0
        dropped = int((~expressed).sum())
        if dropped:
            logger.info("amedl: ignoring %d gene(s) with zero counts in every cell", dropped)

        if genes is not None:
            genes = requested_genes(genes)
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
            n_genes_fit=adata.n_vars,
        )
        return prep, Xs, np.asarray(batch.codes, dtype=np.int64)

    # -- applying ----------------------------------------------------------
    def transform(self, adata: ad.AnnData, layer: str | None = None) -> sp.csr_matrix:
        """Normalised log1p expression of ``adata`` on the model's genes (unscaled, sparse).

        Genes are matched by name; a clear error lists any that are missing.
        """
        validate_adata(adata, None, layer, training=False)
        check_model_genes(self.genes, adata.var_names)
        self.check_library_genes(adata.n_vars)
        return _normalised_log(adata, layer, self.target_sum, self.genes)

    def check_library_genes(self, n_vars: int) -> None:
        """Warn when an input has far fewer genes than the training input had: each cell's
        library size (the normalisation's divisor) is its total over all the input's genes,
        so cells cut down to the model's genes are normalised differently from training."""
        if self.n_genes_fit and n_vars < self.n_genes_fit / 2:
            warnings.warn(
                f"the input has {n_vars} genes, the training input had {self.n_genes_fit}: each cell's library "
                "size is its total count over all the input's genes, so cells cut down to the model's genes get "
                "other latents than their full profiles would. Give the cells with all their genes.",
                UserWarning, stacklevel=3)

    @staticmethod
    def library_size(adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Each cell's total counts over all genes (the size factor of the normalisation), float64."""
        X, _ = _counts_matrix(adata, layer)
        return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()

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
            "n_genes_fit": self.n_genes_fit,
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
            n_genes_fit=int(d.get("n_genes_fit", 0)),
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
