"""Reading and writing single-cell data: ``.h5ad`` and R objects (``.rds``/``.rda``).

R objects -- a Seurat object or a SingleCellExperiment -- are converted through
rpy2 and anndata2ri (R embedded in Python). Both are imported only inside the
functions that need them, so ``import amedl`` never starts R; install them with
``pip install 'amedl[r]'`` (rpy2 < 3.6 for R < 4.5).

Conventions (R → AnnData):

* ``X`` holds the counts (the ``counts`` assay of a SingleCellExperiment, the
  ``counts`` layer of the Seurat assay); when there are no counts, the first
  assay / the ``data`` layer is used. The other SCE assays become
  ``layers`` under their own names; Seurat's ``data`` layer becomes
  ``layers['data']`` when it differs from the counts.
* Cell metadata (``colData`` / ``meta.data``) becomes ``obs``, gene metadata
  ``var``; factors become categoricals (levels and order kept), integers stay
  integers (nullable ``Int32`` when there are ``NA``\\ s).
* Reductions go to ``obsm``: ``PCA`` / ``pca`` → ``X_pca``, ``UMAP`` / ``umap`` →
  ``X_umap``, ``TSNE`` / ``tsne`` → ``X_tsne``, ``AMEDL_FE`` / ``amedl_fe`` →
  ``X_amedl_fe`` (likewise RE); other names are kept.
* ``metadata()`` (SCE) or ``@misc`` (Seurat) becomes ``uns`` as far as it
  converts; what the reader did is recorded in ``uns['amedl_io']`` so that
  :func:`write` can put things back where they came from.
* Sparse matrices stay sparse (``dgCMatrix`` ⇄ CSR cells × genes).

Writing AnnData → R puts ``obsm['X_amedl_fe']`` / ``['X_amedl_re']`` as the Seurat
reductions ``amedl_fe`` / ``amedl_re`` (keys ``amedlfe_`` / ``amedlre_``) or the
SCE reducedDims ``AMEDL_FE`` / ``AMEDL_RE``. All writes are atomic: a temporary
file in the target's folder is renamed over the target only once complete.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._utils import atomic_path

__all__ = ["read", "write", "read_rds", "write_rds", "RConversionError"]

R_SUFFIXES = (".rds", ".rda", ".rdata")
KINDS = ("seurat", "sce")

# obsm key <-> SCE reducedDim name <-> Seurat reduction name / key
_KNOWN_REDUCTIONS = {
    # obsm key: (SCE name, Seurat name, Seurat key)
    "X_amedl_fe": ("AMEDL_FE", "amedl_fe", "amedlfe_"),
    "X_amedl_re": ("AMEDL_RE", "amedl_re", "amedlre_"),
    "X_pca": ("PCA", "pca", "PC_"),
    "X_umap": ("UMAP", "umap", "UMAP_"),
    "X_tsne": ("TSNE", "tsne", "tSNE_"),
}


class RConversionError(ValueError):
    """An R object or file that cannot be converted (the message says why and what to do)."""


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def read(path: str | os.PathLike, **kwargs: Any):
    """Read single-cell data into an :class:`~anndata.AnnData`, by file suffix.

    Parameters
    ----------
    path
        ``.h5ad`` (read with :func:`anndata.read_h5ad`), or ``.rds`` / ``.rda`` /
        ``.RData`` holding a Seurat object or a SingleCellExperiment (read with
        :func:`read_rds`).
    **kwargs
        Passed to :func:`read_rds` for R files (``object_name``, ``assay``).

    Returns
    -------
    AnnData with counts in ``X``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        import anndata as ad

        return ad.read_h5ad(path)
    if suffix in R_SUFFIXES:
        return read_rds(path, **kwargs)
    raise ValueError(
        f"cannot read {path}: unknown suffix {path.suffix!r}; "
        "use .h5ad, or .rds/.rda holding a Seurat object or a SingleCellExperiment"
    )


