"""Random intercepts of the batches in the fixed-effects latent.

The adversary makes the FE encoder's latent hard to tell apart by batch, but
a small shift of each batch's cells within a cell population can remain. This
module models that rest as a random effect: within each of ``K`` soft clusters
of the latent, every batch has an intercept ``u[k, b]`` with a Gaussian prior
around 0, and its posterior mean (the shrunk mean offset of the batch's cells
from the cluster's pooled mean,

    u[k, b] = sum_i r_ik (z_i - m_k) / (sum_i r_ik + shrinkage),

sums over the batch's cells, ``r_ik`` their soft cluster memberships) is
subtracted from each cell, weighted by its memberships. ``shrinkage`` is the
prior's weight in cells: a batch with few cells in a cluster keeps most of its
offset at 0. Clustering and correction alternate for a few rounds, each round
on the corrected latent of the one before (as Harmony's correction does, without
its diversity penalty).

Where one cluster holds several cell types whose shares differ between batches,
a batch's offset from the cluster's pooled mean is partly its cell types' offset.
``offsets="neighbours"`` therefore measures each cell's offset from its nearest
cells of the other batches instead (:func:`_local_offsets`), and pools those per
batch and cluster in the same way.

The intercepts are estimated once, on the training cells, when the FE network
has been trained, and stored with the model, so that :meth:`LatentIntercepts.apply`
maps each cell on its own: a cell's corrected latent does not depend on which
other cells are embedded with it. Batches added by :meth:`amedl.AMEDL.adapt`
get their intercepts from their own cells (:meth:`LatentIntercepts.add_batches`),
measured the same way: with neighbour offsets, from their nearest cells among
a sample of the training cells, kept for each round. Cells of batches the model
does not know keep the encoder's latent.
"""
from __future__ import annotations

import numpy as np

#: Training cells (at most) on which the intercepts are estimated.
MAX_CELLS = 50_000
#: Cells corrected at a time by :meth:`LatentIntercepts.apply`.
CHUNK = 65_536
#: Training cells (at most) kept, per round, as the reference that the cells of
#: batches added later are compared with (``offsets="neighbours"``).
REFERENCE_CELLS = 5_000
#: Nearest cells of the other batches that a cell is compared with (``offsets="neighbours"``).
NEIGHBOURS = 10


def _squared_distances(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(n, K)`` squared distances of the cells to the centres."""
    return ((z[:, None, :] - centres[None]) ** 2).sum(-1)


def _memberships(z: np.ndarray, centres: np.ndarray, scale: float, d2: np.ndarray | None = None) -> np.ndarray:
    """Soft cluster memberships: ``exp(-(d² - min d²) / scale)``, normalised per cell
    (``d2``: the squared distances, where already computed)."""
    d2 = _squared_distances(z, centres) if d2 is None else d2
    r = np.exp(-(d2 - d2.min(1, keepdims=True)) / scale)
    return r / r.sum(1, keepdims=True)


def _pooled(d: np.ndarray, r: np.ndarray, codes: np.ndarray, n_batches: int, shrinkage: float,
            centre: np.ndarray | None = None) -> np.ndarray:
    """``(K, n_batches, dim)``: per batch and cluster, the membership-weighted sum of the
    cells' offsets ``d`` (``(n, dim)``; from ``centre``, ``(K, dim)``, where given: each
    cluster's own) over the weights plus ``shrinkage``."""
    out = np.zeros((r.shape[1], n_batches, d.shape[1]))
    for b in range(n_batches):
        rb, weight = r[codes == b], r[codes == b].sum(0)[:, None]
        if len(rb):
            sums = rb.T @ d[codes == b] - (0.0 if centre is None else weight * centre)
            out[:, b] = sums / (weight + shrinkage)
    return out


def _offsets_from(z: np.ndarray, ref: np.ndarray, ref_codes: np.ndarray, k: int = NEIGHBOURS,
                  algorithm: str = "auto") -> np.ndarray:
    """Each cell's offset from the mean of its ``k`` nearest cells in ``ref`` (cells of
    other batches), times ``(B − 1) / B``, ``B`` the batches among them plus its own
    (``algorithm``: scikit-learn's neighbour search)."""
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=min(k, len(ref)), algorithm=algorithm).fit(ref)
    idx = search.kneighbors(z, return_distance=False)
    near = np.sort(ref_codes[idx], axis=1)
    n_batches = 2 + (np.diff(near, axis=1) != 0).sum(1)  # distinct batches among them, plus the cell's own
    return (z - ref[idx].mean(1)) * ((n_batches - 1) / n_batches)[:, None]


