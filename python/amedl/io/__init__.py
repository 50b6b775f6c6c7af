"""Reading and writing single-cell data by file suffix: the one dispatcher.

=====================  ==============================================================
``.h5ad``              :func:`anndata.read_h5ad` / ``AnnData.write_h5ad``
``.rds``               one Seurat object or SingleCellExperiment (``readRDS``/``saveRDS``)
``.rda`` / ``.RData``  the same through ``load``/``save`` (a file holding several
                       objects needs ``object_name=``)
=====================  ==============================================================

R objects are converted by :mod:`amedl.io.rds` (rpy2 and anndata2ri, R
embedded in Python); rpy2 is imported only when an R file is read or written,
so ``import amedl`` never starts R. Every write is atomic and gets the
permissions of the user's umask (:func:`amedl._utils.atomic_path`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._utils import atomic_path
from .rds import KINDS, R_SUFFIXES, RConversionError, read_rds, write_rds

__all__ = ["read", "write", "read_rds", "write_rds", "RConversionError", "SUFFIXES", "R_SUFFIXES", "KINDS"]

#: Every suffix :func:`read` and :func:`write` accept (lower case).
SUFFIXES = (".h5ad",) + R_SUFFIXES


def _suffix(path: Path, verb: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"cannot {verb} {path}: unknown suffix {path.suffix!r}; use .h5ad, or .rds / .rda / .RData "
            "holding a Seurat object or a SingleCellExperiment"
        )
    return suffix


def read(path: str | os.PathLike, **kwargs: Any):
    """Read single-cell data into an :class:`~anndata.AnnData`, by file suffix.

    Parameters
    ----------
    path
        ``.h5ad``, or ``.rds`` / ``.rda`` / ``.RData`` holding a Seurat object
        or a SingleCellExperiment.
    **kwargs
        For R files, passed to :func:`read_rds` (``object_name``, ``assay``).

    Returns
    -------
    AnnData with the counts in ``X``.
    """
    path = Path(path)
    suffix = _suffix(path, "read")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if suffix == ".h5ad":
        if kwargs:
            raise TypeError(f"{sorted(kwargs)} apply to R files, not to .h5ad")
        import anndata as ad

        return ad.read_h5ad(path)
    return read_rds(path, **kwargs)


def write(adata, path: str | os.PathLike, kind: str | None = None, **kwargs: Any) -> Path:
    """Write an AnnData by file suffix, atomically.

    Parameters
    ----------
    adata
        The AnnData to write (not modified).
    path
        Target file: ``.h5ad``, ``.rds``, ``.rda`` or ``.RData``.
    kind
        R files only: ``"seurat"`` or ``"sce"`` (default: the kind it was
        read as, else ``"sce"``).
    **kwargs
        R files only: passed to :func:`write_rds` (``template``, ``assay``,
        ``object_name``).

    Returns
    -------
    The path written.
    """
    path = Path(path)
    if _suffix(path, "write") != ".h5ad":
        return write_rds(adata, path, kind=kind, **kwargs)
    if kind is not None or kwargs:
        raise TypeError("kind= and R options apply to R files (.rds/.rda), not to .h5ad")
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
