"""Reading and writing single-cell data by file suffix: the one dispatcher.

=====================  ==============================================================
``.h5ad``              :func:`anndata.read_h5ad` / ``AnnData.write_h5ad`` (gzip-compressed)
``.rds``               one Seurat object or SingleCellExperiment (``readRDS``/``saveRDS``)
``.rda`` / ``.RData``  the same through ``load``/``save`` (a file holding several
                       objects needs ``object_name=``)
=====================  ==============================================================

R objects are converted by :mod:`amedl.io.rds` (rpy2 and anndata2ri, R
embedded in Python); rpy2 is imported only when an R file is read or written,
so ``import amedl`` never starts R. Every write is atomic and gets the
permissions of the user's umask (a file written over keeps its own)
(:func:`amedl._utils.atomic_path`). A file that cannot be read raises
:class:`~amedl.errors.AMEDLInputError` naming it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._utils import atomic_path
from ..errors import AMEDLInputError, preview
from ._formats import FORMATS_TEXT, KINDS, R_SUFFIXES, SUFFIXES, RConversionError

__all__ = ["read", "write", "peek", "read_rds", "write_rds", "RConversionError", "SUFFIXES", "R_SUFFIXES", "KINDS"]


def __getattr__(name: str):
    if name in ("read_rds", "write_rds", "rds"):  # rpy2 and friends only when an R file is met
        from . import rds

        return rds if name == "rds" else getattr(rds, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _suffix(path: Path, verb: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise AMEDLInputError(f"cannot {verb} {path}: unknown suffix {path.suffix!r}; use {FORMATS_TEXT}")
    return suffix


def _readable(path: Path) -> None:
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise AMEDLInputError(f"{path} is a folder, not a {path.suffix} file")
    if not path.exists():
        raise FileNotFoundError(f"{path} is a broken symbolic link")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise AMEDLInputError(f"{path} is empty (0 bytes)")


def _not_h5ad(path: Path, why: str) -> AMEDLInputError:
    if "unable to lock file" in why:  # HDF5's file locking: another process has it open for writing
        return AMEDLInputError(f"{path} is open for writing in another process (HDF5 cannot lock it); wait until that "
                               "process has closed it, or read a copy")
    return AMEDLInputError(f"{path} is not a readable .h5ad file ({why}); is it truncated, or another format renamed?")


def peek(path: str | os.PathLike) -> dict | None:
    """A quick look at an input file before reading it whole.

    For ``.h5ad`` (through h5py, without reading the matrices): ``{"n_obs",
    "n_vars", "obs_columns", "layers", "has_raw", "var_names"}`` (``var_names``
    ``None`` where the index cannot be read this way). For R files ``None``
    (only R can look inside them). Raises the errors of :func:`read` for a
    missing, unreadable or non-HDF5 file.
    """
    path = Path(path)
    suffix = _suffix(path, "read")
    _readable(path)
    if suffix != ".h5ad":
        return None
    import h5py

    if not h5py.is_hdf5(path):
        raise _not_h5ad(path, "not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            obs, X = f.get("obs"), f.get("X")
            if not isinstance(obs, h5py.Group):
                return None  # an old layout: left to anndata
            cols = obs.attrs.get("column-order", [])
            cols = [c.decode() if isinstance(c, bytes) else str(c) for c in (list(cols) if len(cols) else [])]
            if isinstance(X, h5py.Group):
                shape = tuple(int(v) for v in X.attrs.get("shape", (0, 0)))
            elif isinstance(X, h5py.Dataset):
                shape = tuple(int(v) for v in X.shape)
            else:
                shape = (None, None)
            layers = list(f["layers"].keys()) if isinstance(f.get("layers"), h5py.Group) else []
            return {"n_obs": shape[0], "n_vars": shape[1] if len(shape) > 1 else None, "obs_columns": cols,
                    "layers": layers, "has_raw": "raw" in f, "var_names": _names(f.get("var"))}
    except OSError as exc:
        raise _not_h5ad(path, " ".join(str(exc).split())[:200]) from None


def _names(group) -> list[str] | None:
    """The index (names) of an h5ad ``obs``/``var`` group, or ``None`` if it is not laid out as expected."""
    import h5py

    try:
        index = group[group.attrs["_index"]]
        if not isinstance(index, h5py.Dataset):
            return None
        return [v.decode() if isinstance(v, bytes) else str(v) for v in index[()]]
    except Exception:  # an unusual layout: anndata will read it
        return None


def check_columns(info: dict | None, path, columns: dict, layer: str | None = None) -> None:
    """Check, from :func:`peek`'s look at a file, that ``columns`` (``{"--batch-key": name, ...}``,
    the option naming each) are columns of the cell metadata and ``layer`` is a layer."""
    if info is None:
        return
    for option, name in columns.items():
        if name is not None and name not in info["obs_columns"]:
            raise AMEDLInputError(
                f"{option} {name!r} is not a column of the cell metadata (obs) of {path}; "
                f"its columns are {preview(info['obs_columns'], 10) or 'none'}"
            )
    if layer is not None and layer not in info["layers"]:
        raise AMEDLInputError(f"--layer {layer!r} is not a layer of {path}; its layers are {preview(info['layers']) or 'none'}")


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

    Raises
    ------
    FileNotFoundError, PermissionError
        No such file; not readable.
    AMEDLInputError
        An unknown suffix, or a file that cannot be read as its suffix says
        (truncated, not HDF5, not an R file, no Seurat object in it ...).
    """
    path = Path(path)
    suffix = _suffix(path, "read")
    _readable(path)
    if suffix == ".h5ad":
        if kwargs:
            raise TypeError(f"{sorted(kwargs)} apply to R files, not to .h5ad")
        peek(path)
        import anndata as ad

        try:
            return ad.read_h5ad(path)
        except MemoryError:
            raise
        except Exception as exc:  # h5py, anndata and numpy all raise on a damaged file
            raise _not_h5ad(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    from .rds import read_rds

    return read_rds(path, **kwargs)


def write(adata, path: str | os.PathLike, kind: str | None = None, *, compression: str | None = "gzip", **kwargs: Any) -> Path:
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
    compression
        ``.h5ad`` only: the HDF5 compression of the matrices (``"gzip"``,
        ``"lzf"`` or ``None``).
    **kwargs
        R files only: passed to :func:`write_rds` (``template``, ``assay``,
        ``object_name``).

    Returns
    -------
    The path written.
    """
    path = Path(path)
    if _suffix(path, "write") != ".h5ad":
        from .rds import write_rds

        return write_rds(adata, path, kind=kind, **kwargs)
    if kind is not None or kwargs:
        raise TypeError("kind= and R options apply to R files (.rds/.rda), not to .h5ad")
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression=compression)
    return path
