"""Minibatches: CSR rows sliced and densified one minibatch at a time, on the host or on a device."""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from .preprocess import Preprocessor


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


class RowBlocks:
    """What a loader reads a matrix through when it is not in memory (see :mod:`amedl.data.backed`):
    ``shape`` and ``read_log(lo, hi)``, the log1p-normalised CSR of rows ``lo:hi``."""

    shape: tuple[int, int]

    def read_log(self, lo: int, hi: int) -> sp.csr_matrix:  # pragma: no cover - the interface
        raise NotImplementedError


def block_order(rows: np.ndarray, rng: np.random.Generator, block_size: int, buffer_blocks: int,
                return_bounds: bool = False):
    """An epoch's order of ``rows`` for reading from disk: the rows are grouped in blocks of
    ``block_size`` contiguous row numbers, the blocks are shuffled, and the rows of each
    run of ``buffer_blocks`` consecutive blocks (one shuffle buffer) are shuffled together.
    With ``return_bounds`` also the positions where the buffers start (and the end)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # the order depends on the set of rows only
    if len(rows) == 0:
        return (rows, np.zeros(1, np.int64)) if return_bounds else rows
    block_of = rows // block_size
    starts = np.flatnonzero(np.r_[True, block_of[1:] != block_of[:-1]])
    groups = np.split(rows, starts[1:])
    picked = rng.permutation(len(groups))
    out = []
    for lo in range(0, len(picked), buffer_blocks):
        buffer = np.concatenate([groups[g] for g in picked[lo : lo + buffer_blocks]])
        out.append(buffer[rng.permutation(len(buffer))])
    order = np.concatenate(out)
    return (order, np.cumsum([0] + [len(o) for o in out])) if return_bounds else order


class Minibatch(NamedTuple):
    """One minibatch: ``x`` the scaled model input (cells x genes, float32),
    ``batch`` the integer batch codes (-1: a batch not seen in training),
    ``counts`` the raw counts of the model genes (float32) and ``library`` each
    cell's total counts over all genes, when the loader was given library
    sizes, else ``None``."""

    x: torch.Tensor
    batch: torch.Tensor
    counts: torch.Tensor | None = None
    library: torch.Tensor | None = None


class CSRLoader:
    """Minibatches of a CSR matrix: rows are sliced and densified one minibatch at a time.

    ``X`` is a SciPy CSR matrix (sliced on the host) or a :class:`DeviceCSR`
    (sliced on its device) of log1p-normalised expression. ``rows`` selects the
    cells to iterate over (default: all) without copying the matrix. Yields
    :class:`Minibatch` tuples of torch tensors on ``device``.

    ``library`` (each cell's total counts over all genes, the size factor of the
    normalisation) makes the loader also yield the raw counts of the model
    genes, recovered exactly from the normalised values
    (``round(expm1(x) * library / target_sum)``), so that count likelihoods need
    no second copy of the data.
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
        library: np.ndarray | None = None,
        blocks: tuple[int | None, int] | None = None,
    ):
        if not isinstance(X, (DeviceCSR, RowBlocks)) and not sp.isspmatrix_csr(X):
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
        self.blocks = blocks if blocks and blocks[0] else None  # (None, n): single rows shuffled in memory
        self._center = torch.as_tensor(prep.center, device=self.device)
        self._inv_scale = torch.as_tensor(1.0 / prep.scale, device=self.device)
        self._library = None
        self._target_sum = float(prep.target_sum)
        if library is not None:
            library = np.asarray(library, dtype=np.float32)
            if library.shape != (X.shape[0],):
                raise ValueError(f"library has shape {library.shape}; expected one value per cell ({X.shape[0]})")
            self._library = torch.as_tensor(library, device=X.device if isinstance(X, DeviceCSR) else "cpu")

    def __len__(self) -> int:
        n = len(self.rows)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def _minibatch(self, x_log: torch.Tensor, codes: torch.Tensor, library: torch.Tensor | None) -> Minibatch:
        counts = None
        if library is not None:
            library = library.to(self.device)
            counts = torch.round(torch.expm1(x_log) * (library / self._target_sum)[:, None])
        x = (x_log - self._center) * self._inv_scale
        return Minibatch(x, codes, counts, library)

    def __iter__(self) -> Iterator[Minibatch]:
        n = len(self.rows)
        if self.shuffle:
            rows = block_order(self.rows, self.rng, *self.blocks) if self.blocks else self.rows[self.rng.permutation(n)]
        else:
            rows = self.rows
        if isinstance(self.X, DeviceCSR):
            yield from self._iter_on_device(rows)
            return
        contiguous = not self.shuffle and n == self.X.shape[0]
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            idx = slice(lo, hi) if contiguous else np.sort(rows[lo:hi])
            x = torch.from_numpy(self.X[idx].toarray()).to(self.device, non_blocking=True)
            library = None if self._library is None else self._library[torch.from_numpy(np.arange(lo, hi) if contiguous else idx)]
            yield self._minibatch(x, torch.from_numpy(self.codes[idx]).to(self.device), library)

    def _iter_on_device(self, rows: np.ndarray) -> Iterator[Minibatch]:
        rows = torch.as_tensor(rows, device=self.X.device)
        for i in range(len(self)):
            idx = rows[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.X.dense_rows(idx).to(self.device)
            library = None if self._library is None else self._library[idx]
            yield self._minibatch(x, self._codes_on_device[idx].to(self.device), library)
