"""Model and training configuration, and the named presets."""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
import typing
from dataclasses import dataclass, field

from .errors import AMEDLConfigError


@dataclass
class AMEDLConfig:
    """Every setting of an aMEDL model. Presets fill these; keyword overrides win.

    Loss weights are relative: each network's loss is a weighted sum and only
    the ratios matter to Adam beyond the step size.

    Early stopping: the FE network and the AE stop after ``patience`` epochs
    without a better validation loss, the RE network after ``re_patience``
    (it converges sooner; ``benchmarks/convergence.py``); ``None`` trains the
    whole budget.

    Every field is checked on construction (type and range, see ``RULES``);
    an invalid value raises :class:`amedl.errors.AMEDLConfigError` naming the
    valid range. ``threads`` (``None``: the libraries' defaults) is the number
    of CPU threads of torch, numba and BLAS for the whole run; results are
    bit-identical for a fixed seed *and* thread count.

    ``block_size`` and ``buffer_blocks`` set the training order for data read
    from disk (``AMEDL(adata_backed, ...)``): blocks of ``block_size``
    contiguous cells in a shuffled order, cells shuffled within each run of
    ``buffer_blocks`` blocks. ``block_size=None`` shuffles single cells in
    memory and reads blocks of 1,024 cells from disk (``buffer_blocks`` of them
    shuffled together).

    The FE adversaries (``docs/tuning.md``, sixth and eleventh rounds): by
    default (``adversary_input="latent"``) one adversary reads the latent;
    ``"all"`` gives it every encoder layer instead and ``"both"`` trains the
    two side by side (the default before the eleventh round: with batch
    effects as strong as the R vignette's simulation, the all-layer
    adversary always reads the batch from the first layers and the latent
    is left unmixed). ``adversary_clusters=k`` balances the batches within
    ``k`` clusters of the FE latent (an online k-means) in every adversary
    cross-entropy, each cell weighted ``p(batch) / p(batch | cluster)``
    (:mod:`amedl.balance`): a cell type more common in one batch is then no
    batch signal, and only batch differences inside a cluster are removed
    (without it the latent adversary also removes CellBench's cell lines).
    ``fe_cluster_weight`` pulls each cell of the FE latent to its nearest
    centroid of that k-means (within-cluster over total spread; needs
    ``adversary_clusters``), as Harmony pulls cells to its cluster centroids.
    ``fe_depth_weight`` (0: off) penalises the squared correlation of each
    latent coordinate with the cell's log library size, both centred within
    each cluster × batch of the minibatch, so that sequencing depth within a
    cell type is not an axis of the latent while depth differences between
    cell types stay (needs ``adversary_clusters``; it reads the library sizes
    of the count likelihood, so with ``fe_decoder="tied"`` or
    ``likelihood="mse"`` it does nothing, as ``fe_scaled_weight``; weight 1
    is the default since the nineteenth round, ``docs/tuning.md``).
    ``fe_intercept_clusters=k`` (10 by default since the twenty-first round;
    ``None``: off, as in the paper preset) models what batch is left in
    the trained FE latent as random intercepts (:mod:`amedl.intercepts`):
    within each of ``k`` soft clusters of the latent, each batch's shrunk mean
    offset (the prior weighs ``fe_intercept_shrinkage`` cells) is estimated
    on the model's cells and removed from every cell of that batch, for
    ``fe_intercept_rounds`` rounds of clustering and correction.
    ``fe_intercept_offsets`` says what a cell's offset is measured from: its
    nearest cells of the other batches (``"neighbours"``: a cell type more
    common in one batch is no offset) or its cluster's pooled mean
    (``"cluster"``: within a cluster that holds several cell types, their
    batch shares read as batch offsets). ``AMEDL.latent(kind="fe")`` applies
    them (``intercepts=False``: the encoder's latent); the decoder reads the
    encoder's latent (``docs/tuning.md``, twentieth and twenty-first rounds).

    The FE latent keeps the cell types a PCA sees (``docs/tuning.md``, eighth
    and ninth rounds): ``fe_neighbour_weight`` asks each cell's nearest
    cells of its own batch in the FE latent to be those of a
    ``fe_neighbour_pcs``-component PCA of the model input (of at most
    20,000 training cells; soft neighbourhoods within a minibatch, KL
    between the two; each cell's bandwidth the distance to its
    ``fe_neighbour_k``-th nearest cell of its batch in the minibatch), and
    ``fe_scaled_weight`` adds the mean squared error of the decoded
    expression on the scaled (z-scored log1p) model input to the count
    likelihood, so that every gene weighs alike as in a PCA (a
    mixed-effects decoder with ``likelihood="nb"`` only: an MSE
    reconstruction already is that error). ``fe_scaled_path`` says which
    weights that error trains: all but the random effects (``"fixed"``, the
    default: the random effects learn from the counts alone, so the
    batches' differences keep their credible intervals), all
    (``"network"``: it halved the genes with a credible donor effect on
    Kang) or the encoder's only (``"encoder"``). ``fe_decorrelation_weight``
    penalises correlated coordinates of the FE latent (mean squared
    off-diagonal correlation over a minibatch);
    ``fe_monitor="accuracy"`` measures the adversary's lead over chance for
    early stopping by its accuracy instead of its cross-entropy, and
    ``"calibrated"`` by its cross-entropy at the best softmax temperature.

    ``fe_monitor_adversaries`` says whose held-out lead the monitor counts:
    every adversary's (``"every"``) or only that of the adversary reading
    the latent (``"latent"``; needs ``adversary_input`` ``"both"`` or
    ``"latent"``). With ``adversary_input="both"``, ``fe_layer_adv_scale``
    scales the fooling loss of the adversary that reads every encoder layer
    (the latent adversary's stays 1).
    ``docs/tuning.md``, tenth round.

    ``fe_adv_weight_start`` (``None``: no schedule) starts the adversary's
    weight at that value and moves it linearly to ``fe_adv_weight`` over the
    first ``fe_adv_warmup_steps`` minibatch steps, down (a warm-up) or up (a
    ramp); the validation monitor weighs the adversary's lead by
    ``fe_adv_weight``. Neither direction improved the shared datasets
    (``docs/tuning.md``, fifteenth round). ``fe_adv_lead_gain`` = g (0: off)
    multiplies each step's weight by ``1 + g·lead``, ``lead`` a moving average
    of the adversary's training lead over chance, ``max(0, (H − CE)/H)``, so
    that the encoder is pushed harder while the adversary wins; gain 5 with
    weight 0.15 is the default since the sixteenth round.

    ``fe_encoder_weight_decay`` = λ (0: off) adds Adam's weight decay to the
    FE encoder's weight matrices: ``λ·W`` joins their gradients, an L2
    penalty ``λ/2·‖W‖²`` (biases, normalisation and every other parameter
    have none; in the paper's tied network, the weights the encoder shares
    with the decoder). A regulariser against an encoder that mixes the
    batches of its training cells better than those of new cells
    (``docs/tuning.md``, twenty-second round).
    """

    # data
    n_top_genes: int | None = 2000
    scaling: str = "zscore"
    # architecture
    fe_decoder: str = "mixed"
    likelihood: str = "nb"
    hidden: tuple[int, ...] = (512, 132)
    n_latent: int = 10
    latent_activation: str = "selu"
    adversary_hidden: tuple[int, ...] = (512, 132)
    adversary_input: str = "latent"
    adversary_clusters: int | None = 20
    classifier_hidden: int = 32
    membership_hidden: int | None = 128
    prior_scale: float = 0.25
    re_init_scale: float = 0.03
    # optimisation
    lr: float = 1e-3
    adversary_lr: float | None = None
    re_scale_lr: float | None = 1e-2
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
    fe_adv_weight: float = 0.15
    fe_adv_weight_start: float | None = None
    fe_adv_warmup_steps: int = 500
    fe_adv_lead_gain: float = 5.0
    fe_layer_adv_scale: float = 1.0
    fe_latent_kl_weight: float = 0.0
    fe_re_kl_weight: float = 1.0
    fe_cycle_weight: float = 0.0
    fe_decorrelation_weight: float = 0.0
    fe_neighbour_weight: float = 1.0
    fe_neighbour_pcs: int = 10
    fe_neighbour_k: int = 5
    fe_scaled_weight: float = 0.1
    fe_scaled_path: str = "fixed"
    fe_cluster_weight: float = 0.3
    fe_depth_weight: float = 1.0
    fe_ema_decay: float | None = 0.99
    fe_encoder_weight_decay: float = 0.0
    fe_intercept_clusters: int | None = 10
    fe_intercept_shrinkage: float = 1.0
    fe_intercept_rounds: int = 3
    fe_intercept_offsets: str = "neighbours"
    adversarial_loss: str = "ce"
    fe_monitor: str = "ce"
    fe_monitor_adversaries: str = "every"
    re_recon_weight: float = 1.0
    re_cls_weight: float = 0.03
    re_kl_weight: float = 1e-5
    # minibatch order: blocks of contiguous rows, shuffled within buffers of blocks (out of core)
    block_size: int | None = None
    buffer_blocks: int = 16
    # runtime
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self):
        _validate(self)
        if self.adversary_clusters is None:
            on = [name for name in ("fe_cluster_weight", "fe_depth_weight") if getattr(self, name) > 0]
            if on:
                raise AMEDLConfigError(
                    f"{' and '.join(f'{n}={getattr(self, n):g}' for n in on)} {'read' if len(on) > 1 else 'reads'} "
                    "the adversaries' clusters, but adversary_clusters is None: "
                    f"set adversary_clusters (e.g. 20) or {' and '.join(f'{n}=0' for n in on)}")

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
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            import difflib

            close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            hints = "; ".join(f"{u!r} (did you mean {c[0]!r}?)" if c else repr(u) for u, c in list(close.items())[:5])
            raise AMEDLConfigError(
                f"unknown aMEDL setting(s): {hints}{' ...' if len(unknown) > 5 else ''}; "
                "the settings are the fields of amedl.AMEDLConfig"
            )
        return cls(**d)  # values are coerced and checked by the rules (RULES)


