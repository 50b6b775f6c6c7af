"""Encoder, decoder and likelihood layers shared by the aMEDL networks."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .random_effects import REBlock, RandomEffects

LIKELIHOODS = ("mse", "nb")


def _activation(name: str) -> nn.Module:
    if name == "selu":
        return nn.SELU()
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"latent activation must be 'selu' or 'linear', got {name!r}")


class Encoded(NamedTuple):
    """An encoder's output: ``z`` the latent used for decoding (a posterior sample in
    training when variational), ``mean`` the latent reported at inference,
    ``logvar`` the posterior log-variance (``None`` if not variational),
    ``layers`` every layer's output (``mean`` last), which the adversary sees."""

    z: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor | None
    layers: list



def negative_binomial_nll(counts: torch.Tensor, mu: torch.Tensor, log_theta: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` under NB(mean ``mu``, inverse dispersion
    ``exp(log_theta)``), element-wise."""
    theta = log_theta.exp()
    eps = 1e-8
    log_theta_mu = torch.log(theta + mu + eps)
    ll = (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + counts * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(counts + theta)
        - torch.lgamma(theta)
        - torch.lgamma(counts + 1)
    )
    return -ll


class ExpressionHead(nn.Module):
    """The decoder's output layer and its likelihood.

    ``"mse"``: the output is the scaled model input itself; the loss is the
    mean squared error. ``"nb"``: the output holds log-rates over the model
    genes; a softmax gives each cell's expression proportions, the counts are
    negative binomial with mean proportion × the cell's total counts over the
    model genes and a per-gene inverse dispersion, and the loss is the mean
    negative log-likelihood per gene. Either way the output is
    ``out·(1+γ(Z)) + β(Z)`` with per-gene, per-batch random effects.
    """

    def __init__(
        self, n_in: int, n_genes: int, n_batches: int, prior_scale: float, likelihood: str = "mse", target_sum: float = 1e4,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.target_sum = float(target_sum)
        self.linear = nn.Linear(n_in, n_genes)
        self.gamma = RandomEffects(n_batches, n_genes, prior_scale, init_scale)
        self.beta = RandomEffects(n_batches, n_genes, prior_scale, init_scale)
        if likelihood == "nb":
            self.log_theta = nn.Parameter(torch.zeros(n_genes))

    @property
    def output_space(self) -> str:
        return "scaled" if self.likelihood == "mse" else "log1p"

    def forward(self, h: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return self.linear(h) * (1 + self.gamma(Z)) + self.beta(Z)

    def loss(self, out: torch.Tensor, mb) -> torch.Tensor:
        """Mean reconstruction loss per cell and gene of a minibatch."""
        if self.likelihood == "mse":
            return F.mse_loss(out, mb.x)
        counts = mb.counts
        mu = torch.softmax(out, dim=1) * counts.sum(1, keepdim=True)
        return negative_binomial_nll(counts, mu, self.log_theta).mean()

    def expression(self, out: torch.Tensor, mb) -> torch.Tensor:
        """Decoded expression in :attr:`output_space` units. For ``"nb"``: log1p of the
        expected counts per ``target_sum`` total counts, keeping each cell's share of
        counts in the model genes."""
        if self.likelihood == "mse":
            return out
        counts = mb.counts
        model_share = counts.sum(1, keepdim=True) / mb.library[:, None]
        return torch.log1p(torch.softmax(out, dim=1) * model_share * self.target_sum)



class DenseEncoder(nn.Module):
    """``x`` → (Linear → BatchNorm → SELU) per hidden layer → latent, with no batch input.

    ``variational=True`` adds a log-variance head: the latent is a Gaussian
    posterior, sampled in training, its mean at inference.
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_latent: int, latent_activation: str = "linear", variational: bool = False):
        super().__init__()
        dims = [n_in, *hidden]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b), nn.SELU()) for a, b in zip(dims[:-1], dims[1:])
        )
        self.mean = nn.Linear(dims[-1], n_latent)
        self.logvar = nn.Linear(dims[-1], n_latent) if variational else None
        self.latent_act = _activation(latent_activation)
        self.layer_sizes = [*hidden, n_latent]

    def forward(self, x: torch.Tensor) -> Encoded:
        outputs = []
        h = x
        for layer in self.layers:
            h = layer(h)
            outputs.append(h)
        mean = self.latent_act(self.mean(h))
        outputs.append(mean)
        if self.logvar is None:
            return Encoded(mean, mean, None, outputs)
        logvar = self.logvar(h).clamp(-12.0, 8.0)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return Encoded(z, mean, logvar, outputs)


class RandomEffectsDecoder(nn.Module):
    """Latent → :class:`REBlock` per hidden layer → :class:`ExpressionHead`: every layer
    is shifted and scaled by the decoded batch's random effects."""

    def __init__(
        self, n_latent: int, hidden: Sequence[int], n_genes: int, n_batches: int, prior_scale: float,
        likelihood: str = "mse", target_sum: float = 1e4, init_scale: float = 1e-3,
    ):
        super().__init__()
        dims = [n_latent, *hidden]
        self.blocks = nn.ModuleList(REBlock(a, b, n_batches, prior_scale, init_scale) for a, b in zip(dims[:-1], dims[1:]))
        self.head = ExpressionHead(dims[-1], n_genes, n_batches, prior_scale, likelihood, target_sum, init_scale)

    def forward(self, z: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        h = z
        for block in self.blocks:
            h = block(h, Z)
        return self.head(h, Z)


def _gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor | None) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)), summed over latent dimensions, mean over cells."""
    if logvar is None:
        return mean.new_zeros(())
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(1).mean()
