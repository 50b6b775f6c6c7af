"""Entry points for the R package ``amedl`` (called through reticulate).

R hands over a genes × cells matrix (a ``dgCMatrix`` arrives as
``scipy.sparse.csc_matrix``, a base matrix as a NumPy array), cell and gene
names and one batch label per cell; these functions build the AnnData
(cells × genes, sparse kept sparse), run the engine and hand back plain
NumPy arrays. Nothing here imports rpy2: R is the host process.

Errors the engine finds in the data are reworded for R users (the cell
metadata and ``subset()`` instead of ``adata.obs`` and scanpy) by :func:`r_words`.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import ADAPT_STEPS
from .errors import AMEDLConfigError, AMEDLError


def _check_engine_packages() -> None:
    """The packages the engine needs are importable (checked when R starts the engine, so that
    ``amedl_available()`` is FALSE, with the reason, where they are not)."""
    import importlib.util

    missing = [pip for module, pip in (("torch", "torch"), ("anndata", "anndata"), ("scanpy", "scanpy"),
                                       ("sklearn", "scikit-learn")) if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"the amedl engine needs {', '.join(missing)}, which this Python does not have; "
                          "install the engine with its dependencies (pip install <amedl checkout>)")
    import torch  # noqa: F401  (installed but broken: its own error, now)


_check_engine_packages()

#: AnnData wording → R wording, applied in order to the engine's error messages.
_R_WORDS = (
    (r"e\.g\. adata = adata\[.*?\]\.copy\(\)", "e.g. with subset()"),
    (r"sc\.pp\.filter_cells\(adata, min_counts=1\)",
     "subset(obj, nCount_RNA > 0) for a Seurat object, sce[, Matrix::colSums(counts(sce)) > 0] for a SingleCellExperiment"),
    (r"adata\.obs\[('[^']*')\]", r"column \1 of the cell metadata"),
    (r"call adata\.obs_names_make_unique\(\) first", "make them unique first (colnames(obj) <- make.unique(colnames(obj)))"),
    (r"call adata\.var_names_make_unique\(\) first", "make them unique first (make.unique())"),
    (r"adata\.var_names", "the gene names (rownames)"),
    (r"adata\.obs", "the cell metadata"),
    (r"adata\.layers\[('[^']*')\]", r"layer \1"),
    (r"adata\.X", "the count matrix"),
    (r"\(e\.g\. layer='counts'; command line: --layer counts\)", "(the 'counts' layer or assay)"),
    (r"\(device=\.\.\., command line --device\)", "(amedl_options(device = ...))"),
    (r"\bNone\b", "NULL"),
    (r"\bTrue\b", "TRUE"),
    (r"\bFalse\b", "FALSE"),
)


def r_words(message: str) -> str:
    """An engine error message in the words of an R user."""
    for pattern, repl in _R_WORDS:
        message = re.sub(pattern, repl, message)
    return message


def _speaks_r(fn):
    """Re-raise the engine's errors for the user (:class:`amedl.errors.AMEDLError`) in R's words."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AMEDLError as exc:
            raise type(exc)(r_words(str(exc))) from None

    return wrapper


def _as_list(x: Any) -> list[str]:
    """reticulate turns a length-1 character vector into a str; undo that."""
    if x is None:
        return []
    if isinstance(x, (str, bytes)):
        return [str(x)]
    return [str(v) for v in list(x)]


def _as_int(x: Any, default: int | None = None) -> int | None:
    """R's numbers (doubles) as Python ints; R checks them first, so a fraction here is a bug, not rounded away."""
    if x is None:
        return default
    value = float(x)
    if not value.is_integer():
        raise AMEDLConfigError(f"expected a whole number, got {value}")
    return int(value)