# ---------------------------------------------------------------------------
# validation: one rule per field (type, range, choices); a field without a rule
# is still type-checked from its annotation (tests/python/test_config.py asks
# for a rule for every field)


@dataclass(frozen=True)
class Rule:
    """What a setting may be: ``kind`` ``"int"``, ``"float"``, ``"bool"``, ``"str"`` or
    ``"ints"`` (a tuple of whole numbers); bounds ``low``/``high`` (``open_low``/``open_high``
    exclude them), ``choices``, ``none`` (``None`` allowed, and what it means), ``pattern``
    (a regular expression a string must match)."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    none: str | None = None
    pattern: str | None = None
    min_len: int = 0
    text: str | None = None

    def describe(self) -> str:
        """The valid values in words, e.g. ``a whole number >= 1 (or None: no limit)``."""
        if self.text:
            text = self.text
        elif self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {"int": "a whole number", "float": "a finite number", "bool": "True or False",
                    "str": "a non-empty string", "ints": "a sequence of whole numbers"}[self.kind]
            if self.kind == "ints" and self.min_len:
                text = f"{self.min_len} or more whole numbers"
            lo = None if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
            hi = None if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
            if lo and hi:
                text += f" in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
            elif lo or hi:
                text += " " + (lo or hi)
            if self.kind == "ints" and (lo or hi):
                text = text.replace("whole numbers ", "whole numbers, each ")
        return text + (f" (or None: {self.none})" if self.none else "")

    def check(self, name: str, value):
        """``value`` coerced to the setting's type (a whole float to int, a list to a tuple,
        NumPy scalars to Python); an :class:`~amedl.errors.AMEDLConfigError` if it is not valid."""
        if value is None:
            if self.none:
                return None
            self._fail(name, value)
        if self.kind == "ints":
            seq = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
            if isinstance(seq, (str, bytes, dict)) or not hasattr(seq, "__iter__"):
                self._fail(name, value)
            out = tuple(self._number(name, v, value, integral=True) for v in seq)
            if len(out) < self.min_len:
                self._fail(name, value)
            return out
        if self.kind == "bool":
            if isinstance(value, bool) or type(value).__name__ == "bool_":
                return bool(value)
            self._fail(name, value)
        if self.kind == "str":
            if not isinstance(value, str) or not value or (self.choices and value not in self.choices) \
                    or (self.pattern and not re.fullmatch(self.pattern, value)):
                self._fail(name, value)
            return value
        return self._number(name, value, value, integral=self.kind == "int")

    def _number(self, name: str, v, whole, integral: bool):
        if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, numbers.Real):
            self._fail(name, whole)
        f = float(v)
        if not math.isfinite(f) or (integral and f != int(f)):
            self._fail(name, whole)
        if self.low is not None and (f < self.low or (self.open_low and f == self.low)):
            self._fail(name, whole)
        if self.high is not None and (f > self.high or (self.open_high and f == self.high)):
            self._fail(name, whole)
        return int(f) if integral else f

    def _fail(self, name: str, value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise AMEDLConfigError(f"setting {name} must be {self.describe()}, got {shown}")


def _int(low=None, **kw) -> Rule:
    return Rule("int", low=low, **kw)


def _float(low=None, **kw) -> Rule:
    return Rule("float", low=low, **kw)


def _choice(*choices) -> Rule:
    return Rule("str", choices=tuple(choices))


_WEIGHT = _float(0.0)

#: The rule of every field of :class:`AMEDLConfig`. A new field needs one here.
RULES: dict[str, Rule] = {
    "n_top_genes": _int(2, none="every expressed gene"),
    "scaling": _choice("zscore", "minmax"),
    "fe_decoder": _choice("mixed", "tied"),
    "likelihood": _choice("mse", "nb"),
    "hidden": Rule("ints", low=1, min_len=1),
    "n_latent": _int(1),
    "latent_activation": _choice("selu", "linear"),
    "adversary_hidden": Rule("ints", low=1),
    "adversary_input": _choice("all", "latent", "both"),
    "adversary_clusters": _int(1, none="every cell counts alike"),
    "classifier_hidden": _int(1),
    "membership_hidden": _int(1, none="no batch-membership predictor: unseen batches get zero effects"),
    "prior_scale": _float(0.0, open_low=True),
    "re_init_scale": _float(0.0, open_low=True),
    "lr": _float(0.0, open_low=True),
    "adversary_lr": _float(0.0, open_low=True, none="the same as lr"),
    "re_scale_lr": _float(0.0, open_low=True, none="the same as lr"),
    "batch_size": _int(2),
    "max_epochs": _int(1, none="from the number of cells"),
    "target_steps": _int(1),
    "min_epochs": _int(1),
    "epoch_cap": _int(1),
    "patience": _int(1, none="no early stopping"),
    "re_patience": _int(1, none="no early stopping"),
    "fe_burn_in_steps": _int(0),
    "restore_best": Rule("bool"),
    "validation_fraction": _float(0.0, high=1.0, open_high=True),
    "fe_recon_weight": _WEIGHT,
    "fe_adv_weight": _WEIGHT,
    "fe_adv_weight_start": _float(0.0, none="fe_adv_weight from the first step"),
    "fe_adv_warmup_steps": _int(0),
    "fe_adv_lead_gain": _float(0.0),
    "fe_layer_adv_scale": _WEIGHT,
    "fe_latent_kl_weight": _WEIGHT,
    "fe_re_kl_weight": _WEIGHT,
    "fe_cycle_weight": _WEIGHT,
    "fe_decorrelation_weight": _WEIGHT,
    "fe_neighbour_weight": _WEIGHT,
    "fe_neighbour_pcs": _int(1),
    "fe_neighbour_k": _int(1),
    "fe_scaled_weight": _WEIGHT,
    "fe_scaled_path": _choice("network", "encoder", "fixed"),
    "fe_cluster_weight": _WEIGHT,
    "fe_depth_weight": _WEIGHT,
    "fe_ema_decay": _float(0.0, high=1.0, open_low=True, open_high=True, none="no weight averaging"),
    "fe_encoder_weight_decay": _float(0.0),
    "fe_intercept_clusters": _int(1, none="no latent intercepts: the encoder's latent"),
    "fe_intercept_shrinkage": _float(0.0),
    "fe_intercept_rounds": _int(1),
    "fe_intercept_offsets": _choice("neighbours", "cluster"),
    "adversarial_loss": _choice("ce", "uniform"),
    "fe_monitor": _choice("ce", "accuracy", "calibrated"),
    "fe_monitor_adversaries": _choice("every", "latent"),
    "re_recon_weight": _WEIGHT,
    "re_cls_weight": _WEIGHT,
    "re_kl_weight": _WEIGHT,
    "block_size": _int(1, none="random rows in memory, 1024 rows from disk"),
    "buffer_blocks": _int(1),
    # which devices exist is checked when a model is created (amedl._utils.resolve_device)
    "device": Rule("str", pattern=r"auto|cpu|mps|[a-z]+(:\d+)?", text="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    "threads": _int(1, none="the libraries' defaults"),
}


def _rule_from_annotation(hint) -> Rule:
    """The type check of a field that has no rule yet, from its annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    none = "allowed" if type(None) in typing.get_args(hint) else None
    base = args[0] if none and len(args) == 1 else hint
    if typing.get_origin(base) is tuple:
        return Rule("ints", none=none)
    kind = {int: "int", float: "float", bool: "bool", str: "str"}.get(base)
    if kind is None:
        raise TypeError(f"AMEDLConfig: no rule for a field annotated {hint!r}; add one to amedl.config.RULES")
    return Rule(kind, none=none)


