"""Model and training configuration, and the named presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class AMEDLConfig:
    """Every setting of an aMEDL model. Presets fill these; keyword overrides win.

    Loss weights are relative: each network's loss is a weighted sum and only
    the ratios matter to Adam beyond the step size.

    Early stopping: the FE network and the AE stop after ``patience`` epochs
    without a better validation loss, the RE network after ``re_patience``
    (it converges sooner; ``benchmarks/convergence.py``); ``None`` trains the
    whole budget.
    """

    # data
    n_top_genes: int | None = 2000
    scaling: str = "zscore"
    # architecture
    fe_decoder: str = "mixed"
    likelihood: str = "mse"
    hidden: tuple[int, ...] = (512, 132)
    n_latent: int = 50
    latent_activation: str = "selu"
    adversary_hidden: tuple[int, ...] = (512, 132)
    adversary_input: str = "all"
    classifier_hidden: int = 32
    prior_scale: float = 0.25
    # optimisation
    lr: float = 1e-3
    adversary_lr: float | None = None
    batch_size: int = 256
    max_epochs: int | None = None
    target_steps: int = 3000
    min_epochs: int = 3
    epoch_cap: int = 400
    patience: int | None = 30
    re_patience: int | None = 15
    fe_burn_in_steps: int = 250
    restore_best: bool = True
    validation_fraction: float = 0.1
    # loss weights
    fe_recon_weight: float = 1.0
    fe_adv_weight: float = 1.0
    fe_latent_kl_weight: float = 0.0
    fe_re_kl_weight: float = 1.0
    adversarial_loss: str = "ce"
    re_recon_weight: float = 1.0
    re_cls_weight: float = 0.1
    re_kl_weight: float = 1e-5
    # runtime
    device: str = "auto"

    def epochs_for(self, n_train: int) -> int:
        """Epoch budget: ``max_epochs`` if set, else enough epochs for about
        ``target_steps`` minibatch steps, between ``min_epochs`` and ``epoch_cap``."""
        if self.max_epochs is not None:
            return int(self.max_epochs)
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return int(min(self.epoch_cap, max(self.min_epochs, math.ceil(self.target_steps / steps_per_epoch))))

    def fe_burn_in_epochs(self, n_train: int, epochs: int) -> int:
        """Epochs before the FE network may be checkpointed: about ``fe_burn_in_steps``
        minibatch steps (the adversary must have learned before the monitor means
        anything), at most half the budget."""
        steps_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return int(min(epochs // 2, math.ceil(self.fe_burn_in_steps / steps_per_epoch)))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["adversary_hidden"] = list(self.adversary_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AMEDLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown aMEDL setting(s): {sorted(unknown)}; known settings: {sorted(known)}")
        d = dict(d)
        for k in ("hidden", "adversary_hidden"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)


# The published configuration (Andrade, Nguyen & Montillo, GLBIO 2025; scMEDAL
# Healthy Heart settings): global min-max scaled log1p HVG data, Adam 1e-4,
# minibatch 512, early-stopping patience 30, FE reconstruction weight 1000
# against adversary weight 1, RE reconstruction 110, classifier 0.1, KL 1e-5.
PAPER = dict(
    fe_decoder="tied",
    scaling="minmax",
    lr=1e-4,
    batch_size=512,
    patience=30,
    re_patience=30,
    max_epochs=None,
    target_steps=100_000,
    epoch_cap=500,
    min_epochs=50,
    fe_recon_weight=1000.0,
    fe_adv_weight=1.0,
    adversarial_loss="ce",
    re_recon_weight=110.0,
    re_cls_weight=0.1,
    re_kl_weight=1e-5,
    latent_activation="selu",
)

# The default preset is the AMEDLConfig defaults, tuned by measurement on the
# shared datasets (docs/tuning.md): z-score scaling, Adam 1e-3, minibatch 256,
# FE adversary weight 1 after a 250-step burn-in, RE 1 : 0.1 : 1e-5; early
# stopping patience 30 epochs for FE/AE and 15 for RE (docs/performance.md).
DEFAULT: dict = dict()

PRESETS = {"default": DEFAULT, "paper": PAPER}


def make_config(preset: str = "default", **overrides) -> AMEDLConfig:
    """A configuration from a named preset plus keyword overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    return AMEDLConfig.from_dict(values)