def make_adata(
    X,
    cells: Sequence[str],
    genes: Sequence[str],
    batch: Sequence[str] | None = None,
    batch_key: str = "batch",
    batch_levels: Sequence[str] | None = None,
):
    """Build a cells × genes AnnData from R's genes × cells matrix.

    Parameters
    ----------
    X
        Genes × cells counts: ``scipy.sparse`` (from a ``dgCMatrix``) or a NumPy array.
    cells, genes
        Column and row names of ``X``.
    batch
        One batch label per cell (optional); stored as a categorical ``obs[batch_key]``.
    batch_levels
        Order of the batch categories (R factor levels); default: sorted labels.
    """
    import anndata as ad

    cells, genes = _as_list(cells), _as_list(genes)
    if sp.issparse(X):
        Xc = sp.csr_matrix(X.T)  # csc genes×cells → csr cells×genes without densifying
    else:
        Xc = np.ascontiguousarray(np.asarray(X, dtype=np.float64).T)
    if Xc.shape != (len(cells), len(genes)):
        raise ValueError(f"matrix is {Xc.shape[1]} × {Xc.shape[0]} but got {len(genes)} gene and {len(cells)} cell names")
    obs = pd.DataFrame(index=pd.Index(cells, dtype=object))
    if batch is not None:
        labels = _as_list(batch)
        levels = _as_list(batch_levels) if batch_levels is not None else None
        obs[batch_key] = pd.Categorical(labels, categories=levels)
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    return ad.AnnData(X=Xc, obs=obs, var=var)