def _local_offsets(z: np.ndarray, codes: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each cell's offset from the mean of its ``k`` nearest cells of the other batches,
    times ``(B − 1) / B``, ``B`` the batches among those neighbours plus its own: with
    batch intercepts ``u``, that is its batch's intercept minus the local mean of all
    batches' (each cell is compared with cells like it, so a cell type more common in
    one batch is no offset). The neighbours are chosen by their closeness, so where a
    shift is as large as a population's spread one round measures only part of it."""
    out = np.zeros_like(z)
    for b in np.unique(codes):
        mine, others = codes == b, codes != b
        if others.any():
            out[mine] = _offsets_from(z[mine], z[others], codes[others], k)
    return out


def _shift(z: np.ndarray, r: np.ndarray, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each cell of a known batch (code in range) minus its batch's offsets, weighted by its memberships."""
    known = (codes >= 0) & (codes < offsets.shape[1])
    out = z.copy()
    out[known] -= np.einsum("nk,nkd->nd", r[known], offsets[:, codes[known]].transpose(1, 0, 2))
    return out


class LatentIntercepts:
    """Per-batch random intercepts in soft clusters of a latent, for several rounds.

    ``centres`` ``(rounds, K, d)``: the k-means centres of each round (the soft
    memberships' reference); ``means`` ``(rounds, K, d)``: each cluster's pooled
    soft mean; ``offsets`` ``(rounds, K, n_batches, d)``: the intercepts;
    ``scales`` ``(rounds,)``: the memberships' bandwidth (the median squared
    distance of a cell to its nearest centre); ``shrinkage``: the prior's weight;
    ``reference`` ``(rounds, n, d)`` and ``reference_codes`` ``(n,)`` (neighbour
    offsets only, else ``None``): a sample of the training cells as each round
    saw them, for :meth:`add_batches`.
    """

    def __init__(self, centres, means, offsets, scales, shrinkage: float, reference=None, reference_codes=None):
        self.centres = np.asarray(centres, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.offsets = np.asarray(offsets, dtype=np.float64)
        self.scales = np.asarray(scales, dtype=np.float64)
        self.shrinkage = float(shrinkage)
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float64)
        self.reference_codes = None if reference_codes is None else np.asarray(reference_codes, dtype=np.int64)

    @property
    def n_batches(self) -> int:
        return self.offsets.shape[2]

    @classmethod
    def fit(cls, z: np.ndarray, codes: np.ndarray, n_batches: int, *, n_clusters: int = 10, shrinkage: float = 1.0,
            rounds: int = 3, seed: int = 0, offsets: str = "cluster") -> "LatentIntercepts":
        """Estimate the intercepts on the latent ``z`` of cells of batches ``codes`` (0 … n_batches − 1).

        ``offsets``: what a cell's offset is measured from: its cluster's pooled
        mean (``"cluster"``) or its nearest cells of the other batches
        (``"neighbours"``, :data:`NEIGHBOURS` of them; robust to cell types whose
        share differs between batches within one cluster).
        """
        if offsets not in ("cluster", "neighbours"):
            raise ValueError(f"offsets must be 'cluster' or 'neighbours', got {offsets!r}")
        from sklearn.cluster import KMeans

        z = np.asarray(z, dtype=np.float64)
        codes = np.asarray(codes)
        k = int(min(n_clusters, len(z)))
        centres, means, shifts, scales, reference = [], [], [], [], []
        keep = np.arange(len(z))
        if len(keep) > REFERENCE_CELLS:
            keep = np.sort(np.random.default_rng([seed, 29]).choice(keep, size=REFERENCE_CELLS, replace=False))
        for t in range(rounds):
            km = KMeans(k, n_init=3, random_state=seed + t).fit(z)
            c = km.cluster_centers_
            d2 = _squared_distances(z, c)
            scale = float(np.median(d2.min(1)))
            scale = scale if scale > 0 else 1.0
            r = _memberships(z, c, scale, d2)
            m = (r.T @ z) / np.maximum(r.sum(0), 1e-12)[:, None]
            if offsets == "cluster":
                off = _pooled(z, r, codes, n_batches, shrinkage, centre=m)
            else:
                off = _pooled(_local_offsets(z, codes), r, codes, n_batches, shrinkage)
                reference.append(z[keep])
            z = _shift(z, r, codes, off)
            centres.append(c), means.append(m), shifts.append(off), scales.append(scale)
        neighbours = offsets == "neighbours"
        return cls(centres, means, shifts, scales, shrinkage, reference if neighbours else None,
                   codes[keep] if neighbours else None)

    def apply(self, z: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The latent ``z`` with each cell's batch intercepts removed (cells whose
        code is −1 or not a batch of these intercepts are left as they are)."""
        dtype = np.asarray(z).dtype
        z = np.asarray(z)
        codes = np.asarray(codes)
        out = np.empty(z.shape, dtype=dtype if np.issubdtype(dtype, np.floating) else np.float32)
        for lo in range(0, len(z), CHUNK):  # each cell on its own: chunks bound the memory
            part = z[lo : lo + CHUNK].astype(np.float64)
            for c, off, scale in zip(self.centres, self.offsets, self.scales):
                part = _shift(part, _memberships(part, c, scale), codes[lo : lo + CHUNK], off)
            out[lo : lo + CHUNK] = part
        return out

    def add_batches(self, z: np.ndarray, codes: np.ndarray, n_new: int) -> "LatentIntercepts":
        """A copy with ``n_new`` more batches, whose intercepts are estimated from
        their cells' latent ``z`` (``codes`` 0 … n_new − 1) against the stored
        clusters, each cell's offset measured as :meth:`fit` measured it (from
        its nearest reference cells, or from its cluster's pooled mean where no
        reference is stored); the known batches' intercepts do not change."""
        z = np.asarray(z, dtype=np.float64)
        codes = np.asarray(codes)
        grown = []
        for t, (c, m, off, scale) in enumerate(zip(self.centres, self.means, self.offsets, self.scales)):
            r = _memberships(z, c, scale)
            if self.reference is None:
                new = _pooled(z, r, codes, n_new, self.shrinkage, centre=m)
            else:
                d = _offsets_from(z, self.reference[t], self.reference_codes)
                new = _pooled(d, r, codes, n_new, self.shrinkage)
            z = _shift(z, r, codes, new)
            grown.append(np.concatenate([off, new], axis=1))
        return LatentIntercepts(self.centres, self.means, grown, self.scales, self.shrinkage, self.reference,
                                self.reference_codes)

    def state(self) -> dict:
        """The arrays as float64 torch tensors (stored in the model's ``weights.pt``; a
        saved and loaded model gives the same latents to the last digit)."""
        import torch

        state = {name: torch.as_tensor(getattr(self, name), dtype=torch.float64)
                 for name in ("centres", "means", "offsets", "scales")}
        if self.reference is not None:
            state["reference"] = torch.as_tensor(self.reference, dtype=torch.float64)
            state["reference_codes"] = torch.as_tensor(self.reference_codes, dtype=torch.int64)
        return {**state, "shrinkage": torch.tensor(self.shrinkage, dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: dict) -> "LatentIntercepts":
        """The inverse of :meth:`state` (intercepts saved without a reference add
        batches by cluster offsets)."""
        reference, codes = state.get("reference"), state.get("reference_codes")
        return cls(*(np.asarray(state[n].double()) for n in ("centres", "means", "offsets", "scales")),
                   float(state["shrinkage"]), None if reference is None else np.asarray(reference.double()),
                   None if codes is None else np.asarray(codes))
