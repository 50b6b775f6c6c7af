"""Torch modules of aMEDL. Modules only compute; training is in :mod:`amedl.train`
and the user-facing model in :mod:`amedl.model`.

Every network the model trains has the same small interface, so the model
never branches on the kind of network:

* ``latent(mb)``: the latent of a :class:`~amedl.data.Minibatch` (posterior
  means at inference);
* ``reconstruct(mb, target=None)``: expression decoded from that latent, as the
  cells' own batches or, with ``target`` (batch codes), as if measured in those
  batches (a counterfactual); in the space named by ``output_space``
  (``"scaled"``: the model's scaled input, ``"log1p"``: log1p counts per
  ``target_sum``);
* ``batch_aware``: whether ``reconstruct`` accepts a ``target``.

Networks:

* :class:`FixedEffectsNetwork`: an encoder without batch input whose latent an
  :class:`Adversary` keeps batch-blind, and a decoder: either a
  :class:`MixedEffectsAutoencoder` (the default: the decoder receives the batch
  through per-batch Bayesian random effects, so the reconstruction is fixed
  effects of the latent plus random effects of the batch) or the published
  :class:`TiedAutoencoder` (decoder tied to the encoder, no batch input);
* :class:`REAutoencoder`: the random-effects network, whose every layer
  carries per-batch random effects and whose latent a cooperative classifier
  fills with batch information;
* :class:`PlainAutoencoder`: the tied autoencoder alone (the baseline).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


# ---------------------------------------------------------------------------
# random effects


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


def _kl_of_random_effects(module: nn.Module) -> torch.Tensor:
    terms = [m.kl() for m in module.modules() if isinstance(m, RandomEffects)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def one_hot(codes: torch.Tensor, n_batches: int) -> torch.Tensor:
    """One-hot design matrix; negative codes (unseen batches) give a zero row."""
    Z = torch.zeros(codes.shape[0], n_batches, device=codes.device)
    known = codes >= 0
    Z[known, codes[known]] = 1.0
    return Z


# ---------------------------------------------------------------------------
# likelihoods


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

    def __init__(self, n_in: int, n_genes: int, n_batches: int, prior_scale: float, likelihood: str = "mse", target_sum: float = 1e4):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.likelihood = likelihood
        self.target_sum = float(target_sum)
        self.linear = nn.Linear(n_in, n_genes)
        self.gamma = RandomEffects(n_batches, n_genes, prior_scale)
        self.beta = RandomEffects(n_batches, n_genes, prior_scale)
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


# ---------------------------------------------------------------------------
# encoders and decoders


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
        likelihood: str = "mse", target_sum: float = 1e4,
    ):
        super().__init__()
        dims = [n_latent, *hidden]
        self.blocks = nn.ModuleList(REBlock(a, b, n_batches, prior_scale) for a, b in zip(dims[:-1], dims[1:]))
        self.head = ExpressionHead(dims[-1], n_genes, n_batches, prior_scale, likelihood, target_sum)

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


# ---------------------------------------------------------------------------
# autoencoders


class TiedAutoencoder(nn.Module):
    """Dense encoder (Linear → BatchNorm → SELU per hidden layer, then a latent layer)
    with a decoder tied to it: the decoder uses the transposed encoder weights
    and its own biases and batch norms, and has a linear output (MSE on the
    scaled input). It has no batch input.

    The published fixed-effects autoencoder of aMEDL (``preset="paper"``) and,
    trained alone, the plain autoencoder baseline.
    """

    output_space = "scaled"
    batch_aware = False

    def __init__(self, n_genes: int, hidden: Sequence[int] = (512, 132), n_latent: int = 50, latent_activation: str = "selu"):
        super().__init__()
        dims = [n_genes, *hidden, n_latent]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.enc_norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden)
        self.latent_act = _activation(latent_activation)
        self.dec_biases = nn.ParameterList(nn.Parameter(torch.zeros(a)) for a in dims[:-1])
        self.dec_norms = nn.ModuleList(nn.BatchNorm1d(h) for h in hidden)
        self.layer_sizes = [*hidden, n_latent]

    def encode(self, x: torch.Tensor) -> Encoded:
        outputs = []
        h = x
        for lin, norm in zip(self.linears[:-1], self.enc_norms):
            h = F.selu(norm(lin(h)))
            outputs.append(h)
        z = self.latent_act(self.linears[-1](h))
        outputs.append(z)
        return Encoded(z, z, None, outputs)

    def decode(self, z: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        h = z
        for i in reversed(range(len(self.linears))):
            h = F.linear(h, self.linears[i].weight.t(), self.dec_biases[i])
            if i > 0:
                h = F.selu(self.dec_norms[i - 1](h))
        return h

    def recon_loss(self, out: torch.Tensor, mb) -> torch.Tensor:
        return F.mse_loss(out, mb.x)

    def expression(self, out: torch.Tensor, mb) -> torch.Tensor:
        return out

    def kl(self) -> torch.Tensor:
        return self.dec_biases[0].new_zeros(())


class MixedEffectsAutoencoder(nn.Module):
    """The mixed-effects autoencoder: a :class:`DenseEncoder` without batch input
    and a :class:`RandomEffectsDecoder` that receives the batch only through
    per-batch Bayesian random effects. The reconstruction is fixed effects of
    the latent plus random effects of the batch, so the latent needs no batch
    information, and decoding a latent with another batch's effects is a
    counterfactual ("this cell as if measured in batch b")."""

    batch_aware = True

    def __init__(
        self,
        n_genes: int,
        n_batches: int,
        hidden: Sequence[int] = (512, 132),
        n_latent: int = 50,
        prior_scale: float = 0.25,
        *,
        likelihood: str = "mse",
        latent_activation: str = "linear",
        variational: bool = False,
        target_sum: float = 1e4,
    ):
        super().__init__()
        self.n_batches = n_batches
        self.encoder = DenseEncoder(n_genes, hidden, n_latent, latent_activation, variational)
        self.decoder = RandomEffectsDecoder(
            n_latent, list(reversed(hidden)), n_genes, n_batches, prior_scale, likelihood, target_sum
        )
        self.layer_sizes = self.encoder.layer_sizes

    @property
    def output_space(self) -> str:
        return self.decoder.head.output_space

    def encode(self, x: torch.Tensor) -> Encoded:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, batch)

    def recon_loss(self, out: torch.Tensor, mb) -> torch.Tensor:
        return self.decoder.head.loss(out, mb)

    def expression(self, out: torch.Tensor, mb) -> torch.Tensor:
        return self.decoder.head.expression(out, mb)

    def kl(self) -> torch.Tensor:
        """KL of all random effects to their prior (summed over weights)."""
        return _kl_of_random_effects(self)


class Adversary(nn.Module):
    """Predicts the batch from the concatenated outputs of encoder layers."""

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


class FixedEffectsNetwork(nn.Module):
    """An autoencoder (mixed-effects or tied) and the adversary that keeps its
    encoder batch-blind. ``adversary_input="all"`` shows the adversary every
    encoder layer's output, ``"latent"`` only the latent."""

    def __init__(self, autoencoder: nn.Module, n_batches: int, adversary_hidden: Sequence[int], adversary_input: str = "all"):
        super().__init__()
        if adversary_input not in ("all", "latent"):
            raise ValueError(f"adversary_input must be 'all' or 'latent', got {adversary_input!r}")
        self.autoencoder = autoencoder
        self.adversary_input = adversary_input
        n_in = sum(autoencoder.layer_sizes) if adversary_input == "all" else autoencoder.layer_sizes[-1]
        self.adversary = Adversary(n_in, n_batches, adversary_hidden)

    @property
    def output_space(self) -> str:
        return self.autoencoder.output_space

    @property
    def batch_aware(self) -> bool:
        return self.autoencoder.batch_aware

    @property
    def expression_head(self) -> "ExpressionHead | None":
        """The output layer with per-batch effects (``None`` for the tied decoder)."""
        dec = getattr(self.autoencoder, "decoder", None)
        return None if dec is None else dec.head

    def adversary_view(self, enc: Encoded) -> list:
        return enc.layers if self.adversary_input == "all" else [enc.mean]

    def latent(self, mb) -> torch.Tensor:
        return self.autoencoder.encode(mb.x).mean

    def reconstruct(self, mb, target: torch.Tensor | None = None) -> torch.Tensor:
        ae = self.autoencoder
        out = ae.decode(ae.encode(mb.x).mean, mb.batch if target is None else target)
        return ae.expression(out, mb)


