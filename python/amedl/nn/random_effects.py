"""Per-batch Bayesian random effects: the layers that carry each batch's effects.

A :class:`RandomEffects` layer maps a batch (code or design-matrix row) to
per-feature values whose weights have a mean-field Normal posterior and a
Normal(0, prior_scale) prior; :class:`REBlock` applies a batch's scale and
shift to a dense layer; :func:`posterior_draw` fixes one posterior draw of
every random effect of a network (for Monte Carlo summaries).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class RandomEffects(nn.Module):
    """Per-batch random effects: ``Z @ W`` with a mean-field Normal posterior on ``W``.

    ``W`` (n_batches × n_features) has learned means and softplus scales, and a
    fixed Normal(0, ``prior_scale``) prior. Training samples ``W`` with the
    reparameterisation trick; evaluation uses the posterior mean.

    The batches are given either as integer codes (each cell's row of ``W`` is
    looked up; code -1, a batch not seen in training, gives zero effects) or
    as a design matrix ``Z`` (cells × n_batches), e.g. predicted batch
    probabilities that mix the learned effects; a zero row gives zero effects.
    """

    def __init__(self, n_batches: int, n_features: int, prior_scale: float = 0.25, init_scale: float = 1e-3):
        super().__init__()
        self.prior_scale = float(prior_scale)
        self.mean = nn.Parameter(torch.zeros(n_batches, n_features))
        self.raw_scale = nn.Parameter(torch.full((n_batches, n_features), _inverse_softplus(init_scale)))
        self.draw: torch.Tensor | None = None  # a fixed posterior draw, set by posterior_draw()

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.draw is not None:
            W = self.draw
        elif self.training:
            W = self.mean + self.scale * torch.randn_like(self.mean)
        else:
            W = self.mean
        if batch.is_floating_point():
            return batch @ W
        # a lookup instead of a one-hot product; the appended zero row serves code -1
        return F.embedding(batch.remainder(W.shape[0] + 1), F.pad(W, (0, 0, 0, 1)))

    def kl(self) -> torch.Tensor:
        """KL(posterior ‖ prior), summed over all weights."""
        s = self.scale
        p = self.prior_scale
        return (torch.log(p / s) + (s**2 + self.mean**2) / (2 * p**2) - 0.5).sum()


class REBlock(nn.Module):
    """Dense → BatchNorm → per-batch scale and shift ``h·(1+γ(Z)) + β(Z)`` → SELU."""

    def __init__(self, n_in: int, n_out: int, n_batches: int, prior_scale: float, init_scale: float = 1e-3):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = nn.BatchNorm1d(n_out)
        self.gamma = RandomEffects(n_batches, n_out, prior_scale, init_scale)
        self.beta = RandomEffects(n_batches, n_out, prior_scale, init_scale)

    def forward(self, x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.linear(x))
        return F.selu(h * (1 + self.gamma(Z)) + self.beta(Z))


class BatchMembership(nn.Module):
    """Predicts a cell's batch from its expression (the batch-membership model of
    ARMED, Nguyen et al., IEEE TPAMI 2023). Its softmax over the training batches
    is the design row of a cell from a batch not seen in training, so that the
    cell gets the predicted mixture of the learned random effects instead of none."""

    def __init__(self, n_genes: int, n_batches: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_genes, hidden), nn.ReLU(), nn.Linear(hidden, n_batches))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the batches."""
        return self.net(x)


def batch_design(codes: torch.Tensor, x: torch.Tensor, membership: "BatchMembership | None", n_batches: int) -> torch.Tensor:
    """The batch input of the random effects for a minibatch: the codes themselves
    when every batch is known (or there is no predictor; unseen batches then get
    zero effects), else a design matrix with one-hot rows for known batches and
    the predicted batch probabilities for cells of unseen batches (code -1)."""
    if codes.is_floating_point():
        return codes
    unseen = codes < 0
    if membership is None or not bool(unseen.any()):
        return codes
    Z = one_hot(codes, n_batches)
    probs = torch.softmax(membership(x[unseen]), dim=1)
    Z[unseen, : probs.shape[1]] = probs
    return Z


def grow_random_effects(module: nn.Module, n_new: int, init_scale: float) -> list[tuple[nn.Parameter, int]]:
    """Append ``n_new`` batches (rows with zero mean and posterior scale
    ``init_scale``) to every :class:`RandomEffects` of ``module``. Returns each
    grown parameter with the number of rows it had, so that training can be
    restricted to the new rows."""
    grown = []
    for m in module.modules():
        if isinstance(m, RandomEffects):
            n_old, n_feat = m.mean.shape
            with torch.no_grad():
                mean = torch.cat([m.mean, m.mean.new_zeros(n_new, n_feat)])
                raw = torch.cat([m.raw_scale, m.raw_scale.new_full((n_new, n_feat), _inverse_softplus(init_scale))])
            m.mean, m.raw_scale = nn.Parameter(mean), nn.Parameter(raw)
            grown += [(m.mean, n_old), (m.raw_scale, n_old)]
    return grown


def grow_output(linear: nn.Linear, n_new: int, bias: float = 0.0) -> None:
    """Append ``n_new`` outputs (zero weights, constant ``bias``) to a layer whose
    outputs are batches, e.g. a classifier, after new batches were added."""
    with torch.no_grad():
        weight = torch.cat([linear.weight, linear.weight.new_zeros(n_new, linear.in_features)])
        b = torch.cat([linear.bias, linear.bias.new_full((n_new,), bias)])
    linear.weight, linear.bias = nn.Parameter(weight), nn.Parameter(b)
    linear.out_features += n_new


def _kl_of_random_effects(module: nn.Module) -> torch.Tensor:
    terms = [m.kl() for m in module.modules() if isinstance(m, RandomEffects)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def one_hot(codes: torch.Tensor, n_batches: int) -> torch.Tensor:
    """One-hot design matrix; negative codes (unseen batches) give a zero row."""
    Z = torch.zeros(codes.shape[0], n_batches, device=codes.device)
    known = codes >= 0
    Z[known, codes[known]] = 1.0
    return Z


@contextlib.contextmanager
def posterior_draw(module: nn.Module, generator: torch.Generator) -> Iterator[None]:
    """Within the block, every :class:`RandomEffects` of ``module`` uses one draw of
    its weights from its posterior (drawn with ``generator``) instead of its mean,
    so that several forward passes (e.g. decoding the same cells as two batches)
    see the same draw."""
    layers = [m for m in module.modules() if isinstance(m, RandomEffects)]
    try:
        with torch.no_grad():
            for m in layers:
                noise = torch.randn(m.mean.shape, generator=generator, device=generator.device)
                m.draw = m.mean + m.scale * noise.to(m.mean.device)
        yield
    finally:
        for m in layers:
            m.draw = None
