"""Torch modules of aMEDL: tied autoencoder, adversary, random-effects layers, RE autoencoder.

Modules only compute; the training loops are in :mod:`amedl.train` and the
user-facing model in :mod:`amedl.model`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _activation(name: str) -> nn.Module:
    if name == "selu":
        return nn.SELU()
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"latent activation must be 'selu' or 'linear', got {name!r}")


class TiedAutoencoder(nn.Module):
    """Dense encoder (Linear → BatchNorm → SELU per hidden layer, then a latent layer)
    with a decoder tied to it: the decoder uses the transposed encoder weights
    and its own biases and batch norms, and has a linear output.

    This is the fixed-effects autoencoder of aMEDL (trained against an
    :class:`Adversary`) and, trained alone, the plain autoencoder baseline.
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (512, 132), n_latent: int = 50, latent_activation: str = "selu"):
        super().__init__()
        dims = [n_genes, *hidden, n_latent]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.enc_norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden)
        self.latent_act = _activation(latent_activation)
        # decoder: biases for each transposed layer, batch norms for its hidden layers
        self.dec_biases = nn.ParameterList(nn.Parameter(torch.zeros(a)) for a in dims[:-1])
        self.dec_norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden)
        self.layer_sizes = [*hidden, n_latent]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the latent and the outputs of every encoder layer (latent last)."""
        outputs = []
        h = x
        for lin, norm in zip(self.linears[:-1], self.enc_norms):
            h = F.selu(norm(lin(h)))
            outputs.append(h)
        z = self.latent_act(self.linears[-1](h))
        outputs.append(z)
        return z, outputs

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        n = len(self.linears)
        for i in reversed(range(n)):
            h = F.linear(h, self.linears[i].weight.t(), self.dec_biases[i])
            if i > 0:
                h = F.selu(self.dec_norms[i - 1](h))
        return h

    def forward(self, x: torch.Tensor):
        z, outputs = self.encode(x)
        return self.decode(z), z, outputs


class Adversary(nn.Module):
    """Predicts the batch from the concatenated outputs of all encoder layers."""

    def __init__(self, n_in: int, n_batches: int, hidden: Sequence[int] = (512, 132)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = n_in
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, n_batches))
        self.net = nn.Sequential(*layers)

    def forward(self, encoder_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.net(torch.cat(list(encoder_outputs), dim=1))


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class RandomEffects(nn.Module):
    """Per-batch random effects: ``Z @ W`` with a mean-field Normal posterior on ``W``.

    ``W`` (n_batches × n_features) has learned means and softplus scales, and a
    fixed Normal(0, ``prior_scale``) prior. Training samples ``W`` with the
    reparameterisation trick; evaluation uses the posterior mean.

    The batches are given either as integer codes (each cell's row of ``W`` is
    looked up; code -1, a batch not seen in training, gives zero effects) or
    as a design matrix ``Z`` (cells × n_batches; a zero row gives zero effects).
    """

    def __init__(self, n_batches: int, n_features: int, prior_scale: float = 0.25, init_scale: float = 1e-3):
        super().__init__()
        self.prior_scale = float(prior_scale)
        self.mean = nn.Parameter(torch.zeros(n_batches, n_features))
        self.raw_scale = nn.Parameter(torch.full((n_batches, n_features), _inverse_softplus(init_scale)))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.training:
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

    def __init__(self, n_in: int, n_out: int, n_batches: int, prior_scale: float):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.norm = nn.BatchNorm1d(n_out)
        self.gamma = RandomEffects(n_batches, n_out, prior_scale)
        self.beta = RandomEffects(n_batches, n_out, prior_scale)

    def forward(self, x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.linear(x))
        return F.selu(h * (1 + self.gamma(Z)) + self.beta(Z))


class REAutoencoder(nn.Module):
    """Random-effects autoencoder: every hidden layer of encoder and decoder and
    the decoder's output carry per-batch Bayesian scale and shift; a cooperative
    classifier on the latent predicts the batch.

    ``forward(x, Z_enc, Z_dec=None)``: ``Z_enc`` is the batch of each cell for
    the encoder, as integer codes (-1: not seen in training) or a one-hot
    design matrix (see :class:`RandomEffects`); ``Z_dec`` (default ``Z_enc``)
    the batch to decode as, which gives counterfactual reconstructions.
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int,
        hidden: Sequence[int] = (512, 132),
        n_latent: int = 50,
        prior_scale: float = 0.25,
        classifier_hidden: int = 32,
    ):
        super().__init__()
        self.n_batches = n_batches
        enc_dims = [n_genes, *hidden]
        self.encoder = nn.ModuleList(REBlock(a, b, n_batches, prior_scale) for a, b in zip(enc_dims[:-1], enc_dims[1:]))
        self.latent = nn.Linear(hidden[-1], n_latent)
        dec_dims = [n_latent, *reversed(hidden)]
        self.decoder = nn.ModuleList(REBlock(a, b, n_batches, prior_scale) for a, b in zip(dec_dims[:-1], dec_dims[1:]))
        self.output = nn.Linear(hidden[0], n_genes)
        self.out_gamma = RandomEffects(n_batches, n_genes, prior_scale)
        self.out_beta = RandomEffects(n_batches, n_genes, prior_scale)
        self.classifier = nn.Sequential(nn.Linear(n_latent, classifier_hidden), nn.ReLU(), nn.Linear(classifier_hidden, n_batches))

    def one_hot(self, codes: torch.Tensor) -> torch.Tensor:
        """One-hot design matrix; negative codes (unseen batches) give a zero row."""
        Z = torch.zeros(codes.shape[0], self.n_batches, device=codes.device)
        known = codes >= 0
        Z[known, codes[known]] = 1.0
        return Z

    def encode(self, x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.encoder:
            h = block(h, Z)
        return self.latent(h)

    def decode(self, z: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        h = z
        for block in self.decoder:
            h = block(h, Z)
        out = self.output(h)
        return out * (1 + self.out_gamma(Z)) + self.out_beta(Z)

    def forward(self, x: torch.Tensor, Z_enc: torch.Tensor, Z_dec: torch.Tensor | None = None):
        z = self.encode(x, Z_enc)
        x_hat = self.decode(z, Z_enc if Z_dec is None else Z_dec)
        return x_hat, z, self.classifier(z)

    def random_effects(self):
        return [m for m in self.modules() if isinstance(m, RandomEffects)]

    def kl(self) -> torch.Tensor:
        return sum(m.kl() for m in self.random_effects())