@_speaks_r
def fit(
    X,
    cells,
    genes,
    batch,
    batch_key: str = "batch",
    batch_levels=None,
    features=None,
    n_latent=None,
    n_top_genes=2000,
    epochs=None,
    seed=0,
    preset: str = "default",
    model_dir: str | None = None,
    progress: bool = True,
    settings: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Fit aMEDL on R data and return both latents, the model and its record.

    ``settings`` are further :class:`amedl.AMEDLConfig` fields, already
    checked and typed by the R package's ``amedl_options()``.

    Returns
    -------
    dict with ``fe`` and ``re`` (cells × n_latent float32 arrays), ``model``
    (the fitted :class:`amedl.AMEDL`), ``record`` (:func:`amedl.tl.record`,
    what every output stores as ``uns['amedl']``) and ``model_dir`` (where it
    was saved, or None). ``model_dir`` is checked before training: a new or
    empty folder, or (with ``overwrite``) an amedl model folder.
    """
    from . import modelfile, tl
    from .model import AMEDL

    if model_dir:
        modelfile.check_target(os.path.expanduser(str(model_dir)), bool(overwrite), flag="overwrite = TRUE")

    adata = make_adata(X, cells, genes, batch, batch_key=batch_key, batch_levels=batch_levels)
    config = dict(settings or {})
    if n_latent is not None:  # else the preset's
        config["n_latent"] = _as_int(n_latent)
    if features is None:
        config["n_top_genes"] = _as_int(n_top_genes, 2000)
    model = AMEDL(adata, batch_key, preset=str(preset), genes=_as_list(features) if features is not None else None,
                  **config)
    model.fit(seed=_as_int(seed, 0), max_epochs=_as_int(epochs), progress=bool(progress))
    rec = tl.add_latents(adata, model)
    return _result(adata, model, rec, save_model(model, model_dir, overwrite) if model_dir else None)


def _result(adata, model, record: dict, model_dir: str | None) -> dict:
    """What :func:`fit` and :func:`map_query` hand back to R."""
    return {"fe": adata.obsm["X_amedl_fe"], "re": adata.obsm["X_amedl_re"], "model": model, "record": record,
            "model_dir": model_dir}


def is_model_dir(model_dir: str | None) -> bool:
    """Whether ``model_dir`` is a saved amedl model (so that ``RunAMEDL`` maps onto it)."""
    from . import modelfile

    return bool(model_dir) and modelfile.folder_kind(Path(os.path.expanduser(str(model_dir)))) == "model"


@_speaks_r
def map_query(model_dir: str, X, cells, genes, batch, batch_levels=None, adapt: bool = True, steps=None, seed=0,
              progress: bool = False) -> dict:
    """Map R data (a query) onto the model saved in ``model_dir``: with ``adapt``, learn
    random effects for the query's batches that the model has not seen
    (:meth:`amedl.AMEDL.adapt`, every trained weight frozen), else give them the
    batch-membership predictor's mixture. Returns what :func:`fit` returns, plus
    ``new_batches`` and ``unseen_batches`` ("adapted" or "predict"/"zero")."""
    import warnings

    from . import tl
    from .model import AMEDL

    path = Path(os.path.expanduser(str(model_dir))).resolve()
    model = AMEDL.load(path)
    adata = make_adata(X, cells, genes, batch, batch_key=model.batch_key, batch_levels=batch_levels)
    new = model.new_batches(adata)
    if new and adapt:
        model.adapt(adata, steps=_as_int(steps, ADAPT_STEPS), seed=_as_int(seed, 0), progress=bool(progress))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the R side says how unseen batches were treated
        rec = tl.add_latents(adata, model)
    return {
        **_result(adata, model, rec, str(path)),
        "new_batches": new,
        "unseen_batches": "adapted" if (new and adapt) else model.unseen_batches,
    }


@_speaks_r
def save_model(model, model_dir: str, overwrite: bool = False) -> str:
    """Save ``model`` to ``model_dir`` (a new or empty folder, or with ``overwrite``
    an amedl model folder holding nothing else; see :meth:`amedl.AMEDL.save`)."""
    from . import modelfile

    path = Path(os.path.expanduser(str(model_dir)))
    modelfile.check_target(path, bool(overwrite), flag="overwrite = TRUE")
    model.save(path, overwrite=bool(overwrite))
    return str(path.resolve())


def set_threads(n) -> None:
    """Use ``n`` CPU threads in torch, numba and BLAS (R's ``options(amedl.threads = n)``)."""
    from ._utils import apply_threads

    apply_threads(_as_int(n))


@_speaks_r
def load_model(model_dir: str):
    """Load a model saved by :func:`fit` (or :meth:`amedl.AMEDL.save`)."""
    from .model import AMEDL

    return AMEDL.load(os.path.expanduser(str(model_dir)))


@_speaks_r
def counterfactual(model, X, cells, genes, batch, target: str, batch_levels=None) -> dict:
    """Every cell decoded as if from batch ``target``, by :func:`counterfactual_kind`'s network.

    Returns
    -------
    dict with ``x`` (cells × model genes, log1p-normalised, float32) and ``genes``.
    """
    adata = make_adata(X, cells, genes, batch, batch_key=model.batch_key, batch_levels=batch_levels)
    x = model.reconstruct(adata, kind=counterfactual_kind(model), batch=str(target))
    return {"x": x, "genes": list(model.genes)}


def counterfactual_kind(model) -> str:
    """The network whose decoder carries the batches: the mixed-effects FE network
    (default), else the RE network (``preset="paper"``)."""
    fe = model.modules.get("fe")
    return "fe" if fe is not None and fe.batch_aware else "re"


@_speaks_r
def differential(model, X, cells, genes, batch, batch_a: str, batch_b=None, groups=None, batch_levels=None,
                 n_samples=100, delta=0.5, credible=0.95, seed=0, max_cells=20_000) -> dict:
    """:meth:`amedl.AMEDL.differential` on R's genes × cells counts; ``groups`` is one
    label per cell (or ``None``). Returns the table as a dict of columns."""
    adata = make_adata(X, cells, genes, batch, batch_key=model.batch_key, batch_levels=batch_levels)
    groupby = None
    if groups is not None:
        labels = _as_list(groups)
        if len(labels) != adata.n_obs:
            raise ValueError(f"group.by has {len(labels)} values for {adata.n_obs} cells")
        adata.obs["group"] = pd.Categorical(labels)
        groupby = "group"
    table = model.differential(
        adata, str(batch_a), None if batch_b is None else str(batch_b), groupby,
        kind=counterfactual_kind(model), n_samples=_as_int(n_samples), delta=float(delta),
        credible=float(credible), seed=_as_int(seed), max_cells=_as_int(max_cells),
    )
    return {c: table[c].tolist() for c in table.columns}


def model_info(model) -> dict:
    """Genes, batches, batch key and settings of a model (for R printing and checks)."""
    return {
        "genes": list(model.genes),
        "batches": list(model.batches),
        "batch_key": str(model.batch_key),
        "n_latent": int(model.config.n_latent),
        "preset": str(model.preset),
    }


def engine_info() -> dict:
    """Versions of the engine and its main dependencies (for R's diagnostics)."""
    import sys
    from importlib.metadata import version

    import numpy
    import scipy
    import torch

    from . import __version__

    return {
        "amedl": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "torch": str(torch.__version__),  # a TorchVersion object otherwise, not an R string
        "anndata": version("anndata"),
    }
