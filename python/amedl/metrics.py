"""Metrics for judging a latent representation of single cells.

Two families:

* the basic scores used in the aMEDL paper (sklearn): raw silhouette width
  (ASW, range -1..1) of batch and of cell-type labels, the inverse
  Davies-Bouldin index and the Calinski-Harabasz index, each computed once with
  the batch as cluster labels and once with the cell type; and two
  neighbourhood scores a reader can interpret directly: the fraction of each
  cell's nearest neighbours from its own batch (beside the value for
  perfectly mixed batches) and from its own cell type (purity);
* the scIB scores (Luecken et al. 2022) through ``scib-metrics`` when that
  optional package is installed: iLISI, kBET, graph connectivity, scaled batch
  ASW and PCR comparison (batch correction); cLISI, NMI/ARI and scaled label
  ASW (bio conservation); and the aggregates batch-correction,
  bio-conservation and total (0.4 / 0.6).

A good batch-invariant latent has a *low* batch ASW and a *high* label ASW;
a batch-specific latent (aMEDL-RE) has a high batch ASW.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "silhouette_batch",
    "silhouette_label",
    "inverse_davies_bouldin",
    "calinski_harabasz",
    "neighbour_fractions",
    "basic_metrics",
    "scib_available",
    "scib_metrics",
    "kmeans_nmi_ari",
    "kmeans_mean_scores",
    "evaluate_latent",
    "subsample_indices",
    "BASIC_METRICS",
    "SCIB_BATCH_METRICS",
    "SCIB_BIO_METRICS",
    "SCIB_KMEANS_MEAN_METRICS",
    "KMEANS_INITS",
]

#: Column names produced by :func:`basic_metrics`.
BASIC_METRICS = (
    "batch_asw", "label_asw",
    "batch_inv_db", "label_inv_db",
    "batch_ch", "label_ch",
    "same_batch_neighbours", "same_batch_mixed", "label_purity",
)
#: scIB batch-correction metrics (all in 0..1, higher = better mixed).
SCIB_BATCH_METRICS = ("ilisi", "kbet", "graph_connectivity", "scaled_batch_asw", "pcr_comparison")
#: scIB bio-conservation metrics (all in 0..1, higher = better conserved).
SCIB_BIO_METRICS = ("clisi", "nmi", "ari", "scaled_label_asw", "isolated_labels")
#: :func:`scib_metrics`' NMI / ARI averaged over :data:`KMEANS_INITS` k-means runs, and the total with them.
SCIB_KMEANS_MEAN_METRICS = ("nmi_kmeans_mean", "ari_kmeans_mean", "scib_total_kmeans_mean")
#: How many k-means initialisations the averaged NMI / ARI of :func:`scib_metrics` take.
KMEANS_INITS = 20


def _as_2d(latent) -> np.ndarray:
    x = np.asarray(latent.toarray() if hasattr(latent, "toarray") else latent)
    if x.ndim != 2:
        raise ValueError(f"latent must be 2-dimensional (cells x dims), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("latent contains NaN or infinite values")
    return x.astype(np.float64, copy=False)


def _as_codes(labels, n: int, what: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"{what} must be 1-dimensional with one entry per cell ({n}), got shape {lab.shape}")
    if lab.dtype.kind == "f" and np.isnan(lab).any():
        raise ValueError(f"{what} contains missing values")
    if lab.dtype == object and any(v is None or (isinstance(v, float) and math.isnan(v)) for v in lab):
        raise ValueError(f"{what} contains missing values")
    _, codes = np.unique(lab.astype(str) if lab.dtype == object else lab, return_inverse=True)
    return codes.ravel()


def _subsample(x, codes_list, max_cells, seed):
    if max_cells is None or x.shape[0] <= max_cells:
        return x, codes_list
    idx = subsample_indices(x.shape[0], max_cells, seed=seed, strata=codes_list[0] if codes_list else None)
    return x[idx], [c[idx] for c in codes_list]


def subsample_indices(n_cells: int, max_cells: int | None, seed: int = 0, strata=None) -> np.ndarray:
    """Indices of a seeded random subsample of at most ``max_cells`` cells.

    Parameters
    ----------
    n_cells
        Number of cells to choose from.
    max_cells
        Size of the subsample; ``None`` or a value >= ``n_cells`` keeps all
        cells (returned in order).
    seed
        Seed of the NumPy generator; the same seed gives the same subsample.
    strata
        Optional labels (one per cell). When given, each stratum keeps its
        share of cells (proportional allocation, at least one cell each), so
        rare batches or cell types are not lost.

    Returns
    -------
    Sorted integer indices (exactly ``max_cells`` of them, unless there are
    more strata than ``max_cells``, when each stratum keeps one cell).
    """
    if max_cells is None or max_cells >= n_cells:
        return np.arange(n_cells)
    if max_cells < 1:
        raise ValueError("max_cells must be positive")
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.sort(rng.choice(n_cells, size=max_cells, replace=False))
    _, codes = np.unique(np.asarray(strata), return_inverse=True)
    codes = codes.ravel()
    counts = np.bincount(codes)
    # proportional allocation (largest remainders), at least one cell per stratum
    share = counts * max_cells / n_cells
    alloc = np.maximum(1, np.floor(share)).astype(int)
    alloc = np.minimum(alloc, counts)
    spare = max_cells - alloc.sum()
    while spare < 0:  # the strata raised to one cell took more than there was: give back from the largest
        over = np.flatnonzero(alloc > 1)
        if not over.size:  # more strata than max_cells: one cell each
            break
        s = over[np.argmax((alloc - share)[over])]
        alloc[s] -= 1
        spare += 1
    if spare > 0:
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        for s in order:
            if spare == 0:
                break
            if alloc[s] < counts[s]:
                alloc[s] += 1
                spare -= 1
    chosen = [rng.choice(np.flatnonzero(codes == s), size=alloc[s], replace=False) for s in range(counts.size)]
    return np.sort(np.concatenate(chosen))


def _silhouette(latent, labels, what, max_cells, seed) -> float:
    from sklearn.metrics import silhouette_score

    x = _as_2d(latent)
    codes = _as_codes(labels, x.shape[0], what)
    x, (codes,) = _subsample(x, [codes], max_cells, seed)
    n_groups = np.unique(codes).size
    if n_groups < 2 or n_groups >= x.shape[0]:
        raise ValueError(f"silhouette needs 2 <= number of {what} groups < number of cells; got {n_groups} groups")
    return float(silhouette_score(x, codes, metric="euclidean"))


#: Cells (at most, a seeded sample) that :func:`silhouette_report` scores.
REPORT_CELLS = 20_000


def silhouette_report(latents: dict, batch, labels, label_name: str = "label") -> list[str]:
    """One line per latent (``{"fe": z, ...}``) with its batch ASW and label ASW, on at
    most :data:`REPORT_CELLS` cells (what ``amedl fit --label-key`` prints). A latent
    the silhouettes cannot score gets a line that says why, instead of an error."""
    lines = []
    for kind, z in latents.items():
        n = len(z)
        sample = f" (on a sample of {REPORT_CELLS:,} cells)" if n > REPORT_CELLS else ""
        try:
            lines.append(f"{kind.upper()} latent: batch ASW {silhouette_batch(z, batch, max_cells=REPORT_CELLS):+.3f}, "
                         f"{label_name} ASW {silhouette_label(z, labels, max_cells=REPORT_CELLS):+.3f}{sample}")
        except ValueError as exc:
            lines.append(f"{kind.upper()} latent: silhouettes not computed ({exc})")
    return lines


def silhouette_batch(latent, batch, *, max_cells: int | None = None, seed: int = 0) -> float:
    """Raw silhouette width of the batch labels on a latent (the paper's batch ASW).

    sklearn's mean silhouette coefficient (Euclidean) with each batch as a
    cluster; range -1..1. Close to 1: batches form separate clusters (strong
    batch effect, desired for aMEDL-RE); about 0 or below: batches are mixed
    (desired for a batch-invariant latent such as aMEDL-FE).

    Parameters
    ----------
    latent
        ``(n_cells, n_dims)`` array.
    batch
        One batch label per cell (any hashable type).
    max_cells
        Score a seeded subsample of at most this many cells (stratified by
        batch); ``None`` uses all cells.
    seed
        Seed of the subsample.
    """
    return _silhouette(latent, batch, "batch", max_cells, seed)


def silhouette_label(latent, labels, *, max_cells: int | None = None, seed: int = 0) -> float:
    """Raw silhouette width of the cell-type labels on a latent (the paper's label ASW).

    As :func:`silhouette_batch`, with cell types as clusters: higher means
    cell types are better separated.
    """
    return _silhouette(latent, labels, "label", max_cells, seed)


def inverse_davies_bouldin(latent, labels) -> float:
    """1 / Davies-Bouldin index of ``labels`` on ``latent`` (higher = better separated groups)."""
    from sklearn.metrics import davies_bouldin_score

    x = _as_2d(latent)
    codes = _as_codes(labels, x.shape[0], "labels")
    db = float(davies_bouldin_score(x, codes))
    return float("inf") if db == 0 else 1.0 / db


def calinski_harabasz(latent, labels) -> float:
    """Calinski-Harabasz index of ``labels`` on ``latent`` (higher = better separated groups)."""
    from sklearn.metrics import calinski_harabasz_score

    x = _as_2d(latent)
    codes = _as_codes(labels, x.shape[0], "labels")
    return float(calinski_harabasz_score(x, codes))


def neighbour_fractions(latent, batch, labels=None, *, k: int = 15) -> dict[str, float]:
    """How mixed each cell's neighbourhood is, in fractions a reader can check.

    ``same_batch_neighbours``: the mean fraction of a cell's ``k`` nearest
    neighbours (Euclidean, the cell itself excluded) that come from its own
    batch; ``same_batch_mixed``: the same fraction expected when neighbours
    ignore the batch (perfect mixing: for a cell of batch b,
    ``(n_b - 1) / (n - 1)``), so a latent with batches perfectly mixed scores
    about ``same_batch_mixed`` and one with batches apart about 1;
    ``label_purity`` (when ``labels`` is given): the mean fraction of
    neighbours that share the cell's label.
    """
    from sklearn.neighbors import NearestNeighbors

    x = _as_2d(latent)
    b = _as_codes(batch, x.shape[0], "batch")
    k = min(k, x.shape[0] - 1)
    if k < 1:
        raise ValueError("neighbour fractions need at least 2 cells")
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    sizes = np.bincount(b)[b]
    out = {
        "same_batch_neighbours": float((b[idx] == b[:, None]).mean()),
        "same_batch_mixed": float(((sizes - 1) / (len(b) - 1)).mean()),
    }
    if labels is not None:
        lab = _as_codes(labels, x.shape[0], "labels")
        out["label_purity"] = float((lab[idx] == lab[:, None]).mean())
    return out


def basic_metrics(latent, batch, labels=None, *, max_cells: int | None = None, seed: int = 0) -> dict[str, float]:
    """The aMEDL paper's metrics (ASW, 1/DB and CH with batch and with labels)
    and :func:`neighbour_fractions`.

    Returns a dict with the keys of :data:`BASIC_METRICS` (label keys only
    when ``labels`` is given). With ``max_cells`` every score is computed on
    the same seeded subsample (stratified by batch).
    """
    x = _as_2d(latent)
    b = _as_codes(batch, x.shape[0], "batch")
    codes = [b] if labels is None else [b, _as_codes(labels, x.shape[0], "labels")]
    x, codes = _subsample(x, codes, max_cells, seed)
    out = {}
    for name, c in zip(("batch", "label"), codes):
        n_groups = np.unique(c).size
        if n_groups < 2:
            log.warning("only one %s group: %s metrics are undefined (NaN)", name, name)
            out.update({f"{name}_asw": np.nan, f"{name}_inv_db": np.nan, f"{name}_ch": np.nan})
            continue
        out[f"{name}_asw"] = _silhouette(x, c, name, None, seed)
        out[f"{name}_inv_db"] = inverse_davies_bouldin(x, c)
        out[f"{name}_ch"] = calinski_harabasz(x, c)
    out.update(neighbour_fractions(x, codes[0], codes[1] if len(codes) > 1 else None))
    return out


def scib_available() -> bool:
    """Whether the optional ``scib-metrics`` package (and JAX) can be imported."""
    try:
        import scib_metrics  # noqa: F401
    except Exception:  # ImportError, or JAX failing to initialise
        return False
    return True


def _neighbors(x: np.ndarray, k: int):
    """Exact k-nearest neighbours (the cell itself first) as scib-metrics NeighborsResults."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = min(k, x.shape[0])
    dist, ind = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return NeighborsResults(indices=ind, distances=dist)


#: scib-metrics' Benchmarker names of the metrics it computes for us.
_BENCHMARKER_NAMES = {
    "iLISI": "ilisi", "KBET": "kbet", "Graph connectivity": "graph_connectivity", "PCR comparison": "pcr_comparison",
    "cLISI": "clisi", "KMeans NMI": "nmi", "KMeans ARI": "ari", "Silhouette label": "scaled_label_asw",
    "Isolated labels": "isolated_labels",
}


def scib_metrics(
    latent,
    batch,
    labels,
    *,
    unintegrated=None,
    max_cells: int | None = None,
    seed: int = 0,
    kmeans_inits: int = KMEANS_INITS,
) -> dict[str, float]:
    """The scIB metric set on one latent (needs the optional ``scib-metrics``).

    scib-metrics' ``Benchmarker`` computes the metrics with its neighbourhood
    sizes (90 neighbours for LISI, 50 for kBET, 15 for graph connectivity;
    exact neighbours from scikit-learn here) and no min-max scaling:

    * batch correction: ``ilisi`` (scaled iLISI), ``kbet`` (kBET acceptance
      rate per label), ``graph_connectivity``, ``scaled_batch_asw``
      (``1 - |ASW_batch|`` within each label: scib-metrics' ``silhouette_batch``,
      which newer Benchmarkers replace by BRAS; it is computed beside them so
      that scores stay comparable), ``pcr_comparison`` (only when
      ``unintegrated`` is given);
    * bio conservation: ``clisi`` (scaled cLISI), ``nmi`` and ``ari`` (k-means
      with as many clusters as labels), ``scaled_label_asw``
      ((ASW + 1) / 2), ``isolated_labels`` (ASW of the labels present in the
      fewest batches);
    * aggregates as scIB defines them: ``batch_correction`` and
      ``bio_conservation`` are the means of the available metrics of each
      group, ``scib_total = 0.4 * batch_correction + 0.6 * bio_conservation``;
    * with ``kmeans_inits`` > 0, the steadier figures beside them:
      ``nmi_kmeans_mean`` / ``ari_kmeans_mean`` (:func:`kmeans_nmi_ari`: NMI /
      ARI averaged over that many k-means runs, where scib-metrics' come from
      one) and ``scib_total_kmeans_mean``, the total with those two in place of
      the single-run ones.

    All are in 0..1, higher is better. A metric that fails on degenerate input
    is NaN (with a logged warning) and left out of the aggregates.

    Parameters
    ----------
    latent
        ``(n_cells, n_dims)`` array.
    batch, labels
        One batch and one cell-type label per cell.
    unintegrated
        Optional ``(n_cells, n_features)`` matrix before integration (for PCR
        comparison), e.g. the PCA of the model input.
    max_cells
        Score a seeded subsample of at most this many cells (stratified by batch).
    seed
        Seed of the subsample.
    kmeans_inits
        k-means runs behind the averaged NMI / ARI (0: leave them out).

    Raises
    ------
    ImportError
        When ``scib-metrics`` is not installed (install ``amedl[benchmark]``).
    """
    if not scib_available():
        raise ImportError("scib-metrics is not installed; install the optional extra: pip install '<amedl checkout>[benchmark]'")
    import anndata as ad
    import pandas as pd
    import scib_metrics as sm
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    x = _as_2d(latent)
    b = _as_codes(batch, x.shape[0], "batch")
    lab = _as_codes(labels, x.shape[0], "labels")
    idx = subsample_indices(x.shape[0], max_cells, seed=seed, strata=b)
    x, b, lab = x[idx].astype(np.float32), b[idx], lab[idx]
    cells = ad.AnnData(obs=pd.DataFrame({"batch": b, "label": lab}, index=[str(i) for i in range(len(b))]))
    cells.obsm["latent"] = x
    if unintegrated is not None:
        u = unintegrated[idx]
        cells.obsm["unintegrated"] = np.asarray(u.toarray() if hasattr(u, "toarray") else u, dtype=np.float32)
    bench = Benchmarker(
        cells, batch_key="batch", label_key="label", embedding_obsm_keys=["latent"],
        bio_conservation_metrics=BioConservation(),
        batch_correction_metrics=BatchCorrection(bras=False, pcr_comparison=unintegrated is not None),
        pre_integrated_embedding_obsm_key="unintegrated" if unintegrated is not None else "latent",
        progress_bar=False,
    )
    out: dict[str, float] = {}
    try:
        with warnings.catch_warnings():
            # scib-metrics warns when batch explains more variance after integration (score clipped to 0)
            warnings.filterwarnings("ignore", message="PCR comparison score is negative")
            bench.prepare(neighbor_computer=_neighbors)
            bench.benchmark()
        res = bench.get_results(min_max_scale=False).loc["latent"]
        out.update({name: float(res[col]) for col, name in _BENCHMARKER_NAMES.items() if col in res.index})
    except Exception as err:  # degenerate inputs (tiny groups, one batch per label, ...)
        log.warning("scIB metrics failed (%s: %s); reporting NaN", type(err).__name__, err)
    try:
        out["scaled_batch_asw"] = float(sm.silhouette_batch(x, lab, b))
    except Exception as err:
        log.warning("scIB metric scaled_batch_asw failed (%s: %s); reporting NaN", type(err).__name__, err)
    for name in SCIB_BATCH_METRICS + SCIB_BIO_METRICS:
        if name != "pcr_comparison" or unintegrated is not None:
            out.setdefault(name, float("nan"))
    # an aggregate over the metrics that did not fail would be another figure: NaN unless all are there
    batch_vals = [out[k] for k in SCIB_BATCH_METRICS if k in out]
    bio_vals = [out[k] for k in SCIB_BIO_METRICS]
    out["batch_correction"] = float(np.mean(batch_vals))
    out["bio_conservation"] = float(np.mean(bio_vals))
    out["scib_total"] = 0.4 * out["batch_correction"] + 0.6 * out["bio_conservation"]
    if kmeans_inits > 0 and np.isfinite(out["nmi"]) and np.isfinite(out["ari"]):
        out.update(kmeans_mean_scores(x, lab, out, kmeans_inits))
    return {k: out[k] for k in (*SCIB_BATCH_METRICS, *SCIB_BIO_METRICS, "batch_correction", "bio_conservation",
                                "scib_total", *SCIB_KMEANS_MEAN_METRICS) if k in out}


def kmeans_nmi_ari(latent, labels, inits: int = KMEANS_INITS, seed: int = 0) -> tuple[float, float]:
    """NMI and ARI between ``labels`` and k-means clusters of ``latent`` (as many
    clusters as labels, k-means++, one initialisation per run), each averaged
    over ``inits`` runs seeded ``seed`` … ``seed + inits - 1``.

    scib-metrics scores NMI / ARI from a single k-means run; on a few hundred
    cells that one draw alone moves them by a few hundredths
    (``docs/benchmarks.md``, "The k-means draw"), so the average is the steadier
    figure for comparing two latents.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if inits < 1:
        raise ValueError(f"inits must be at least 1, got {inits}")
    x = _as_2d(latent).astype(np.float64)
    labels = np.asarray(labels)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but the latent has {x.shape[0]} cells")
    k = len(np.unique(labels))
    draws = [(normalized_mutual_info_score(labels, pred, average_method="arithmetic"), adjusted_rand_score(labels, pred))
             for pred in (KMeans(k, n_init=1, random_state=seed + i).fit_predict(x) for i in range(inits))]
    nmi, ari = np.mean(draws, axis=0)
    return float(nmi), float(ari)


def kmeans_mean_scores(latent, labels, scored: dict, inits: int = KMEANS_INITS) -> dict[str, float]:
    """:data:`SCIB_KMEANS_MEAN_METRICS` of one latent: :func:`kmeans_nmi_ari`, and the
    scIB total with those two in place of the single-run NMI / ARI; ``scored`` is
    the latent's :func:`scib_metrics` (its batch correction and other bio metrics
    are reused)."""
    nmi, ari = kmeans_nmi_ari(latent, labels, inits)
    steady = [scored[k] for k in SCIB_BIO_METRICS if k not in ("nmi", "ari") and np.isfinite(scored.get(k, np.nan))]
    bio = float(np.mean([*steady, nmi, ari]))
    return {"nmi_kmeans_mean": nmi, "ari_kmeans_mean": ari,
            "scib_total_kmeans_mean": 0.4 * scored["batch_correction"] + 0.6 * bio}


def evaluate_latent(
    latent,
    batch,
    labels,
    *,
    scib: bool = True,
    unintegrated=None,
    max_cells: int | None = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of one latent: :func:`basic_metrics` plus, when requested
    and installed, :func:`scib_metrics` (on the same seeded subsample of at most
    ``max_cells`` cells, 10,000 by default as in the paper)."""
    out = basic_metrics(latent, batch, labels, max_cells=max_cells, seed=seed)
    if scib and scib_available():
        out.update(scib_metrics(latent, batch, labels, unintegrated=unintegrated, max_cells=max_cells, seed=seed))
    return out