def write(adata, path: str | os.PathLike, kind: str | None = None, **kwargs: Any) -> Path:
    """Write an AnnData to ``.h5ad`` or to an R file (``.rds`` / ``.rda``), atomically.

    Parameters
    ----------
    adata
        The AnnData to write.
    path
        Target file; the suffix picks the format.
    kind
        For R files: ``"seurat"`` or ``"sce"``. Default: the kind the AnnData
        was read from (``adata.uns['amedl_io']['kind']``), else ``"sce"``.
    **kwargs
        Passed to :func:`write_rds` for R files (``template``, ``assay``,
        ``object_name``).

    Returns
    -------
    The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        if kind is not None:
            raise ValueError("kind= applies to R files (.rds/.rda), not to .h5ad")
        with atomic_path(path) as tmp:
            adata.write_h5ad(tmp)
        return path
    if suffix in R_SUFFIXES:
        return write_rds(adata, path, kind=kind, **kwargs)
    raise ValueError(f"cannot write {path}: unknown suffix {path.suffix!r}; use .h5ad, .rds or .rda")


def read_rds(path: str | os.PathLike, object_name: str | None = None, assay: str | None = None):
    """Read a Seurat object or a SingleCellExperiment from an R file into AnnData.

    Parameters
    ----------
    path
        ``.rds`` (one object, :func:`readRDS`) or ``.rda`` / ``.RData``
        (:func:`load`; the file must hold exactly one Seurat object or
        SingleCellExperiment, or name it with ``object_name``).
    object_name
        For ``.rda`` files holding several objects: which one to read.
    assay
        Seurat only: the assay to read (default: the object's default assay).

    Returns
    -------
    AnnData (cells × genes), counts in ``X`` (sparse stays sparse); the
    conversion is recorded in ``uns['amedl_io']`` (kind, source file, assay,
    the name of the assay/layer that went into ``X``, reduction keys).

    Raises
    ------
    RConversionError
        When the file holds no Seurat object / SingleCellExperiment, or the
        object cannot be converted.
    ImportError
        When rpy2 / anndata2ri are not installed (the message says how to
        install them).
    """
    import anndata as ad

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    ro = _ro()
    with _localconv():
        res = _call("amedl_read", str(path), _r_arg(object_name), _r_arg(assay))
    flat = _rlist(res)
    info = {k: _r_to_py(v) for k, v in _rlist(flat["info"]).items()}
    info = {k: v for k, v in info.items() if v is not None}
    for w in np.atleast_1d(info.pop("warnings", [])):
        if isinstance(w, str) and w:
            warnings.warn(w, stacklevel=2)

    X = _matrix(flat["X"], transpose=True)
    cells = [str(c) for c in _strings(flat["cells"])]
    genes = [str(g) for g in _strings(flat["genes"])]
    layers = {str(k): _matrix(v, transpose=True) for k, v in _rlist(flat["layers"]).items()}
    obs = _df_from_r(flat["obs"], index=cells)
    var = _df_from_r(flat["var"], index=genes)
    obsm = {}
    for name, m in _rlist(flat["obsm"]).items():
        key = _obsm_key(str(name))
        arr = _matrix(m, transpose=False)
        obsm[key] = np.asarray(arr.toarray() if sp.issparse(arr) else arr)
    uns = _r_to_py(flat["uns"])
    if not isinstance(uns, dict):
        uns = {}
    keys = _r_to_py(flat["reduction_keys"])
    colnms = _r_to_py(flat["reduction_colnames"])
    del ro

    info["source"] = str(path)
    info["reduction_keys"] = {_obsm_key(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}
    if isinstance(colnms, dict) and colnms:
        info["reduction_colnames"] = {_obsm_key(k): [str(c) for c in np.atleast_1d(v)] for k, v in colnms.items()}
    uns["amedl_io"] = info
    adata = ad.AnnData(X=X, obs=obs, var=var, layers=layers, obsm=obsm, uns=uns)
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
    """Write an AnnData as a Seurat object or a SingleCellExperiment (``.rds``/``.rda``).

    Parameters
    ----------
    adata
        Cells × genes AnnData; ``X`` is written as the counts (or as the
        assay/layer it was read from, ``uns['amedl_io']['x_name']``).
    path
        ``.rds`` (:func:`saveRDS`) or ``.rda`` (:func:`save`). Written atomically.
    kind
        ``"seurat"`` or ``"sce"``; default the kind recorded when the AnnData was
        read (``uns['amedl_io']['kind']``), else ``"sce"``.
    template
        An R file whose object is updated instead of building a new one:
        ``"auto"`` (default) uses the file the AnnData was read from when it
        still exists, is of the requested kind and holds exactly the same cells;
        ``None`` always builds a new object from the AnnData. When a template is
        used, its assays, graphs, commands etc. are kept and only the cell
        metadata (``obs``), the reductions (``obsm``) and ``uns['amedl']`` are
        written into it -- the right thing after ``amedl fit`` on an R file.
    assay
        Seurat: name of the assay to create (default: the assay it was read
        from, else ``"RNA"``).
    object_name
        ``.rda`` only: the R name of the saved object (default ``sce`` /
        ``seurat``, or the name it was read under).

    Returns
    -------
    The path written.

    Notes
    -----
    ``obsm['X_amedl_fe']`` / ``['X_amedl_re']`` become the Seurat reductions
    ``amedl_fe`` / ``amedl_re`` (keys ``amedlfe_`` / ``amedlre_``) or the SCE
    reducedDims ``AMEDL_FE`` / ``AMEDL_RE``; ``X_pca``, ``X_umap``, ``X_tsne``
    map to the usual names, other ``X_name`` keys to ``name``. Seurat does not
    allow ``_`` in feature names: it replaces them with ``-`` (a warning says
    so). Layers a Seurat v3/v4 assay has no place for (anything but ``data``)
    are left out with a warning.
    """
    path = Path(path).resolve()
    suffix = path.suffix.lower()
    if suffix not in R_SUFFIXES:
        raise ValueError(f"write_rds writes .rds or .rda files, not {path.name!r}")
    info = dict(adata.uns.get("amedl_io", {}) or {})
    kind = (kind or info.get("kind") or "sce").lower()
    if kind in ("singlecellexperiment", "single_cell_experiment"):
        kind = "sce"
    if kind not in KINDS:
        raise ValueError(f"kind must be 'seurat' or 'sce', not {kind!r}")
    if object_name is None:
        object_name = info.get("object_name") or ("seurat" if kind == "seurat" else "sce")
    if assay is None:
        assay = info.get("assay") if info.get("kind") == "seurat" else None
        assay = assay or "RNA"

    ro = _ro()

    tmpl = None
    if template == "auto":
        src = info.get("source")
        if src and info.get("kind") == kind and Path(src).exists():
            tmpl = Path(src)
    elif template is not None:
        tmpl = Path(template)
        if not tmpl.exists():
            raise FileNotFoundError(f"template file not found: {tmpl}")

    obs = adata.obs
    obsm_items = []
    keys_recorded = info.get("reduction_keys", {}) or {}
    for key in adata.obsm.keys():
        m = adata.obsm[key]
        if isinstance(m, pd.DataFrame):
            if not all(pd.api.types.is_numeric_dtype(t) for t in m.dtypes):
                warnings.warn(f"obsm[{key!r}] has non-numeric columns: not written", stacklevel=2)
                continue
            m = m.to_numpy()
        if sp.issparse(m):
            m = m.toarray()
        m = np.asarray(m, dtype=np.float64)
        if m.ndim != 2:
            warnings.warn(f"obsm[{key!r}] is not a matrix: not written", stacklevel=2)
            continue
        sce_name, seurat_name, seurat_key = _reduction_names(key, keys_recorded)
        obsm_items.append((key, sce_name if kind == "sce" else seurat_name, seurat_key, m))

    uns_amedl = adata.uns.get("amedl")
    with _localconv():
        r_obs = _df_to_r(obs)
        r_obsm = _named_list([(n, _mat_to_r(m, rownames=list(map(str, adata.obs_names)))) for _, n, _, m in obsm_items])
        r_keys = _named_list([(n, ro.StrVector([k])) for _, n, k, _ in obsm_items])
        cn_rec = info.get("reduction_colnames", {}) or {}
        r_colnms = _named_list(
            [(n, ro.StrVector([str(c) for c in cn_rec[key]])) for key, n, _, _ in obsm_items if key in cn_rec]
        )
        r_uns_amedl = _py_to_r(uns_amedl) if uns_amedl is not None else ro.NULL

        obj = ro.NULL
        if tmpl is not None:
            res = _call(
                "amedl_update",
                str(tmpl),
                kind,
                _r_arg(info.get("object_name") if tmpl == Path(str(info.get("source", ""))) else None),
                _r_arg(info.get("assay")),
                ro.StrVector(list(map(str, adata.obs_names))),
                r_obs,
                r_obsm,
                r_keys,
                r_colnms,
                r_uns_amedl,
            )
            obj = res.rx2("object")
            msg = res.rx2("message")
            if _is_null(obj):
                if template != "auto":
                    raise RConversionError(f"cannot use template {tmpl}: {msg[0]}")
                obj = ro.NULL
        if _is_null(obj):
            obj = _build_r_object(adata, kind, assay, info, r_obs, r_obsm, r_keys, r_colnms)

        with atomic_path(path) as tmp:
            _call("amedl_save", obj, str(tmp), suffix, str(object_name))
    return path


# --------------------------------------------------------------------------- #
# building R objects
# --------------------------------------------------------------------------- #
def _build_r_object(adata, kind, assay, info, r_obs, r_obsm, r_keys, r_colnms):
    ro = _ro()
    cells = list(map(str, adata.obs_names))
    genes = list(map(str, adata.var_names))
    if adata.X is None:
        raise RConversionError("adata.X is empty: there is no expression matrix to write")
    x_name = str(info.get("x_name") or "counts")
    X = _mat_to_r(_genes_by_cells(adata.X), rownames=genes, colnames=cells)
    layer_items = [
        (str(k), _mat_to_r(_genes_by_cells(v), rownames=genes, colnames=cells))
        for k, v in adata.layers.items()
        if k is not None
    ]
    uns = {k: v for k, v in adata.uns.items() if k != "amedl_io"}
    r_uns = _py_to_r(uns, where="uns")
    r_var = _df_to_r(adata.var)
    vf = info.get("variable_features_column")
    res = _call(
        "amedl_build",
        kind,
        X,
        ro.StrVector([x_name]),
        _named_list(layer_items),
        r_obs,
        r_var,
        r_obsm,
        r_keys,
        r_colnms,
        r_uns,
        ro.StrVector([assay]),
        _r_arg(vf if isinstance(vf, str) else None),
        ro.StrVector([str(g) for g in np.atleast_1d(info["variable_features"])]) if "variable_features" in info else ro.NULL,
    )
    for w in _strings(res.rx2("warnings")):
        warnings.warn(str(w), stacklevel=3)
    return res.rx2("object")


def _genes_by_cells(m):
    """cells × genes (sparse or dense) → genes × cells, CSC for sparse (→ dgCMatrix)."""
    if sp.issparse(m):
        m = sp.csc_matrix(m.T)
        if not np.issubdtype(m.dtype, np.floating):
            m = m.astype(np.float64)
        return m
    m = np.asarray(m)
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    return m.T


def _reduction_names(key: str, recorded: dict) -> tuple[str, str, str]:
    """obsm key → (SCE reducedDim name, Seurat reduction name, Seurat key)."""
    if key in _KNOWN_REDUCTIONS:
        sce_name, seurat_name, seurat_key = _KNOWN_REDUCTIONS[key]
    else:
        base = key[2:] if key.startswith("X_") and len(key) > 2 else key
        sce_name, seurat_name = base, base
        alnum = "".join(ch for ch in base if ch.isalnum()) or "dim"
        if not alnum[0].isalpha():
            alnum = "d" + alnum
        seurat_key = alnum + "_"
    rec = recorded.get(key)
    if isinstance(rec, str) and rec.endswith("_") and key not in ("X_amedl_fe", "X_amedl_re"):
        seurat_key = rec
    return sce_name, seurat_name, seurat_key


def _obsm_key(r_name: str) -> str:
    """SCE reducedDim / Seurat reduction name → obsm key."""
    for key, (sce_name, seurat_name, _) in _KNOWN_REDUCTIONS.items():
        if r_name in (sce_name, seurat_name):
            return key
    return r_name


# --------------------------------------------------------------------------- #
# rpy2 plumbing
# --------------------------------------------------------------------------- #
def _ro():
    try:
        import rpy2.robjects as ro
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading/writing .rds files needs rpy2 and anndata2ri (and R with SeuratObject / "
            "SingleCellExperiment): pip install 'amedl[r]'  (with R < 4.5: pip install 'rpy2>=3.5,<3.6' anndata2ri). "
            f"Import failed: {e}"
        ) from e
    return ro


def _localconv():
    ro = _ro()
    from rpy2.robjects.conversion import localconverter

    return localconverter(ro.default_converter)


@functools.lru_cache(maxsize=1)
def _r_env():
    """The R helper functions, evaluated once per process in a private environment."""
    ro = _ro()
    try:
        import anndata2ri  # noqa: F401  (checked here so the error is early and clear)
    except ImportError as e:  # pragma: no cover
        raise ImportError("reading/writing .rds files needs anndata2ri: pip install 'amedl[r]'") from e
    with _localconv():
        # rpy2 announces a reticulate bug fixed in reticulate 1.24; silence it for fixed versions
        ro.r(
            'if (nzchar(system.file(package = "reticulate")) && utils::packageVersion("reticulate") >= "1.24") '
            'setHook(packageEvent("reticulate", "onLoad"), NULL, "replace")'
        )
        env = ro.r("new.env()")
        ro.r["eval"](ro.r["parse"](text=_R_CODE), envir=env)
    return env


def _call(name: str, *args):
    """Call an R helper; R warnings become Python warnings, R errors become RConversionError."""
    from rpy2.rinterface_lib.embedded import RRuntimeError

    env = _r_env()
    try:
        res = env["amedl_call"](env[name], *args)
    except RRuntimeError as e:
        raise RConversionError(str(e).strip()) from e
    for w in _strings(res.rx2("warnings")):
        warnings.warn(f"R: {w}", stacklevel=3)
    return res.rx2("value")


def _r_arg(x):
    ro = _ro()
    if x is None:
        return ro.NULL
    return ro.StrVector([str(x)])


def _rlist(x) -> dict:
    """R named list → dict of R objects (order kept)."""
    ro = _ro()
    if _is_null(x):
        return {}
    names = x.names
    if _is_null(names):
        return {str(i): x[i] for i in range(len(x))}
    return {str(n): x[i] for i, n in enumerate(names)}


def _strings(x) -> list:
    ro = _ro()
    if _is_null(x):
        return []
    return [str(s) for s in x]


def _matrix(x, transpose: bool):
    """R matrix (``dgCMatrix`` or base) → scipy CSR / numpy; ``transpose`` turns genes×cells into cells×genes."""
    ro = _ro()
    from rpy2.robjects import numpy2ri
    from rpy2.robjects.conversion import localconverter

    rcls = set(x.rclass)
    if "dgCMatrix" in rcls:
        # anndata2ri's scipy2ri converter: dgCMatrix → csc_matrix without copying through dense
        from anndata2ri import scipy2ri

        with localconverter(ro.default_converter + scipy2ri.converter):
            m = ro.conversion.get_conversion().rpy2py(x)
        return sp.csr_matrix(m.T) if transpose else sp.csr_matrix(m)
    with localconverter(ro.default_converter + numpy2ri.converter):
        arr = np.asarray(ro.conversion.get_conversion().rpy2py(x))
    if arr.ndim != 2:
        raise RConversionError(f"expected a matrix, got an R object of class {sorted(rcls)}")
    return np.ascontiguousarray(arr.T) if transpose else arr


def _mat_to_r(m, rownames=None, colnames=None):
    """numpy / scipy → R ``matrix`` / ``dgCMatrix`` (same orientation), with dimnames."""
    ro = _ro()
    from rpy2.robjects import numpy2ri
    from rpy2.robjects.conversion import localconverter

    conv = ro.default_converter + numpy2ri.converter
    dn = ro.r["list"](
        ro.StrVector(rownames) if rownames is not None else ro.NULL,
        ro.StrVector(colnames) if colnames is not None else ro.NULL,
    )
    if sp.issparse(m):
        m = sp.csc_matrix(m)
        m.sort_indices()
        with localconverter(conv):
            i = ro.conversion.get_conversion().py2rpy(m.indices.astype(np.int32))
            p = ro.conversion.get_conversion().py2rpy(m.indptr.astype(np.int32))
            x = ro.conversion.get_conversion().py2rpy(m.data.astype(np.float64))
        return _R_FN("amedl_new_dgc")(i, p, x, ro.IntVector(list(m.shape)), dn)
    m = np.asarray(m)
    if m.dtype == bool or not np.issubdtype(m.dtype, np.number):
        raise RConversionError(f"cannot write a matrix of dtype {m.dtype} to R")
    m = np.asfortranarray(m.astype(np.float64))
    with localconverter(conv):
        rm = ro.conversion.get_conversion().py2rpy(m)
    return _R_FN("amedl_set_dimnames")(rm, dn)


def _R_FN(name: str):
    return _r_env()[name]


def _named_list(items):
    """[(name, R value)] → R named list (names kept verbatim; none → ``list()``)."""
    ro = _ro()
    if not items:
        return ro.r("list()")
    vals = ro.r["list"](*[v for _, v in items])
    return ro.r("function(vals, nms) { names(vals) <- nms; vals }")(vals, ro.StrVector([n for n, _ in items]))


def _is_null(x) -> bool:
    import rpy2.rinterface as ri

    return x is None or isinstance(x, ri.NULLType)


_INT_MIN = np.iinfo(np.int32).min


def _r_to_py(x) -> Any:
    """Convert an R value to plain Python (recursively for lists). Unconvertible parts → None + warning."""
    ro = _ro()
    import rpy2.rinterface as ri

    if _is_null(x):
        return None
    rcls = list(x.rclass)
    if "data.frame" in rcls:
        names = list(x.names) if not isinstance(x.names, ri.NULLType) else []
        rn = ro.r(".row_names_info")(x)[0]
        index = None if rn < 0 else [str(s) for s in ro.r["rownames"](x)]
        return _df_from_r(x, index=index, names=names)
    if isinstance(x, (ri.ListSexpVector,)) or "list" in rcls:
        items = _rlist(x)
        if _is_null(x.names):
            return [_r_to_py(v) for v in items.values()]
        return {k: _r_to_py(v) for k, v in items.items()}
    if isinstance(x, ri.SexpVector) and x.typeof in (
        ri.RTYPES.INTSXP,
        ri.RTYPES.REALSXP,
        ri.RTYPES.LGLSXP,
        ri.RTYPES.STRSXP,
    ):
        col = _vector_from_r(x)
        has_dim = not isinstance(ro.r["dim"](x), ri.NULLType)
        if has_dim:
            from rpy2.robjects import numpy2ri
            from rpy2.robjects.conversion import localconverter

            with localconverter(ro.default_converter + numpy2ri.converter):
                return np.asarray(ro.conversion.get_conversion().rpy2py(x))
        if isinstance(col, pd.Categorical) or len(col) != 1:
            return col if isinstance(col, pd.Categorical) else np.asarray(col)
        v = col[0]
        if v is pd.NA:
            return None
        return v.item() if isinstance(v, np.generic) else v
    warnings.warn(f"an R value of class {rcls} cannot be converted and was left out", stacklevel=3)
    return None


def _vector_from_r(v):
    """An atomic R vector (column) → numpy array / pandas extension array, exactly."""
    ro = _ro()
    import rpy2.rinterface as ri

    rcls = list(v.rclass)
    t = v.typeof
    if "factor" in rcls:
        codes = np.array(v, dtype=np.int32)
        levels = [str(s) for s in ro.r["levels"](v)]
        codes = np.where(codes == _INT_MIN, -1, codes - 1)
        return pd.Categorical.from_codes(codes, categories=levels, ordered="ordered" in rcls)
    if t == ri.RTYPES.INTSXP:
        a = np.array(v, dtype=np.int32)
        na = a == _INT_MIN
        if na.any():
            return pd.arrays.IntegerArray(a, na)
        return a
    if t == ri.RTYPES.LGLSXP:
        a = np.array(ro.r["as.integer"](v), dtype=np.int32)
        na = a == _INT_MIN
        if na.any():
            return pd.arrays.BooleanArray(a == 1, na)
        return a == 1
    if t == ri.RTYPES.REALSXP:
        return np.array(v, dtype=np.float64)
    if t == ri.RTYPES.STRSXP:
        na = np.array(ro.r["is.na"](v), dtype=bool)
        vals = [None if na[i] else str(s) for i, s in enumerate(v)]
        return np.array(vals, dtype=object)
    raise RConversionError(f"cannot convert an R vector of type {t}")


def _df_from_r(x, index, names=None) -> pd.DataFrame:
    """An R list / data.frame of columns → pandas DataFrame."""
    ro = _ro()
    import rpy2.rinterface as ri

    cols = {}
    items = _rlist(x) if not isinstance(x, ri.NULLType) else {}
    for k, v in items.items():
        if isinstance(v, ri.NULLType):
            continue
        cols[k] = _vector_from_r(v)
    n = len(index) if index is not None else (len(next(iter(cols.values()))) if cols else 0)
    idx = pd.Index(index, dtype=object) if index is not None else pd.RangeIndex(n)
    df = pd.DataFrame({k: pd.Series(c, index=idx) for k, c in cols.items()}, index=idx)
    del ro
    return df


def _column_to_r(s: pd.Series):
    """A pandas column → R vector, exactly for bool/int32/float/str/categorical."""
    ro = _ro()
    from rpy2.robjects import numpy2ri

    conv = ro.default_converter + numpy2ri.converter
    from rpy2.robjects.conversion import localconverter

    dt = s.dtype
    if isinstance(dt, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy().astype(np.int32) + 1
        codes[codes == 0] = _INT_MIN
        levels = ro.StrVector([str(c) for c in s.cat.categories])
        with localconverter(conv):
            rc = ro.conversion.get_conversion().py2rpy(codes)
        return ro.r("function(x, lv, ord) structure(as.vector(x), levels = lv, class = if (ord) c('ordered', 'factor') else 'factor')")(
            rc, levels, ro.BoolVector([bool(dt.ordered)])
        )
    if pd.api.types.is_bool_dtype(dt):
        na = s.isna().to_numpy()
        vals = s.fillna(False).to_numpy(dtype=bool).astype(np.int32)
        vals[na] = _INT_MIN
        with localconverter(conv):
            rv = ro.conversion.get_conversion().py2rpy(vals)
        return ro.r["as.logical"](ro.r["as.vector"](rv))
    if pd.api.types.is_integer_dtype(dt):
        na = s.isna().to_numpy()
        raw = s.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = raw[~na]
        if finite.size and (finite.max() > np.iinfo(np.int32).max or finite.min() <= _INT_MIN):
            return ro.FloatVector(raw)
        vals = np.where(na, _INT_MIN, np.nan_to_num(raw)).astype(np.int32)
        with localconverter(conv):
            rv = ro.conversion.get_conversion().py2rpy(vals)
        return ro.r["as.vector"](rv)
    if pd.api.types.is_float_dtype(dt):
        return ro.FloatVector(s.to_numpy(dtype=np.float64, na_value=np.nan))
    # strings / objects
    vals = s.tolist()
    out = []
    for v in vals:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            out.append(ro.NA_Character)
        else:
            out.append(str(v))
    return ro.StrVector(out)


def _df_to_r(df: pd.DataFrame, with_index: bool = True):
    """pandas DataFrame → R data.frame (no name mangling; RangeIndex → automatic row names)."""
    ro = _ro()
    cols = [(str(c), _column_to_r(df[c])) for c in df.columns]
    r_cols = _named_list(cols) if cols else ro.r("list()")
    # R's automatic row names <-> a RangeIndex (which .h5ad stores as the strings "0".."n-1")
    automatic = (isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1) or (
        len(df.index) > 0 and list(map(str, df.index)) == [str(i) for i in range(len(df.index))]
    )
    rn = ro.NULL if automatic or not with_index else ro.StrVector([str(i) for i in df.index])
    return ro.r(
        "function(cols, rn, n) structure(cols, class = 'data.frame', "
        "row.names = if (is.null(rn)) .set_row_names(as.integer(n)) else rn)"
    )(r_cols, rn, ro.IntVector([df.shape[0]]))


def _py_to_r(x, where: str = "value"):
    """Plain Python (dict/list/scalars/arrays/DataFrames) → R; unconvertible entries dropped with a warning."""
    ro = _ro()
    if x is None:
        return ro.NULL
    if isinstance(x, dict):
        items = []
        for k, v in x.items():
            try:
                items.append((str(k), _py_to_r(v, where=f"{where}[{k!r}]")))
            except (RConversionError, TypeError, ValueError) as e:
                warnings.warn(f"{where}[{k!r}] not written to R: {e}", stacklevel=3)
        return _named_list(items)
    if isinstance(x, pd.DataFrame):
        return _df_to_r(x)
    if isinstance(x, (list, tuple)):
        if x and all(isinstance(v, str) for v in x):
            return ro.StrVector(list(x))
        if x and all(isinstance(v, (bool, np.bool_)) for v in x):
            return ro.BoolVector([bool(v) for v in x])
        if x and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x):
            return _column_to_r(pd.Series(x, dtype="int64"))
        if x and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in x):
            return ro.FloatVector([float(v) for v in x])
        return ro.r["list"](*[_py_to_r(v, where=f"{where}[]") for v in x])
    if isinstance(x, pd.Categorical):
        return _column_to_r(pd.Series(x))
    if isinstance(x, (pd.Series, pd.Index)):
        return _column_to_r(pd.Series(np.asarray(x)) if isinstance(x, pd.Index) else x.reset_index(drop=True))
    if isinstance(x, np.ndarray):
        if x.ndim == 1:
            return _column_to_r(pd.Series(x))
        if x.ndim == 2 and np.issubdtype(x.dtype, np.number):
            return _mat_to_r(x)
        raise RConversionError(f"array of shape {x.shape} and dtype {x.dtype}")
    if sp.issparse(x):
        return _mat_to_r(x)
    if isinstance(x, (bool, np.bool_)):
        return ro.BoolVector([bool(x)])
    if isinstance(x, (int, np.integer)):
        return _column_to_r(pd.Series([int(x)], dtype="int64"))
    if isinstance(x, (float, np.floating)):
        return ro.FloatVector([float(x)])
    if isinstance(x, str):
        return ro.StrVector([x])
    raise RConversionError(f"cannot convert a {type(x).__name__}")


# --------------------------------------------------------------------------- #
# R side (evaluated in a private environment; needs only base R, Matrix and,
# per object kind, SeuratObject or SingleCellExperiment)
# --------------------------------------------------------------------------- #
_R_CODE = r"""
# Run an entry point quietly: package start-up messages are dropped, R warnings
# are collected (and turned into Python warnings by the caller).
amedl_call <- function(fun, ...) {
  msgs <- character(0)
  value <- withCallingHandlers(
    suppressPackageStartupMessages(fun(...)),
    warning = function(w) {
      m <- conditionMessage(w)
      if (!grepl("contains no packages", m, fixed = TRUE)) msgs <<- c(msgs, m)
      invokeRestart("muffleWarning")
    })
  list(value = value, warnings = msgs)
}

amedl_new_dgc <- function(i, p, x, dims, dn) {
  requireNamespace("Matrix", quietly = TRUE)
  methods::new("dgCMatrix", i = as.integer(i), p = as.integer(p), x = as.double(x),
               Dim = as.integer(dims), Dimnames = dn)
}

amedl_set_dimnames <- function(m, dn) { dimnames(m) <- dn; m }

amedl_load <- function(path, object_name = NULL) {
  ext <- tolower(tools::file_ext(path))
  if (ext == "rds") {
    obj <- readRDS(path)
    return(list(object = obj, name = NULL))
  }
  env <- new.env(parent = emptyenv())
  nms <- load(path, envir = env)
  if (!is.null(object_name)) {
    if (!object_name %in% nms)
      stop(sprintf("%s holds no object named '%s' (it holds: %s)", path, object_name, paste(nms, collapse = ", ")))
    return(list(object = get(object_name, envir = env), name = object_name))
  }
  ok <- vapply(nms, function(n) amedl_kind(get(n, envir = env)) != "", logical(1))
  if (sum(ok) != 1)
    stop(sprintf("%s holds %d Seurat/SingleCellExperiment objects (%s); name the one to read (object_name=)",
                 path, sum(ok), paste(nms, collapse = ", ")))
  list(object = get(nms[ok], envir = env), name = nms[ok])
}

amedl_kind <- function(obj) {
  if (methods::is(obj, "Seurat")) return("seurat")
  if (methods::is(obj, "SingleCellExperiment")) return("sce")
  if (methods::is(obj, "SummarizedExperiment")) return("sce")
  ""
}

# Objects saved by Bioconductor >= 3.22 keep their Seqinfo in the 'Seqinfo'
# package; older Bioconductor cannot subset or modify them. Rebuild the
# Seqinfo with the class this R has (same sequence names, lengths, genome).
amedl_repair <- function(x) {
  if (!methods::is(x, "SummarizedExperiment") || !methods::.hasSlot(x, "rowRanges")) return(x)
  fix <- function(si) {
    pkg <- attr(class(si), "package")
    if (is.null(pkg) || requireNamespace(pkg, quietly = TRUE)) return(NULL)
    GenomeInfoDb::Seqinfo(seqnames = si@seqnames, seqlengths = si@seqlengths,
                          isCircular = si@is_circular, genome = si@genome)
  }
  rr <- x@rowRanges
  if (methods::.hasSlot(rr, "unlistData") && methods::.hasSlot(rr@unlistData, "seqinfo")) {
    new <- fix(rr@unlistData@seqinfo)
    if (!is.null(new)) { ul <- rr@unlistData; ul@seqinfo <- new; rr@unlistData <- ul; x@rowRanges <- rr }
  } else if (methods::.hasSlot(rr, "seqinfo")) {
    new <- fix(rr@seqinfo)
    if (!is.null(new)) { rr@seqinfo <- new; x@rowRanges <- rr }
  }
  # ... and their internal reducedDims/altExps tables are of the bare class
  # 'DataFrame', which older S4Vectors cannot modify: rebuild them.
  if (methods::is(x, "SingleCellExperiment")) {
    bare <- function(d) identical(as.character(class(d)), "DataFrame")
    ic <- SingleCellExperiment::int_colData(x)
    if ("reducedDims" %in% names(ic) && bare(ic$reducedDims))
      SingleCellExperiment::reducedDims(x) <- SingleCellExperiment::reducedDims(x)
    if ("altExps" %in% names(ic) && bare(ic$altExps))
      SingleCellExperiment::altExps(x) <- SingleCellExperiment::altExps(x)
  }
  x
}

amedl_as_matrix <- function(m, what, warn) {
  if (methods::is(m, "dgCMatrix")) return(m)
  if (methods::is(m, "sparseMatrix")) {
    m2 <- tryCatch(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"), error = function(e) NULL)
    if (!is.null(m2) && !methods::is(m2, "dgCMatrix")) m2 <- tryCatch(methods::as(m2, "dMatrix"), error = function(e) NULL)
    if (!is.null(m2) && methods::is(m2, "dgCMatrix")) return(m2)
  }
  if (!is.matrix(m)) m <- tryCatch(as.matrix(m), error = function(e) NULL)
  if (is.null(m) || !(is.numeric(m) || is.logical(m))) { warn(sprintf("%s is not a numeric matrix: left out", what)); return(NULL) }
  storage.mode(m) <- "double"
  m
}

amedl_columns <- function(df, what, warn) {
  df <- as.list(as.data.frame(df, optional = TRUE, stringsAsFactors = FALSE))
  keep <- vapply(names(df), function(n) {
    v <- df[[n]]
    ok <- is.atomic(v) && is.null(dim(v)) && (is.numeric(v) || is.character(v) || is.logical(v) || is.factor(v))
    if (!ok) warn(sprintf("%s column '%s' (class %s) cannot be converted: left out", what, n, paste(class(v), collapse = "/")))
    ok
  }, logical(1))
  lapply(df[keep], function(v) { if (!is.factor(v)) attributes(v) <- NULL; v })
}

amedl_uns <- function(x, what, warn) {
  if (is.null(x)) return(NULL)
  if (is.data.frame(x)) return(x)
  if (is.list(x) && !is.object(x)) {
    out <- lapply(seq_along(x), function(i) amedl_uns(x[[i]], sprintf("%s[[%d]]", what, i), warn))
    names(out) <- names(x)
    keep <- !vapply(out, is.null, logical(1))
    return(out[keep])
  }
  if (is.atomic(x) && (is.numeric(x) || is.character(x) || is.logical(x) || is.factor(x))) return(x)
  warn(sprintf("%s (class %s) cannot be converted to Python: left out", what, paste(class(x), collapse = "/")))
  NULL
}

# -- Seurat counts/data, v3/v4 Assay and v5 Assay5 (split layers joined) -----
amedl_seurat_layer <- function(obj, assay, layer) {
  ns <- asNamespace("SeuratObject")
  a <- obj[[assay]]
  if (exists("LayerData", envir = ns, inherits = FALSE) && exists("Layers", envir = ns, inherits = FALSE)) {
    lyrs <- get("Layers", envir = ns)(a)
    LD <- get("LayerData", envir = ns)
    if (layer %in% lyrs) {
      m <- LD(a, layer = layer)
      if (is.null(colnames(m))) colnames(m) <- colnames(obj)
      return(m[, colnames(obj), drop = FALSE])
    }
    split <- lyrs[startsWith(lyrs, paste0(layer, "."))]
    if (!length(split)) return(NULL)
    parts <- lapply(split, function(l) LD(a, layer = l))
    genes <- unique(unlist(lapply(parts, rownames)))
    parts <- lapply(parts, function(p) {
      if (identical(rownames(p), genes)) return(p)
      out <- Matrix::sparseMatrix(i = integer(0), j = integer(0), dims = c(length(genes), ncol(p)),
                                  dimnames = list(genes, colnames(p)))
      out[rownames(p), ] <- p
      out
    })
    m <- do.call(cbind, parts)
    return(m[, colnames(obj), drop = FALSE])
  }
  m <- SeuratObject::GetAssayData(a, slot = layer)
  if (!length(m) || ncol(m) == 0) return(NULL)
  m
}

amedl_read <- function(path, object_name = NULL, assay = NULL) {
  msgs <- character(0)
  warn <- function(m) msgs <<- c(msgs, m)
  ld <- amedl_load(path, object_name)
  obj <- ld$object
  kind <- amedl_kind(obj)
  if (kind == "") stop(sprintf("%s holds an object of class '%s', not a Seurat object or a SingleCellExperiment",
                               path, paste(class(obj), collapse = "/")))
  info <- list(kind = kind, object_name = ld$name, x_name = "counts")
  keys <- list(); colnms <- list()
  if (kind == "sce") {
    suppressPackageStartupMessages(requireNamespace("SingleCellExperiment", quietly = TRUE))
    obj <- amedl_repair(obj)
    an <- SummarizedExperiment::assayNames(obj)
    if (!length(an)) stop(sprintf("the SingleCellExperiment in %s has no assays", path))
    if (is.null(an) || any(an == "")) stop("the SingleCellExperiment has unnamed assays; name them first")
    x_name <- if ("counts" %in% an) "counts" else an[1]
    mats <- list()
    for (n in an) {
      m <- amedl_as_matrix(SummarizedExperiment::assay(obj, n, withDimnames = TRUE), sprintf("assay '%s'", n), warn)
      if (!is.null(m)) mats[[n]] <- m
    }
    if (is.null(mats[[x_name]])) stop(sprintf("assay '%s' is not a numeric matrix", x_name))
    X <- mats[[x_name]]; layers <- mats[setdiff(names(mats), x_name)]
    obs <- amedl_columns(SummarizedExperiment::colData(obj), "colData", warn)
    var <- amedl_columns(SummarizedExperiment::rowData(obj), "rowData", warn)
    obsm <- list()
    if (methods::is(obj, "SingleCellExperiment")) {
      for (n in SingleCellExperiment::reducedDimNames(obj)) {
        m <- SingleCellExperiment::reducedDim(obj, n)
        m <- tryCatch({ m <- as.matrix(m); storage.mode(m) <- "double"; m }, error = function(e) NULL)
        if (is.null(m)) warn(sprintf("reducedDim '%s' is not a numeric matrix: left out", n)) else obsm[[n]] <- m
        if (!is.null(m) && !is.null(colnames(m))) colnms[[n]] <- colnames(m)
      }
      if (length(SingleCellExperiment::altExpNames(obj)))
        warn(sprintf("altExps (%s) are not converted", paste(SingleCellExperiment::altExpNames(obj), collapse = ", ")))
    }
    uns <- amedl_uns(S4Vectors::metadata(obj), "metadata", warn)
    cells <- colnames(obj); genes <- rownames(obj)
  } else {
    requireNamespace("SeuratObject", quietly = TRUE)
    if (is.null(assay)) assay <- SeuratObject::DefaultAssay(obj)
    if (!assay %in% SeuratObject::Assays(obj))
      stop(sprintf("the Seurat object has no assay '%s' (assays: %s)", assay, paste(SeuratObject::Assays(obj), collapse = ", ")))
    info$assay <- assay
    cnt <- amedl_seurat_layer(obj, assay, "counts")
    dat <- amedl_seurat_layer(obj, assay, "data")
    if (is.null(cnt) && is.null(dat)) stop(sprintf("assay '%s' has neither counts nor data", assay))
    if (is.null(cnt)) { X <- dat; info$x_name <- "data"; layers <- list() }
    else {
      X <- cnt; layers <- list()
      if (!is.null(dat) && !identical(dat, cnt)) layers$data <- dat
    }
    X <- amedl_as_matrix(X, sprintf("assay '%s' %s", assay, info$x_name), warn)
    if (is.null(X)) stop(sprintf("assay '%s' %s is not a numeric matrix", assay, info$x_name))
    layers <- lapply(layers, amedl_as_matrix, what = "data", warn = warn)
    layers <- layers[!vapply(layers, is.null, logical(1))]
    cells <- colnames(obj); genes <- rownames(X)
    others <- setdiff(SeuratObject::Assays(obj), assay)
    if (length(others)) warn(sprintf("only assay '%s' is converted; left out: %s (read them with assay=)", assay, paste(others, collapse = ", ")))
    obs <- amedl_columns(obj@meta.data, "meta.data", warn)
    fm <- obj[[assay]][[]]
    fm <- if (is.null(fm) || !ncol(fm)) data.frame(row.names = genes) else fm[genes, , drop = FALSE]
    var <- amedl_columns(fm, "feature metadata", warn)
    vf <- SeuratObject::VariableFeatures(obj[[assay]])
    if (length(vf)) {
      col <- if ("highly_variable" %in% names(var)) "amedl_variable_feature" else "highly_variable"
      var[[col]] <- genes %in% vf
      info$variable_features_column <- col
      info$variable_features <- as.character(vf)
    }
    obsm <- list()
    for (n in SeuratObject::Reductions(obj)) {
      r <- obj[[n]]
      m <- SeuratObject::Embeddings(r)
      if (!all(colnames(obj) %in% rownames(m))) { warn(sprintf("reduction '%s' does not cover all cells: left out", n)); next }
      m <- m[colnames(obj), , drop = FALSE]
      obsm[[n]] <- m
      keys[[n]] <- SeuratObject::Key(r)
    }
    uns <- amedl_uns(obj@misc, "misc", warn)
  }
  info$warnings <- msgs
  list(X = X, cells = cells, genes = genes, layers = layers, obs = obs, var = var,
       obsm = obsm, uns = if (is.null(uns)) list() else uns, reduction_keys = keys,
       reduction_colnames = colnms, info = info)
}

amedl_save <- function(obj, path, suffix, object_name) {
  if (suffix == ".rds") saveRDS(obj, file = path)
  else { env <- new.env(); assign(object_name, obj, envir = env); save(list = object_name, envir = env, file = path) }
  invisible(TRUE)
}

amedl_dimreduc <- function(m, key, assay, misc = NULL) {
  colnames(m) <- paste0(key, seq_len(ncol(m)))
  args <- list(embeddings = m, key = key, assay = assay)
  if (!is.null(misc)) args$misc <- misc
  do.call(SeuratObject::CreateDimReducObject, args)
}

amedl_set_seurat_layer <- function(obj, assay, layer, m) {
  ns <- asNamespace("SeuratObject")
  if (exists("LayerData<-", envir = ns, inherits = FALSE)) {
    f <- get("LayerData<-", envir = ns)
    return(f(obj, assay = assay, layer = layer, value = m))
  }
  SeuratObject::SetAssayData(obj, slot = layer, new.data = m, assay = assay)
}

amedl_rd_colnames <- function(m, cn) {
  if (!is.null(cn) && length(cn) == ncol(m)) colnames(m) <- cn
  m
}

amedl_build <- function(kind, X, x_name, layers, obs, var, obsm, keys, colnms, uns, assay, vf_col, vf_order) {
  msgs <- character(0)
  warn <- function(m) msgs <<- c(msgs, m)
  cells <- colnames(X)
  if (kind == "sce") {
    suppressPackageStartupMessages(requireNamespace("SingleCellExperiment", quietly = TRUE))
    assays <- c(stats::setNames(list(X), x_name), layers)
    rd <- lapply(stats::setNames(names(obsm), names(obsm)), function(n) {
      m <- obsm[[n]]; rownames(m) <- cells; amedl_rd_colnames(m, colnms[[n]]) })
    obj <- SingleCellExperiment::SingleCellExperiment(
      assays = assays,
      colData = S4Vectors::DataFrame(obs, check.names = FALSE),
      rowData = S4Vectors::DataFrame(var, check.names = FALSE),
      metadata = if (is.null(uns)) list() else uns)
    if (length(rd)) SingleCellExperiment::reducedDims(obj) <- rd
    return(list(object = obj, warnings = msgs))
  }
  requireNamespace("SeuratObject", quietly = TRUE)
  genes <- rownames(X)
  bad <- grepl("_", genes, fixed = TRUE)
  if (any(bad)) warn(sprintf("Seurat does not allow '_' in feature names: %d names (e.g. '%s') get '-' instead", sum(bad), genes[bad][1]))
  if (any(bad)) {
    genes <- gsub("_", "-", genes, fixed = TRUE)
    rownames(X) <- genes
    layers <- lapply(layers, function(m) { rownames(m) <- genes; m })
    if (nrow(var)) rownames(var) <- genes
  }
  if (x_name == "data") {
    a <- SeuratObject::CreateAssayObject(data = X)
    obj <- SeuratObject::CreateSeuratObject(a, assay = assay)
  } else {
    if (x_name != "counts") warn(sprintf("X was the '%s' assay; it is written as the Seurat counts", x_name))
    obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = X, assay = assay, min.cells = 0, min.features = 0))
  }
  dl <- if ("data" %in% names(layers)) "data" else if ("logcounts" %in% names(layers) && x_name != "data") "logcounts" else NULL
  if (!is.null(dl)) obj <- amedl_set_seurat_layer(obj, assay, "data", layers[[dl]])
  left <- setdiff(names(layers), dl)
  if (length(left)) warn(sprintf("a Seurat assay has no place for layers %s: left out", paste(left, collapse = ", ")))
  obj@meta.data <- obs
  if (!is.null(vf_col) && vf_col %in% names(var)) {
    vf <- genes[var[[vf_col]] %in% TRUE]
    if (!is.null(vf_order) && setequal(vf_order, vf)) vf <- vf_order
    SeuratObject::VariableFeatures(obj, assay = assay) <- vf
    var[[vf_col]] <- NULL
  }
  if (length(var)) {
    fm <- as.data.frame(var, row.names = genes, optional = TRUE, stringsAsFactors = FALSE)
    obj[[assay]] <- SeuratObject::AddMetaData(obj[[assay]], metadata = fm)
  }
  for (n in names(obsm)) {
    m <- obsm[[n]]; rownames(m) <- cells
    obj[[n]] <- amedl_dimreduc(m, keys[[n]], assay)
  }
  obj@misc <- if (is.null(uns)) list() else uns
  list(object = obj, warnings = msgs)
}

