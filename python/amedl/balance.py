"""Cluster-balanced batch weights for the FE adversary.

Where batches differ in cell-type composition, the batch can be predicted from
the cell type alone, and an adversary trained on every cell teaches the encoder
to blur exactly those cell types. :class:`ClusterBalance` follows the latent
with an online k-means and reweights each cell by ``p(b) / p(b | cluster)``:
within every cluster the batches then count as often as they do overall, so an
adversary scored with these weights gains nothing from composition, only from
batch differences inside a cluster, while the chance cross-entropy stays the
overall one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed


class ClusterBalance:
    """Online k-means of the latent with per-cluster batch counts.

    ``update(z, b)`` moves each centroid a fraction ``rate`` towards the mean of
    the minibatch cells assigned to it and decays the cluster × batch counts
    by ``decay`` before adding the minibatch's; ``weights(z, b)`` gives each
    cell ``p(b) / p(b | its cluster)`` (counts smoothed with one prior-weighted
    pseudo-cell, capped at ``max_weight``). Under ``torch.distributed`` the
    per-step sums are all-reduced, so every rank keeps the same clusters.
    """

    def __init__(self, n_clusters: int, batch_prior: torch.Tensor, generator: torch.Generator,
                 rate: float = 0.1, decay: float = 0.99, max_weight: float = 10.0):
        self.k = int(n_clusters)
        self.prior = batch_prior.float()
        self.generator = generator
        self.rate, self.decay, self.max_weight = float(rate), float(decay), float(max_weight)
        self.centroids: torch.Tensor | None = None
        self.counts = torch.zeros(self.k, len(self.prior))

    def _to(self, device) -> None:
        if self.counts.device != device:
            self.counts, self.prior = self.counts.to(device), self.prior.to(device)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cdist(z, self.centroids).argmin(1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, b: torch.Tensor) -> None:
        z = z.detach().float()
        self._to(z.device)
        if self.centroids is None:
            pick = torch.randperm(len(z), generator=self.generator)[: self.k].to(z.device)
            # fewer cells than clusters: the first ones repeat and merge
            centroids = z[pick.repeat(-(-self.k // len(pick)))[: self.k]].clone()
            self.centroids = distributed.broadcast_from_first(centroids)
        a = self.assign(z)
        sums = torch.zeros_like(self.centroids).index_add_(0, a, z)
        table = torch.zeros_like(self.counts).index_put_((a, b), torch.ones_like(a, dtype=z.dtype), accumulate=True)
        sums, table = distributed.all_reduce_sum(sums), distributed.all_reduce_sum(table)
        n = table.sum(1, keepdim=True)
        seen = n[:, 0] > 0
        target = sums[seen] / n[seen]
        self.centroids[seen] += self.rate * (target - self.centroids[seen])
        self.counts = self.decay * self.counts + table

    @torch.no_grad()
    def weights(self, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-cell weights ``p(b) / p(b | cluster)``; all ones before the first update."""
        if self.centroids is None:
            return torch.ones(len(b), device=z.device)
        self._to(z.device)
        counts = self.counts[self.assign(z.detach().float())]
        p_cluster = (counts.gather(1, b[:, None])[:, 0] + self.prior[b]) / (counts.sum(1) + 1.0)
        return (self.prior[b] / p_cluster).clamp(max=self.max_weight)


def weighted_cross_entropy(logits: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy averaged with per-cell weights (plain mean when ``w`` is ``None``)."""
    if w is None:
        return F.cross_entropy(logits, b)
    return (w * F.cross_entropy(logits, b, reduction="none")).sum() / w.sum()

