"""Minibatches: CSR rows sliced and densified one minibatch at a time, on the host or on a device."""
from __future__ import annotations

from typing import Iterator

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