amedl_same <- function(old, new) {
  old <- tryCatch(as.matrix(old), error = function(e) NULL)
  if (is.null(old) || !identical(dim(old), dim(new))) return(FALSE)
  if (!is.null(rownames(old)) && !is.null(rownames(new)) && all(rownames(new) %in% rownames(old)))
    old <- old[rownames(new), , drop = FALSE]
  isTRUE(all.equal(unname(old), unname(new), check.attributes = FALSE, tolerance = 1e-6))
}

amedl_update <- function(path, kind, object_name, assay, cells, obs, obsm, keys, colnms, uns_amedl) {
  ld <- tryCatch(amedl_load(path, object_name), error = function(e) NULL)
  if (is.null(ld)) return(list(object = NULL, message = "cannot load it"))
  obj <- ld$object
  if (amedl_kind(obj) != kind) return(list(object = NULL, message = sprintf("it is not a %s object", kind)))
  if (length(cells) != ncol(obj) || !setequal(cells, colnames(obj)))
    return(list(object = NULL, message = "its cells differ from the AnnData's"))
  ord <- match(colnames(obj), cells)
  obs <- obs[ord, , drop = FALSE]
  rownames(obs) <- colnames(obj)
  if (kind == "sce") {
    suppressPackageStartupMessages(requireNamespace("SingleCellExperiment", quietly = TRUE))
    obj <- amedl_repair(obj)
    SummarizedExperiment::colData(obj) <- S4Vectors::DataFrame(obs, check.names = FALSE)
    for (n in names(obsm)) {
      m <- obsm[[n]][ord, , drop = FALSE]; rownames(m) <- colnames(obj)
      if (n %in% SingleCellExperiment::reducedDimNames(obj) &&
          amedl_same(SingleCellExperiment::reducedDim(obj, n), m)) next  # unchanged: keep as is
      SingleCellExperiment::reducedDim(obj, n) <- amedl_rd_colnames(m, colnms[[n]])
    }
    if (!is.null(uns_amedl)) S4Vectors::metadata(obj)$amedl <- uns_amedl
  } else {
    requireNamespace("SeuratObject", quietly = TRUE)
    if (is.null(assay) || !assay %in% SeuratObject::Assays(obj)) assay <- SeuratObject::DefaultAssay(obj)
    obj@meta.data <- obs
    for (n in names(obsm)) {
      m <- obsm[[n]][ord, , drop = FALSE]; rownames(m) <- colnames(obj)
      # an unchanged reduction is kept as it is (with its loadings, stdev, ...)
      if (n %in% SeuratObject::Reductions(obj) && amedl_same(SeuratObject::Embeddings(obj[[n]]), m)) next
      misc <- if (startsWith(n, "amedl_") && !is.null(uns_amedl)) list(amedl = uns_amedl) else NULL
      obj[[n]] <- amedl_dimreduc(m, keys[[n]], assay, misc)
    }
    if (!is.null(uns_amedl)) obj@misc$amedl <- uns_amedl
  }
  list(object = obj, message = "")
}
"""