def _validate(config: "AMEDLConfig") -> None:
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        rule = RULES.get(f.name) or _rule_from_annotation(hints[f.name])
        setattr(config, f.name, rule.check(f.name, getattr(config, f.name)))


# The published configuration (Andrade, Nguyen & Montillo, GLBIO 2025; scMEDAL
# Healthy Heart settings): global min-max scaled log1p HVG data, Adam 1e-4,
# minibatch 512, early-stopping patience 30, FE reconstruction weight 1000
# against adversary weight 1, RE reconstruction 110, classifier 0.1, KL 1e-5.
PAPER = dict(
    fe_decoder="tied",
    n_latent=50,
    adversary_input="all",
    adversary_clusters=None,
    fe_cluster_weight=0.0,
    fe_depth_weight=0.0,
    re_init_scale=1e-3,
    re_scale_lr=None,
    likelihood="mse",
    fe_ema_decay=None,
    fe_intercept_clusters=None,
    fe_cycle_weight=0.0,
    fe_neighbour_weight=0.0,
    fe_scaled_weight=0.0,
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
    fe_adv_weight_start=None,
    fe_adv_lead_gain=0.0,
    adversarial_loss="ce",
    re_recon_weight=110.0,
    re_cls_weight=0.1,
    re_kl_weight=1e-5,
    latent_activation="selu",
)

