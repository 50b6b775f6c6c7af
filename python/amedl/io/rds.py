"""Seurat objects and SingleCellExperiments ⇄ AnnData, through rpy2 and anndata2ri.

The R side (``rds.R`` beside this file, the same file as the R package's
``R/rds.R``) reads a Seurat object or a SingleCellExperiment into a plain
SingleCellExperiment that anndata2ri's converter turns into AnnData, and
writes what anndata2ri makes of an AnnData back as either kind. Here only
what anndata2ri leaves open is done: ``uns`` (R lists, data frames) both ways,
logical columns (anndata2ri reads them as integers), and the record of the
conversion in ``uns['amedl_io']`` that lets :func:`write_rds` put everything
back where it came from.

Conventions: ``X`` holds the counts (the ``counts`` assay or layer; else the
first assay / ``data``); other assays become ``layers``; ``colData`` /
``meta.data`` is ``obs``; reductions are ``obsm`` (``PCA``/``pca`` →
``X_pca``, ``AMEDL_FE``/``amedl_fe`` → ``X_amedl_fe``, likewise RE, UMAP,
TSNE; other names get scanpy's ``X_`` prefix, ``harmony`` → ``X_harmony``,
which writing takes off again); ``metadata()`` / ``@misc`` is ``uns``.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_path
from ..errors import AMEDLInputError

__all__ = ["read_rds", "write_rds", "RConversionError", "R_SUFFIXES", "KINDS"]

from ._formats import KINDS, R_SUFFIXES, RConversionError


def _ro():
    try:
        import anndata2ri  # noqa: F401
        import rpy2.robjects as ro
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading/writing R files needs rpy2 and anndata2ri (and R with SeuratObject / SingleCellExperiment): "
            "pip install '<amedl checkout>[r]'  (with R < 4.5: pip install 'rpy2>=3.5,<3.6' anndata2ri). "
            f"Import failed: {e}"
        ) from e
    return ro


@functools.lru_cache(maxsize=1)
def _env():
    """The R side (rds.R), evaluated once per process in a private environment."""
    ro = _ro()
    from rpy2.robjects.conversion import localconverter

    with localconverter(ro.default_converter):
        # rpy2 warns about a reticulate bug fixed in reticulate 1.24 whenever R loads it (Seurat does)
        ro.r('if (nzchar(system.file(package = "reticulate")) && utils::packageVersion("reticulate") >= "1.24") '
             'setHook(packageEvent("reticulate", "onLoad"), NULL, "replace")')
        env = ro.r("new.env()")
        ro.r["sys.source"](str(files(__package__) / "rds.R"), envir=env)
    return env


def _call(name: str, *args):
    """Call an R function of rds.R: R warnings become Python warnings, R errors RConversionError."""
    from rpy2.rinterface_lib.embedded import RRuntimeError

    env = _env()
    try:
        res = env[".amedl_call"](env[name], *args)
    except RRuntimeError as e:
        raise RConversionError(_without_r_call(str(e))) from e
    for w in res.rx2("warnings"):
        warnings.warn(f"R: {w}", stacklevel=3)
    return res.rx2("value")


def _without_r_call(message: str) -> str:
    """An R error's message without R's ``Error in f(x) :`` / ``Error:`` prefix, which names R internals."""
    return re.sub(r"^Error(?: in .+? :|:)\s*", "", message.strip(), count=1, flags=re.S).strip()


def _to_py(x) -> Any:
    """An R value to plain Python: named lists → dicts, data frames → DataFrames,
    length-1 vectors → scalars, NA → None."""
    import rpy2.rinterface as ri
    from rpy2.robjects import default_converter, numpy2ri, pandas2ri
    from rpy2.robjects.conversion import localconverter

    if x is None or isinstance(x, ri.NULLType):
        return None
    cls = set(x.rclass)
    if "data.frame" in cls or "factor" in cls:
        with localconverter(default_converter + pandas2ri.converter):
            return pandas2ri.rpy2py(x)
    if x.typeof == ri.RTYPES.VECSXP:
        values = [_to_py(v) for v in x]
        names = x.names
        if isinstance(names, ri.NULLType):
            return values
        return {str(n): v for n, v in zip(names, values)}
    if x.typeof == ri.RTYPES.STRSXP:
        arr = np.array([None if v is ri.NA_Character else str(v) for v in x], dtype=object)
    elif x.typeof in (ri.RTYPES.INTSXP, ri.RTYPES.LGLSXP, ri.RTYPES.REALSXP):
        with localconverter(default_converter + numpy2ri.converter):
            arr = np.asarray(numpy2ri.rpy2py(x))
        if x.typeof == ri.RTYPES.LGLSXP:
            arr = arr.astype(bool)
    else:
        warnings.warn(f"an R value of type {x.typeof} cannot be converted: left out", stacklevel=2)
        return None
    if arr.ndim == 1 and arr.size == 1:
        return arr[0].item() if isinstance(arr[0], np.generic) else arr[0]
    return arr


def _to_r(x, where: str = "uns"):
    """Plain Python to R (the reverse of :func:`_to_py`); entries that do not convert are dropped with a warning."""
    ro = _ro()
    from rpy2.robjects import default_converter, numpy2ri, pandas2ri
    from rpy2.robjects.conversion import localconverter

    if x is None:
        return ro.NULL
    if isinstance(x, dict):
        items = {}
        for k, v in x.items():
            try:
                items[str(k)] = _to_r(v, f"{where}[{k!r}]")
            except (TypeError, ValueError, NotImplementedError) as e:
                warnings.warn(f"{where}[{k!r}] is not written to R: {e}", stacklevel=2)
        return ro.vectors.ListVector(items) if items else ro.r("list()")
    if isinstance(x, (pd.DataFrame, pd.Series, pd.Categorical)):
        with localconverter(default_converter + pandas2ri.converter):
            return pandas2ri.py2rpy(x if not isinstance(x, pd.Categorical) else pd.Series(x))
    if isinstance(x, (str, bool, int, float, np.generic)):
        x = np.asarray([x])
    if isinstance(x, (list, tuple)):
        if not x:  # e.g. a list of names with none in it: character(0), as R's records hold it
            return ro.StrVector([])
        if not all(isinstance(v, (str, bool, int, float, np.generic)) for v in x):
            return ro.r["list"](*[_to_r(v, f"{where}[]") for v in x])
        x = np.asarray(x)
    if isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype.kind in "biuf":
        with localconverter(default_converter + numpy2ri.converter):
            return numpy2ri.py2rpy(x.astype(np.float64) if x.dtype.kind in "iu" else x)
    if isinstance(x, np.ndarray) and x.ndim == 1:
        kind = x.dtype.kind
        if kind in "OUS":
            return ro.StrVector([ro.NA_Character if v is None else str(v) for v in x])
        if kind == "b":
            return ro.BoolVector(x.tolist())
        if kind in "iu" and (not x.size or np.abs(x).max() < 2**31 - 1):
            return ro.IntVector(x.tolist())
        if kind in "iuf":
            return ro.FloatVector(x.astype(np.float64).tolist())
    raise TypeError(f"cannot convert a {type(x).__name__} to R")


def read_rds(path: str | os.PathLike, object_name: str | None = None, assay: str | None = None):
    """Read a Seurat object or a SingleCellExperiment from an R file into AnnData.

    Parameters
    ----------
    path
        ``.rds`` (one object) or ``.rda`` / ``.RData`` (holding exactly one
        Seurat object or SingleCellExperiment, or name it with ``object_name``).
    object_name
        ``.rda`` files holding several objects: which one to read.
    assay
        Seurat only: the assay to read (default: the default assay).

    Returns
    -------
    AnnData (cells × genes), counts in ``X`` (sparse stays sparse); the
    conversion is recorded in ``uns['amedl_io']``.

    Raises
    ------
    RConversionError
        The file holds no Seurat object / SingleCellExperiment, or it does not convert.
    ImportError
        rpy2 / anndata2ri are not installed (the message says how to install them).
    """
    ro = _ro()
    import anndata2ri
    from rpy2.robjects.conversion import localconverter

    path = Path(path).resolve()
    if path.suffix.lower() not in R_SUFFIXES:
        raise ValueError(f"read_rds reads .rds / .rda / .RData files, not {path.name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if object_name is not None and path.suffix.lower() == ".rds":
        raise AMEDLInputError(f"object_name = {object_name!r} picks one of the objects of an .rda / .RData file, but "
                              f"{path.name} is an .rds, which holds one object: drop object_name (command line --object-name)")
    with localconverter(ro.default_converter):
        res = _call(".amedl_rds_read", str(path), _to_r(object_name), _to_r(assay))
    with localconverter(anndata2ri.converter):
        adata = res.rx2("sce")  # converted by anndata2ri on the way out
    info = _to_py(res.rx2("info"))
    for frame, cols in ((adata.obs, info.pop("logical_obs", None)), (adata.var, info.pop("logical_var", None))):
        logical = set(np.atleast_1d(cols if cols is not None else []).tolist())
        for col in frame.columns:
            v = frame[col]
            if col in logical:  # anndata2ri reads R logicals as int32 with NA as the smallest int32
                na = v.to_numpy() == np.iinfo(np.int32).min
                frame[col] = pd.array(np.where(na, None, v.to_numpy() == 1), dtype="boolean") if na.any() else v == 1
            elif isinstance(v.dtype, pd.Int32Dtype) and not v.isna().any():
                frame[col] = v.to_numpy(dtype=np.int32)
    adata.obs.index, adata.var.index = adata.obs.index.astype(object), adata.var.index.astype(object)
    adata.uns = _to_py(res.rx2("uns")) or {}
    info = {k: v for k, v in info.items() if v is not None and not (isinstance(v, (dict, list)) and not v)}
    adata.uns["amedl_io"] = {**info, "source": str(path)}
    return adata


def write_rds(
    adata,
    path: str | os.PathLike,
    kind: str | None = None,
    *,
    template: str | os.PathLike | None = "auto",
    assay: str | None = None,
    object_name: str | None = None,
) -> Path:
    """Write an AnnData as a Seurat object or a SingleCellExperiment (``.rds`` / ``.rda``), atomically.

    Parameters
    ----------
    adata
        Cells × genes AnnData; ``X`` is written as the counts (or as the
        assay it was read from, ``uns['amedl_io']['x_name']``).
    path
        ``.rds`` (``saveRDS``) or ``.rda`` / ``.RData`` (``save``).
    kind
        ``"seurat"`` or ``"sce"``; default the kind it was read as, else ``"sce"``.
    template
        An R file whose object is updated instead of building a new one:
        ``"auto"`` (default) uses the file the AnnData was read from when it
        still exists, is of the same kind and holds the same cells; ``None``
        always builds a new object. An updated object keeps its assays,
        graphs, commands etc.; only the cell metadata, the reductions and
        ``uns['amedl']`` are written into it (the right thing after
        ``amedl fit`` on an R file), and metadata columns that were left out
        on reading (dates, lists) stay as they were. When ``"auto"`` finds the
        file but cannot use it (e.g. the cells were subset), a warning says
        why and a new object is written.
    assay
        Seurat: the assay to create (default: the one it was read from, else ``"RNA"``).
    object_name
        ``.rda`` only: the R name of the saved object (default: the name it
        was read under, else ``sce`` / ``seurat``). Writing into an existing
        ``.rda`` replaces that object and keeps the file's other objects; a
        new ``.rda`` written from a template ``.rda`` keeps the template's.

    Notes
    -----
    ``obsm['X_amedl_fe']`` / ``['X_amedl_re']`` become the Seurat reductions
    ``amedl_fe`` / ``amedl_re`` (keys ``amedlfe_`` / ``amedlre_``) or the SCE
    reducedDims ``AMEDL_FE`` / ``AMEDL_RE``. Seurat does not allow ``_`` in
    feature names: it gets ``-`` (with a warning). Layers a Seurat v3/v4
    assay has no place for (anything but ``data``) are left out with a warning.
    """
    ro = _ro()
    import anndata as ad
    import anndata2ri
    import scipy.sparse as sp
    from rpy2.robjects.conversion import localconverter

    path = Path(path).resolve()
    if path.suffix.lower() not in R_SUFFIXES:
        raise ValueError(f"write_rds writes .rds / .rda / .RData files, not {path.name!r}")
    info = dict(adata.uns.get("amedl_io") or {})
    kind = {"singlecellexperiment": "sce"}.get(str(kind).lower(), str(kind).lower()) if kind else info.get("kind", "sce")
    if kind not in KINDS:
        raise ValueError(f"kind must be 'seurat' or 'sce', not {kind!r}")
    if adata.X is None:
        raise RConversionError("adata.X is empty: there is no expression matrix to write")
    same_kind = info.get("kind") == kind
    object_name = object_name or (same_kind and info.get("object_name")) or kind
    assay = assay or (same_kind and info.get("assay")) or "RNA"
    tmpl = None
    if template == "auto":
        src = info.get("source")
        tmpl = Path(src) if src and same_kind and Path(src).is_file() else None
    elif template is not None:
        tmpl = Path(template)
        if not tmpl.is_file():
            raise FileNotFoundError(f"template file not found: {tmpl}")

    obsm = {}
    for key, m in adata.obsm.items():
        m = m.to_numpy() if isinstance(m, pd.DataFrame) else (m.toarray() if sp.issparse(m) else np.asarray(m))
        if m.ndim != 2 or m.dtype.kind not in "biuf":
            warnings.warn(f"obsm[{key!r}] is not a numeric matrix: not written", stacklevel=2)
            continue
        obsm[key] = m.astype(np.float64)
    light = ad.AnnData(X=adata.X, obs=adata.obs, var=adata.var, layers=dict(adata.layers), obsm=obsm)
    info.setdefault("x_name", "counts")
    with localconverter(anndata2ri.converter):
        sce = ro.conversion.get_conversion().py2rpy(light)
    with localconverter(ro.default_converter):
        r_uns = _to_r({k: v for k, v in adata.uns.items() if k != "amedl_io"})
        r_info = _to_r(info, "uns['amedl_io']")
        tmpl_name = info.get("object_name") if tmpl is not None and str(tmpl) == info.get("source") else None
        with atomic_path(path) as tmp:
            # an .rda holds other objects too: keep those of the file written into, else of the template's
            keep_from = None
            if path.suffix.lower() != ".rds":
                if path.is_file() and path.stat().st_size:
                    keep_from = str(path)
                elif tmpl is not None and tmpl.suffix.lower() != ".rds":
                    keep_from = str(tmpl)
            _call(".amedl_rds_write", sce, r_uns, r_info, kind, str(tmp), object_name,
                  _to_r(None if tmpl is None else str(tmpl)), _to_r(tmpl_name), assay, template not in (None, "auto"),
                  _to_r(keep_from))
    return path