class PlainAutoencoder(nn.Module):
    """The plain autoencoder baseline: the tied autoencoder with no adversary."""

    batch_aware = False
    output_space = "scaled"

    def __init__(self, autoencoder: TiedAutoencoder):
        super().__init__()
        self.autoencoder = autoencoder

    def latent(self, mb) -> torch.Tensor:
        return self.autoencoder.encode(mb.x).mean

    def reconstruct(self, mb, target: torch.Tensor | None = None) -> torch.Tensor:
        ae = self.autoencoder
        return ae.decode(ae.encode(mb.x).mean)


class REAutoencoder(nn.Module):
    """Random-effects autoencoder: every hidden layer of encoder and decoder and
    the decoder's output carry per-batch Bayesian scale and shift; a cooperative
    classifier on the latent predicts the batch.

    ``forward(x, Z_enc, Z_dec=None)``: ``Z_enc`` is the batch of each cell for
    the encoder, as integer codes (-1: not seen in training) or a design
    matrix (see :class:`RandomEffects`); ``Z_dec`` (default ``Z_enc``) the batch
    to decode as, which gives counterfactual reconstructions.
    """

    batch_aware = True
    output_space = "scaled"

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
        self.latent_layer = nn.Linear(hidden[-1], n_latent)
        self.decoder = RandomEffectsDecoder(n_latent, list(reversed(hidden)), n_genes, n_batches, prior_scale, "mse")
        self.classifier = nn.Sequential(nn.Linear(n_latent, classifier_hidden), nn.ReLU(), nn.Linear(classifier_hidden, n_batches))

    def one_hot(self, codes: torch.Tensor) -> torch.Tensor:
        """One-hot design matrix; negative codes (unseen batches) give a zero row."""
        return one_hot(codes, self.n_batches)

    def encode(self, x: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.encoder:
            h = block(h, Z)
        return self.latent_layer(h)

    def decode(self, z: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, Z)

    def forward(self, x: torch.Tensor, Z_enc: torch.Tensor, Z_dec: torch.Tensor | None = None):
        z = self.encode(x, Z_enc)
        x_hat = self.decode(z, Z_enc if Z_dec is None else Z_dec)
        return x_hat, z, self.classifier(z)

    @property
    def expression_head(self) -> ExpressionHead:
        return self.decoder.head

    @property
    def out_gamma(self) -> RandomEffects:
        return self.decoder.head.gamma

    @property
    def out_beta(self) -> RandomEffects:
        return self.decoder.head.beta

    def random_effects(self):
        return [m for m in self.modules() if isinstance(m, RandomEffects)]

    def kl(self) -> torch.Tensor:
        return _kl_of_random_effects(self)

    def latent(self, mb) -> torch.Tensor:
        return self.encode(mb.x, mb.batch)

    def reconstruct(self, mb, target: torch.Tensor | None = None) -> torch.Tensor:
        z = self.encode(mb.x, mb.batch)
        return self.decode(z, mb.batch if target is None else target)