# The default preset is the AMEDLConfig defaults, tuned by measurement on the
# shared datasets (docs/tuning.md): the mixed-effects FE network with a negative
# binomial likelihood on counts, a 10-dimensional latent that keeps each cell's
# within-batch neighbours of a 10-component PCA (weight 1), one adversary on the
# latent whose batches are balanced within 20 clusters of the latent (each cell
# pulled to its cluster's centroid, weight 0.3; sequencing depth within each
# cluster and batch kept out of the latent, weight 1), adversary weight 0.15 raised
# while the adversary leads (gain 5) after a 250-step burn-in and an exponential
# moving average (0.99) of its weights; random-effects posteriors
# that start at scale 0.03 and learn their scales at 1e-2 (calibrated on
# pseudo-batches, docs/tuning.md); z-score scaling for the RE
# network, Adam 1e-3, minibatch 256, RE 1 : 0.03 : 1e-5 (a classifier weight
# that leaves pseudo-batches unseparated, docs/tuning.md); early
# stopping patience 30 epochs for FE/AE and 15 for RE (docs/performance.md).
DEFAULT: dict = dict()

#: Optimiser steps of :meth:`amedl.AMEDL.adapt` (query mapping) unless given: the method's,
#: ``amedl embed --adapt``'s and R's default.
ADAPT_STEPS = 300

PRESETS = {"default": DEFAULT, "paper": PAPER}


def make_config(preset: str = "default", **overrides) -> AMEDLConfig:
    """A configuration from a named preset plus keyword overrides."""
    if preset not in PRESETS:
        raise AMEDLConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    values = {**PRESETS[preset], **overrides}
    return AMEDLConfig.from_dict(values)
