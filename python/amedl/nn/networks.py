"""The networks of aMEDL. Modules only compute; training is in :mod:`amedl.train`
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

A batch-aware network also holds a :class:`BatchMembership` predictor
(``membership``; ``None`` when disabled or in models saved before it
existed): cells of batches not seen in training (code -1) get the predicted
mixture of the learned random effects while ``predict_unseen`` is true, zero
effects otherwise; ``add_batches(n, init_scale)`` appends random effects for
new batches (see :meth:`amedl.AMEDL.adapt`).

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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DenseEncoder, Encoded, ExpressionHead, RandomEffectsDecoder, _activation
from .random_effects import (
    BatchMembership, REBlock, RandomEffects, _kl_of_random_effects, batch_design, grow_output, grow_random_effects, one_hot,
)


def predicts_unseen(net: nn.Module) -> bool:
    """Whether ``net`` gives cells of unseen batches predicted random effects."""
    return getattr(net, "membership", None) is not None and bool(getattr(net, "predict_unseen", False))


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
        input_center: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.n_batches = n_batches
        self.encoder = DenseEncoder(n_genes, hidden, n_latent, latent_activation, variational)
        self.decoder = RandomEffectsDecoder(
            n_latent, list(reversed(hidden)), n_genes, n_batches, prior_scale, likelihood, target_sum, init_scale
        )
        self.layer_sizes = self.encoder.layer_sizes
        # the input scaling: the scaled-expression loss compares decoded expression in the input's units
        # (and cycle consistency, when on, feeds it back to the encoder)
        self.register_buffer("input_center", torch.zeros(n_genes) if input_center is None else torch.as_tensor(input_center).float())
        self.register_buffer("input_scale", torch.ones(n_genes) if input_scale is None else torch.as_tensor(input_scale).float())

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

    def as_input(self, out: torch.Tensor, mb) -> torch.Tensor:
        """Decoder output turned into encoder input (scaled log1p expression)."""
        if self.output_space == "scaled":
            return out
        return (self.expression(out, mb) - self.input_center) / self.input_scale

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
    encoder layer's output, ``"latent"`` only the latent; ``"both"`` trains a
    second adversary on the latent beside the all-layer one."""

    def __init__(
        self, autoencoder: nn.Module, n_batches: int, adversary_hidden: Sequence[int], adversary_input: str = "all",
    ):
        super().__init__()
        if adversary_input not in ("all", "latent", "both"):
            raise ValueError(f"adversary_input must be 'all', 'latent' or 'both', got {adversary_input!r}")
        self.autoencoder = autoencoder
        self.n_batches = n_batches
        self.adversary_input = adversary_input
        n_in = autoencoder.layer_sizes[-1] if adversary_input == "latent" else sum(autoencoder.layer_sizes)
        self.adversary = Adversary(n_in, n_batches, adversary_hidden)
        self.latent_adversary = (
            Adversary(autoencoder.layer_sizes[-1], n_batches, adversary_hidden) if adversary_input == "both" else None
        )
        self.membership: BatchMembership | None = None  # set after construction (amedl.train), with a batch-aware decoder
        self.predict_unseen = True

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

    @property
    def adversaries(self) -> list:
        """The adversaries, in the order of :meth:`adversary_views`."""
        return [a for a in (self.adversary, self.latent_adversary) if a is not None]

    @property
    def adversary_reads_layers(self) -> tuple[bool, ...]:
        """For each adversary, whether it reads every encoder layer (else the latent alone)."""
        return {"all": (True,), "latent": (False,), "both": (True, False)}[self.adversary_input]

    def adversary_views(self, enc: Encoded) -> list:
        """For each adversary, the encoder outputs it reads."""
        return {"all": [enc.layers], "latent": [[enc.mean]], "both": [enc.layers, [enc.mean]]}[self.adversary_input]

    def latent(self, mb) -> torch.Tensor:
        return self.autoencoder.encode(mb.x).mean

    def batch_input(self, mb) -> torch.Tensor:
        """The cells' own batches as the random effects read them (see :func:`batch_design`)."""
        return batch_design(mb.batch, mb.x, self.membership if self.predict_unseen else None, self.n_batches)

    def reconstruct(self, mb, target: torch.Tensor | None = None) -> torch.Tensor:
        ae = self.autoencoder
        out = ae.decode(ae.encode(mb.x).mean, self.batch_input(mb) if target is None else target)
        return ae.expression(out, mb)

    def adaptation_loss(self, mb) -> torch.Tensor:
        """Reconstruction loss of cells decoded as their own batches from their (fixed) latent."""
        ae = self.autoencoder
        return ae.recon_loss(ae.decode(ae.encode(mb.x).mean.detach(), mb.batch), mb)

    def kl(self) -> torch.Tensor:
        """KL of the decoder's random effects to their prior."""
        return self.autoencoder.kl()

    def add_batches(self, n_new: int, init_scale: float) -> list:
        """Random effects for ``n_new`` new batches (returns the grown parameters, see
        :func:`grow_random_effects`); the adversary and the predictor get outputs for
        them that are never chosen."""
        if not self.batch_aware:
            return []
        grown = grow_random_effects(self.autoencoder, n_new, init_scale)
        for adv in self.adversaries:
            grow_output(adv.net[-1], n_new)
        if self.membership is not None:
            grow_output(self.membership.net[-1], n_new, bias=-30.0)
        self.n_batches += n_new
        self.autoencoder.n_batches += n_new
        return grown


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
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.n_batches = n_batches
        self.membership: BatchMembership | None = None  # set after construction (amedl.train)
        self.predict_unseen = True
        enc_dims = [n_genes, *hidden]
        self.encoder = nn.ModuleList(REBlock(a, b, n_batches, prior_scale, init_scale) for a, b in zip(enc_dims[:-1], enc_dims[1:]))
        self.latent_layer = nn.Linear(hidden[-1], n_latent)
        self.decoder = RandomEffectsDecoder(
            n_latent, list(reversed(hidden)), n_genes, n_batches, prior_scale, "mse", init_scale=init_scale
        )
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

    def batch_input(self, mb) -> torch.Tensor:
        """The cells' own batches as the random effects read them (see :func:`batch_design`)."""
        return batch_design(mb.batch, mb.x, self.membership if self.predict_unseen else None, self.n_batches)

    def latent(self, mb) -> torch.Tensor:
        return self.encode(mb.x, self.batch_input(mb))

    def reconstruct(self, mb, target: torch.Tensor | None = None) -> torch.Tensor:
        Z = self.batch_input(mb)
        return self.decode(self.encode(mb.x, Z), Z if target is None else target)

    def adaptation_loss(self, mb) -> torch.Tensor:
        """Reconstruction loss of cells encoded and decoded as their own batches."""
        return F.mse_loss(self.decode(self.encode(mb.x, mb.batch), mb.batch), mb.x)

    def add_batches(self, n_new: int, init_scale: float) -> list:
        """Random effects for ``n_new`` new batches (see :meth:`FixedEffectsNetwork.add_batches`)."""
        grown = grow_random_effects(self, n_new, init_scale)
        grow_output(self.classifier[-1], n_new)
        if self.membership is not None:
            grow_output(self.membership.net[-1], n_new, bias=-30.0)
        self.n_batches += n_new
        return grown
