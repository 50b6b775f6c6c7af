"""Torch modules of aMEDL (modules only compute; training is in :mod:`amedl.train`,
the user-facing model in :mod:`amedl.model`).

``random_effects``: the per-batch Bayesian layers; ``layers``: encoders,
decoders and likelihoods; ``networks``: the networks the model trains, each
with the interface ``latent(mb)``, ``reconstruct(mb, target=None)``,
``batch_aware`` and ``output_space``.
"""
from .layers import LIKELIHOODS, DenseEncoder, Encoded, ExpressionHead, RandomEffectsDecoder, _gaussian_kl, negative_binomial_nll
from .networks import (
    Adversary,
    FixedEffectsNetwork,
    MixedEffectsAutoencoder,
    PlainAutoencoder,
    REAutoencoder,
    TiedAutoencoder,
    predicts_unseen,
)
from .random_effects import BatchMembership, REBlock, RandomEffects, batch_design, one_hot, posterior_draw

__all__ = [
    "LIKELIHOODS", "Adversary", "BatchMembership", "batch_design", "DenseEncoder", "Encoded", "ExpressionHead", "FixedEffectsNetwork",
    "MixedEffectsAutoencoder", "PlainAutoencoder", "REAutoencoder", "REBlock", "RandomEffects",
    "RandomEffectsDecoder", "TiedAutoencoder", "negative_binomial_nll", "one_hot", "posterior_draw", "predicts_unseen",
]
