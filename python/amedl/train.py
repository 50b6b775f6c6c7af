"""Training: one plan per network, the registry of networks, and the epoch loop.

A *plan* owns a network's optimisers and losses: ``train_epoch(loader)`` runs
one pass over the training minibatches, ``evaluate(loader)`` returns the
validation losses with a ``monitor`` entry. :func:`fit_loop` runs epochs, keeps
the loss history, stops early on the monitor and restores the best weights.

:data:`NETWORKS` maps each kind (``"fe"``, ``"re"``, ``"ae"``) to how it is
built from an :class:`~amedl.config.AMEDLConfig`, trained and checkpointed, so
that the model never branches on the kind.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import distributed
from ._utils import epoch_bar, progress_bar
from .balance import ClusterBalance, weighted_cross_entropy
from .config import AMEDLConfig
from .nn import (
    BatchMembership,
    FixedEffectsNetwork,
    MixedEffectsAutoencoder,
    PlainAutoencoder,
    RandomEffects,
    REAutoencoder,
    TiedAutoencoder,
    _gaussian_kl,
)


def batch_proportions(codes: np.ndarray, n_batches: int) -> np.ndarray:
    """Each batch's share of the cells."""
    return np.bincount(codes, minlength=n_batches) / max(len(codes), 1)


@dataclass
class LoopSettings:
    max_epochs: int
    patience: int | None
    min_epochs: int = 1
    burn_in: int = 0
    restore_best: bool = True
    callback: Callable[[int, dict], None] | None = None
    progress: bool = True
    desc: str = "training"


def fit_loop(
    modules: nn.Module,
    train_epoch: Callable[[], dict],
    evaluate: Callable[[], dict],
    settings: LoopSettings,
    snapshot: Callable[[], dict] | None = None,
) -> pd.DataFrame:
    """Run epochs until ``max_epochs`` or until the validation ``monitor`` has not
    improved for ``patience`` epochs; restore the weights of the best epoch.

    ``snapshot()`` gives the weights of record after an epoch (default
    ``modules.state_dict()``; a plan that averages weights returns its
    average); they are what is checkpointed and finally loaded into ``modules``.

    The first ``burn_in`` epochs are never taken as the best (an adversary that
    has barely trained makes any latent look batch-blind).

    Returns the per-epoch history; ``history.attrs`` holds ``best_epoch`` and
    ``stopped_early``.
    """
    snapshot = snapshot or modules.state_dict
    best, best_state, best_epoch, wait = math.inf, None, 0, 0
    rows = []
    stopped = False
    bar = epoch_bar(settings.max_epochs, desc=settings.desc, disable=not settings.progress)
    for epoch in bar:
        tr = train_epoch()
        ev = evaluate()
        distributed.check_launcher()
        rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in tr.items()}, **{f"val_{k}": v for k, v in ev.items()}})
        if epoch <= settings.burn_in and epoch < settings.max_epochs:
            pass
        elif ev["monitor"] < best:
            best, best_epoch, wait = ev["monitor"], epoch, 0
            best_state = copy.deepcopy(snapshot())
        else:
            wait += 1
        if settings.callback is not None:
            settings.callback(epoch, rows[-1])
        bar.set_postfix(val=f"{ev['monitor']:.4g}", best=best_epoch, refresh=False)
        if settings.patience is not None and epoch >= settings.min_epochs and wait >= settings.patience:
            stopped = True
            break
    bar.close()
    if best_state is not None and settings.restore_best:
        modules.load_state_dict(best_state)
    elif snapshot is not modules.state_dict:
        modules.load_state_dict(snapshot())
    history = pd.DataFrame(rows)
    history.attrs.update(best_epoch=best_epoch, stopped_early=stopped)
    return history


def _param_groups(params: list, module: nn.Module, config: AMEDLConfig) -> list[dict]:
    """Adam parameter groups: the posterior scales of ``module``'s random effects
    learn at ``re_scale_lr`` (their ELBO optimum is far from where they start, and
    they move one step size per step), everything else at ``lr``."""
    from .nn import RandomEffects

    scales = {id(m.raw_scale) for m in module.modules() if isinstance(m, RandomEffects)}
    if not scales or config.re_scale_lr is None:
        return [{"params": params}]
    return [
        {"params": [p for p in params if id(p) not in scales]},
        {"params": [p for p in params if id(p) in scales], "lr": config.re_scale_lr},
    ]


def _decay_encoder(groups: list[dict], encoder: nn.Module, decay: float) -> list[dict]:
    """``groups`` with the weight matrices of ``encoder`` split off into groups of
    their own with Adam's ``weight_decay`` = ``decay`` (``decay·W`` added to their
    gradients: an L2 penalty ``decay/2·‖W‖²``); every other parameter has none."""
    decayed = {id(p) for p in encoder.parameters() if p.ndim >= 2}
    out = []
    for group in groups:
        options = {k: v for k, v in group.items() if k != "params"}
        for flag in (True, False):
            params = [p for p in group["params"] if (id(p) in decayed) == flag]
            if params:
                out.append({**options, "params": params, "weight_decay": decay if flag else 0.0})
    return out


class _EpochMeans:
    """Means of per-step training losses over an epoch, summed as tensors so
    that a step does not wait for the device to report its numbers."""

    def __init__(self):
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.steps = 0

    def add(self, **values: torch.Tensor) -> None:
        stacked = torch.stack([torch.as_tensor(v).detach().float() for v in values.values()])
        self.sums = stacked if self.sums is None else self.sums + stacked
        self.names = list(values)
        self.steps += 1

    def means(self) -> dict:
        if not self.steps:
            return {}
        return distributed.reduce_means(dict(zip(self.names, (self.sums.double() / self.steps).tolist())))


class _ValidationSums:
    """Cell-weighted means of per-minibatch validation values."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, n: int, **values: torch.Tensor) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
        self.n += n

    def means(self) -> dict:
        sums, n = distributed.reduce_sums(self.sums, self.n)  # all ranks' validation cells
        return {k: v / max(n, 1) for k, v in sums.items()}


@dataclass(frozen=True)
class PlanContext:
    """What a plan needs to know about the training data."""

    n_train: int
    n_genes: int
    n_batches: int
    chance_ce: float
    chance_acc: float | None = None
    batch_prior: tuple[float, ...] | None = None  # the training cells' batch proportions
    # (center, components) of a PCA of the training cells' model input: the reference of fe_neighbour_weight
    reference: tuple | None = None

    @classmethod
    def from_codes(cls, codes: np.ndarray, n_genes: int, n_batches: int) -> "PlanContext":
        """The context of training on the cells with batch ``codes``."""
        p = batch_proportions(codes, n_batches)
        nz = p[p > 0]
        return cls(n_train=len(codes), n_genes=n_genes, n_batches=n_batches, chance_ce=float(-(nz * np.log(nz)).sum()),
                   chance_acc=float(p.max()), batch_prior=tuple(p.tolist()))


# ---------------------------------------------------------------------------
# plans


class AutoencoderPlan:
    """Plain autoencoder: minimise the reconstruction MSE."""

    def __init__(self, net: PlainAutoencoder, config: AMEDLConfig, ctx: PlanContext):
        self.ae = net.autoencoder
        self.recon_weight = config.fe_recon_weight
        self.opt = torch.optim.Adam(net.parameters(), lr=config.lr)

    def train_epoch(self, loader) -> dict:
        self.ae.train()
        means = _EpochMeans()
        for mb in loader:
            recon = self.ae.recon_loss(self.ae.decode(self.ae.encode(mb.x).z), mb)
            self.opt.zero_grad(set_to_none=True)
            (self.recon_weight * recon).backward()
            self.opt.step()
            means.add(recon=recon)
        return means.means()

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        self.ae.eval()
        sums = _ValidationSums()
        for mb in loader:
            sums.add(len(mb.x), recon=self.ae.recon_loss(self.ae.decode(self.ae.encode(mb.x).z), mb))
        out = sums.means()
        out["monitor"] = out["recon"]
        return out


def _neighbour_loss(z: torch.Tensor, ref: torch.Tensor, b: torch.Tensor, k: int = 5) -> torch.Tensor:
    """KL between each cell's soft neighbourhood among the cells of its own batch in
    a minibatch, in the reference and in the latent: ``p_j|i ∝ exp(-d²_ij / σ²_i)``
    with ``σ_i`` the distance to the ``k``-th nearest same-batch cell (in each space
    its own), so only who is near whom counts, not scale or global arrangement."""
    same = b[:, None] == b[None, :]
    same.fill_diagonal_(False)
    rows = same.sum(1) > k
    if not bool(rows.any()):
        return z.new_zeros(())

    def logits(a):
        sq = (a.square().sum(1)[:, None] + a.square().sum(1)[None, :] - 2 * a @ a.T).clamp_min(0)
        mask = same[rows]
        sq = sq[rows]
        bandwidth = sq.masked_fill(~mask, float("inf")).kthvalue(k, dim=1, keepdim=True).values.clamp_min(1e-8)
        return (-sq / bandwidth).masked_fill(~mask, -1e4)

    log_p = torch.log_softmax(logits(ref), dim=1)
    log_q = torch.log_softmax(logits(z), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def _compactness(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Squared distance of each cell to its nearest centroid, over its squared distance
    to the minibatch mean (within-cluster over total spread: scale does not count)."""
    within = torch.cdist(z, centroids).min(1).values.square().mean()
    total = (z - z.mean(0)).square().sum(1).mean()
    return within / (total + 1e-8)


def _depth_correlation(z: torch.Tensor, depth: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean over latent coordinates of the squared correlation with ``depth`` (log
    library size), both centred within each ``group`` (of ``n_groups``; the
    training loop's are nearest centroid × batch): depth within a group counts,
    depth differences between groups do not."""
    onehot = F.one_hot(group, n_groups).to(z.dtype)
    size = onehot.sum(0).clamp_min(1.0)
    zc = z - onehot @ ((onehot.T @ z) / size[:, None])
    dc = depth - onehot @ ((onehot.T @ depth) / size)
    cov = (zc * dc[:, None]).mean(0)
    return (cov.square() / (zc.square().mean(0) * dc.square().mean() + 1e-8)).mean()


def _is_random_effect(module: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` of ``module`` belongs to a :class:`~amedl.nn.RandomEffects`."""
    return isinstance(module.get_submodule(name.rpartition(".")[0]), RandomEffects)


def _decorrelation(z: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal correlation of the latent's coordinates over a
    minibatch: 0 when every coordinate carries its own direction."""
    zs = (z - z.mean(0)) / (z.std(0) + 1e-4)
    corr = zs.T @ zs / max(1, z.shape[0] - 1)
    d = corr.shape[0]
    return (corr - torch.diag(torch.diagonal(corr))).square().sum() / max(1, d * (d - 1))


def _linear_schedule(start: float | None, end: float, steps: int) -> Callable[[int], float]:
    """The adversary weight at each minibatch step (from 0): ``start`` at the
    first step, linearly to ``end`` over the first ``steps`` steps, then ``end``."""
    if start is None or steps <= 0:
        return lambda step: end
    return lambda step: end + (start - end) * max(0.0, 1.0 - step / steps)


class AdversarialPlan:
    """Alternating adversarial training of a :class:`~amedl.nn.FixedEffectsNetwork`.

    Per minibatch: (1) one Adam step of the adversary on the batch
    cross-entropy with the encoder's outputs detached; (2) one Adam step of the
    autoencoder on ``recon_weight·recon − adv_weight·CE(adversary)`` plus, for
    a variational latent, ``latent_kl_weight·KL(latent)/n_genes`` and, for a
    mixed-effects decoder, ``re_kl_weight·KL(random effects)/(n_train·n_genes)``
    (the KL terms scaled so that weight 1 is the evidence lower bound of the
    per-gene mean likelihood). With ``fe_adv_weight_start`` the weight of the
    fooling loss moves linearly from that value to ``adv_weight`` over the
    first ``fe_adv_warmup_steps`` steps (recorded per epoch as ``adv_weight``).
    With ``fe_adv_lead_gain`` = g each step's weight is further multiplied by
    ``1 + g·lead``, ``lead`` the moving average (decay 0.9 per step) of the
    adversaries' training lead ``max(0, (H − CE)/H)`` (recorded per epoch as
    ``adv_lead``): the encoder is pushed harder while the adversary is winning.

    ``adversarial_loss="uniform"`` replaces ``−CE`` by the cross-entropy of the
    adversary's prediction against the uniform distribution.

    The validation monitor is ``recon_weight·recon + adv_weight·max(0, H − CE)``:
    reconstruction plus how far the adversary beats the chance cross-entropy
    ``H`` on held-out cells, so the best epoch reconstructs well *and* hides
    the batch (with ``fe_monitor_adversaries="latent"``, only the adversary
    that reads the latent counts). ``fe_monitor="calibrated"`` takes for
    ``CE`` the lowest held-out cross-entropy of the adversary's logits
    divided by a temperature (:attr:`TEMPERATURES`), so that an
    over-confident adversary, whose plain cross-entropy is above ``H``
    although it predicts the batch, still counts as a leak.

    With ``adversary_clusters`` every adversary cross-entropy (training and
    validation) is weighted by :class:`~amedl.balance.ClusterBalance`, so that
    batch composition that differs between latent clusters is not a batch
    signal.

    With ``fe_ema_decay`` the weights of record are an exponential moving
    average of the trained weights (updated every step): the adversarial game
    oscillates from step to step, and the average is what is validated,
    checkpointed and kept.
    """

    #: the names of the adversaries' records, in the order of ``net.adversaries``
    ADVERSARY_NAMES = ("adv", "latent_adv")
    #: the softmax temperatures of ``fe_monitor="calibrated"`` (0.1 to 100, and 1)
    TEMPERATURES = tuple(float(t) for t in torch.logspace(-1, 2, 31))

    def __init__(self, net: FixedEffectsNetwork, config: AMEDLConfig, ctx: PlanContext):
        if config.adversarial_loss not in ("ce", "uniform"):
            raise ValueError("adversarial_loss must be 'ce' or 'uniform'")
        self.net, self.ae, self.advs = net, net.autoencoder, net.adversaries
        self.recon_weight, self.adv_weight = config.fe_recon_weight, config.fe_adv_weight
        self.adv_schedule = _linear_schedule(config.fe_adv_weight_start, config.fe_adv_weight, config.fe_adv_warmup_steps)
        self.step = 0
        self.lead_gain = config.fe_adv_lead_gain
        self.lead = torch.zeros((), dtype=torch.float64)  # moving average of the adversaries' training lead
        self.latent_kl = config.fe_latent_kl_weight / ctx.n_genes
        self.re_kl = config.fe_re_kl_weight / (ctx.n_train * ctx.n_genes)
        self.cycle_weight = config.fe_cycle_weight if net.batch_aware else 0.0
        self.decorrelation_weight = config.fe_decorrelation_weight
        self.neighbour_weight = config.fe_neighbour_weight
        self.neighbour_k = config.fe_neighbour_k
        self.cluster_weight = config.fe_cluster_weight
        if self.neighbour_weight > 0 and ctx.reference is None:
            raise ValueError("fe_neighbour_weight needs a reference PCA: build the context with reference=(center, components)")
        # the count likelihood of the mixed decoder: with a scaled-input likelihood (MSE) the
        # reconstruction already is the scaled error, and there are no library sizes to read
        counts = net.batch_aware and config.likelihood == "nb"
        self.depth_weight = config.fe_depth_weight if counts else 0.0
        self.scaled_weight = config.fe_scaled_weight if counts else 0.0
        # the decoder parameters the scaled error must not train (fe_scaled_path)
        self.scaled_detached = frozenset(
            name for name, _ in self.ae.decoder.named_parameters()
            if config.fe_scaled_path == "encoder" or (config.fe_scaled_path == "fixed" and _is_random_effect(self.ae.decoder, name))
        ) if self.scaled_weight > 0 else frozenset()
        self.reference = ctx.reference
        self.n_batches = ctx.n_batches
        self.chance_ce = ctx.chance_ce
        self.chance_acc = ctx.chance_acc
        self.monitor_leak = config.fe_monitor
        self.monitored = self._monitored(net.adversary_reads_layers, config.fe_monitor_adversaries)
        self.adversarial_loss = config.adversarial_loss
        # the all-layer adversary's share of the fooling loss (fe_layer_adv_scale); the latent one's is 1
        self.fool_scales = [config.fe_layer_adv_scale if layers else 1.0 for layers in net.adversary_reads_layers]
        self.membership = net.membership
        trained = [*self.ae.parameters(), *(self.membership.parameters() if self.membership is not None else [])]
        groups = _param_groups(trained, self.ae, config)
        if config.fe_encoder_weight_decay > 0:
            groups = _decay_encoder(groups, getattr(self.ae, "encoder", self.ae), config.fe_encoder_weight_decay)
        self.opt_ae = torch.optim.Adam(groups, lr=config.lr)
        self.opt_adv = torch.optim.Adam([p for a in self.advs for p in a.parameters()], lr=config.adversary_lr or config.lr)
        self.balance = None
        if config.adversary_clusters is not None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,))))
            if ctx.batch_prior is None:
                raise ValueError("adversary_clusters needs the training cells' batch proportions: build the context with PlanContext.from_codes")
            prior = torch.as_tensor(ctx.batch_prior)
            self.balance = ClusterBalance(config.adversary_clusters, prior, generator)
        decay = config.fe_ema_decay
        self.ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None

    def snapshot(self) -> dict:
        """The weights of record: the moving average when there is one."""
        return (self.ema.module if self.ema is not None else self.net).state_dict()

    def _fooling_loss(self, logits: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if self.adversarial_loss == "ce":
            return -weighted_cross_entropy(logits, b, w)
        per_cell = F.log_softmax(logits, dim=1).mean(dim=1)
        return -(per_cell.mean() if w is None else (w * per_cell).sum() / w.sum())

    def _weights(self, enc, b: torch.Tensor, update: bool) -> torch.Tensor | None:
        """The adversary's per-cell weights (``None``: every cell alike)."""
        if self.balance is None:
            return None
        if update:
            self.balance.update(enc.mean, b)
        return self.balance.weights(enc.mean, b)

    def train_epoch(self, loader) -> dict:
        self.net.train()
        means = _EpochMeans()
        first_weight = self.adv_schedule(self.step)
        steps_before, lead_sum = self.step, torch.zeros((), dtype=torch.float64)
        for mb in loader:
            adv_weight = self.adv_schedule(self.step)
            if self.lead_gain > 0:  # kept on the device: no wait for the adversary's numbers
                adv_weight = (adv_weight * (1.0 + self.lead_gain * self.lead)).float()
            self.step += 1
            enc = self.ae.encode(mb.x)
            views = self.net.adversary_views(enc)
            w = self._weights(enc, mb.batch, update=True)
            # (1) adversary step on detached encoder outputs
            adv_logits = [adv([o.detach() for o in view]) for adv, view in zip(self.advs, views)]
            adv_ces = [weighted_cross_entropy(logits, mb.batch, w) for logits in adv_logits]
            self.opt_adv.zero_grad(set_to_none=True)
            sum(adv_ces).backward()
            self.opt_adv.step()
            if self.lead_gain > 0:
                self._follow_lead(adv_ces)
                lead_sum = lead_sum + self.lead
            # (2) autoencoder step against the updated, frozen adversaries
            for adv in self.advs:
                adv.requires_grad_(False)
            decoded = self.ae.decode(enc.z, mb.batch)
            recon = self.ae.recon_loss(decoded, mb)
            fool = sum(scale * self._fooling_loss(adv(view), mb.batch, w)
                       for scale, adv, view in zip(self.fool_scales, self.advs, views)) / len(self.advs)
            kl_latent = _gaussian_kl(enc.mean, enc.logvar)
            kl_re = self.ae.kl()
            loss = self.recon_weight * recon + adv_weight * fool + self.latent_kl * kl_latent + self.re_kl * kl_re
            cycle = self._cycle_loss(enc, mb) if self.cycle_weight > 0 else kl_re.new_zeros(())
            loss = loss + self.cycle_weight * cycle
            if self.decorrelation_weight > 0:
                loss = loss + self.decorrelation_weight * _decorrelation(enc.mean)
            if self.scaled_weight > 0:
                loss = loss + self.scaled_weight * self._scaled_loss(decoded, enc, mb)
            neighbours = kl_re.new_zeros(())
            if self.neighbour_weight > 0:
                center, components = self.reference
                neighbours = _neighbour_loss(enc.mean, (mb.x - center) @ components, mb.batch, k=self.neighbour_k)
                loss = loss + self.neighbour_weight * neighbours
            if self.cluster_weight > 0:
                loss = loss + self.cluster_weight * _compactness(enc.mean, self.balance.centroids)
            if self.depth_weight > 0:
                depth = mb.library.log().to(enc.mean.dtype)
                group = self.balance.assign(enc.mean.detach()) * self.n_batches + mb.batch
                loss = loss + self.depth_weight * _depth_correlation(enc.mean, depth, group,
                                                                     len(self.balance.centroids) * self.n_batches)
            if self.membership is not None:  # its own parameters: the sum only saves an optimiser step
                member_ce = F.cross_entropy(self.membership(mb.x), mb.batch)
                loss = loss + member_ce
            self.opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_ae.step()
            for adv in self.advs:
                adv.requires_grad_(True)
            if self.ema is not None:
                self.ema.update_parameters(self.net)
            means.add(recon=recon, **self._adversary_stats(adv_logits, mb.batch, adv_ces),
                      kl_latent=kl_latent, kl_re=kl_re, cycle=cycle, neighbours=neighbours)
        out = {**means.means(), "adv_weight": first_weight}
        if self.lead_gain > 0:  # the same on every rank
            out["adv_lead"] = float(lead_sum) / max(1, self.step - steps_before)
        return out

    LEAD_DECAY = 0.9

    def _follow_lead(self, adv_ces: list[torch.Tensor]) -> None:
        """Update the moving average of the adversaries' lead on this minibatch,
        ``max(0, (H − CE) / H)`` of their mean training cross-entropy, averaged
        over ranks so that every rank weighs the fooling loss alike."""
        ce = distributed.all_reduce_sum(torch.stack([c.detach() for c in adv_ces]).mean().double()) / distributed.world_size()
        lead = ((self.chance_ce - ce) / self.chance_ce).clamp(min=0.0)
        self.lead = self.LEAD_DECAY * self.lead + (1.0 - self.LEAD_DECAY) * lead

    def _scaled_loss(self, decoded: torch.Tensor, enc, mb) -> torch.Tensor:
        """Mean squared error of the decoded expression on the scaled model input.
        ``fe_scaled_path`` says which weights it trains: all (``"network"``), the
        encoder's only (``"encoder"``: the decoder is used with its weights
        detached) or all but the random effects (``"fixed"``)."""
        if self.scaled_detached:
            decoder = self.ae.decoder
            params = {name: (p.detach() if name in self.scaled_detached else p) for name, p in decoder.named_parameters()}
            decoded = torch.func.functional_call(decoder, params, (enc.z, mb.batch))
        return F.mse_loss(self.ae.as_input(decoded, mb), mb.x)

    def _cycle_loss(self, enc, mb) -> torch.Tensor:
        """Cycle consistency: each cell decoded as another (random) batch and encoded
        again must land where it started. The distance is relative to the spread of
        the latent, so shrinking the latent cannot satisfy it."""
        other = (mb.batch + torch.randint(1, self.n_batches, mb.batch.shape, device=mb.batch.device)) % self.n_batches
        x_other = self.ae.as_input(self.ae.decode(enc.z, other), mb)
        target = enc.mean
        again = self.ae.encode(x_other).mean
        spread = (target - target.mean(0)).square().mean()
        return (again - target).square().mean() / (spread + 1e-8)

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        net = self.ema.module if self.ema is not None else self.net
        net.eval()
        ae = net.autoencoder
        sums = _ValidationSums()
        for mb in loader:
            enc = ae.encode(mb.x)
            logits = [adv(view) for adv, view in zip(self.advs, net.adversary_views(enc))]
            w = self._weights(enc, mb.batch, update=False)
            ces = [weighted_cross_entropy(lg, mb.batch, w) for lg in logits]
            extra = {} if net.membership is None else {"membership_acc": (net.membership(mb.x).argmax(1) == mb.batch).float().mean()}
            if self.monitor_leak == "calibrated":
                extra.update(self._tempered_ces(logits, mb.batch, w))
            sums.add(
                len(mb.x),
                recon=ae.recon_loss(ae.decode(enc.z, mb.batch), mb),
                **self._adversary_stats(logits, mb.batch, ces),
                **extra,
            )
        out = sums.means()
        if self.monitor_leak == "calibrated":
            self._calibrate(out)
        out["leak"] = self._leak(out)
        out["monitor"] = self.recon_weight * out["recon"] + self.adv_weight * out["leak"]
        return out

    @classmethod
    def _adversary_stats(cls, logits: list, b: torch.Tensor, ces: list) -> dict:
        """Cross-entropy (as given, weighted where the batches are balanced) and
        accuracy of each adversary: ``adv_*`` for the first, ``latent_adv_*`` for
        the latent adversary beside it."""
        out = {}
        for prefix, lg, ce in zip(cls.ADVERSARY_NAMES, logits, ces):
            out[f"{prefix}_ce"] = ce
            out[f"{prefix}_acc"] = (lg.argmax(1) == b).float().mean()
        return out

    def _monitored(self, reads_layers: tuple[bool, ...], which: str) -> tuple[str, ...]:
        """The records of the adversaries whose lead the monitor counts (``fe_monitor_adversaries``)."""
        names = self.ADVERSARY_NAMES[: len(self.advs)]
        if which == "every":
            return names
        latent = tuple(name for name, layers in zip(names, reads_layers) if not layers)
        if not latent:
            raise ValueError("fe_monitor_adversaries='latent' needs an adversary on the latent: "
                             "set adversary_input to 'both' or 'latent', or fe_monitor_adversaries='every'")
        return latent

    def _leak(self, out: dict) -> float:
        """How far the monitored adversaries beat chance on held-out cells, in
        cross-entropy units (the larger lead where there are two)."""
        return max(self._leak_of(out, prefix) for prefix in self.monitored)

    @classmethod
    def _tempered_ces(cls, logits: list, b: torch.Tensor, w: torch.Tensor | None) -> dict:
        return {f"{prefix}_ce_t{i}": weighted_cross_entropy(lg / t, b, w)
                for prefix, lg in zip(cls.ADVERSARY_NAMES, logits) for i, t in enumerate(cls.TEMPERATURES)}

    def _calibrate(self, out: dict) -> None:
        """Replace the validation cross-entropies at every temperature by their
        minimum, ``<prefix>_ce_calibrated``."""
        for prefix in self.ADVERSARY_NAMES[: len(self.advs)]:
            tempered = [out.pop(f"{prefix}_ce_t{i}") for i in range(len(self.TEMPERATURES))]
            out[f"{prefix}_ce_calibrated"] = min(tempered)

    def _leak_of(self, out: dict, prefix: str) -> float:
        if self.monitor_leak == "calibrated":
            return max(0.0, self.chance_ce - out[f"{prefix}_ce_calibrated"])
        if self.monitor_leak == "accuracy" and self.chance_acc is not None and self.chance_acc < 1:
            return self.chance_ce * max(0.0, out[f"{prefix}_acc"] - self.chance_acc) / (1.0 - self.chance_acc)
        return max(0.0, self.chance_ce - out[f"{prefix}_ce"])


class RandomEffectsPlan:
    """Random-effects autoencoder: ``recon_weight·MSE + cls_weight·CE(classifier) + kl_weight·KL``, one Adam optimiser.

    The validation monitor is the same loss without the KL term, computed with
    the posterior means of the random effects.
    """

    def __init__(self, re: REAutoencoder, config: AMEDLConfig, ctx: PlanContext):
        self.re = re
        self.recon_weight, self.cls_weight, self.kl_weight = config.re_recon_weight, config.re_cls_weight, config.re_kl_weight
        self.opt = torch.optim.Adam(_param_groups(list(re.parameters()), re, config), lr=config.lr)

    def train_epoch(self, loader) -> dict:
        self.re.train()
        means = _EpochMeans()
        for mb in loader:
            x_hat, _, logits = self.re(mb.x, mb.batch)
            recon = F.mse_loss(x_hat, mb.x)
            ce = F.cross_entropy(logits, mb.batch)
            kl = self.re.kl()
            loss = self.recon_weight * recon + self.cls_weight * ce + self.kl_weight * kl
            if self.re.membership is not None:  # its own parameters, trained beside the network
                loss = loss + F.cross_entropy(self.re.membership(mb.x), mb.batch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            means.add(recon=recon, cls_ce=ce, kl=kl, cls_acc=(logits.argmax(1) == mb.batch).float().mean())
        return means.means()

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        self.re.eval()
        sums = _ValidationSums()
        for mb in loader:
            x_hat, _, logits = self.re(mb.x, mb.batch)
            extra = {} if self.re.membership is None else {"membership_acc": (self.re.membership(mb.x).argmax(1) == mb.batch).float().mean()}
            sums.add(
                len(mb.x),
                recon=F.mse_loss(x_hat, mb.x),
                cls_ce=F.cross_entropy(logits, mb.batch),
                cls_acc=(logits.argmax(1) == mb.batch).float().mean(),
                **extra,
            )
        out = sums.means()
        out["monitor"] = self.recon_weight * out["recon"] + self.cls_weight * out["cls_ce"]
        return out


# ---------------------------------------------------------------------------
# adaptation to new batches


def adapt_new_batches(
    net: nn.Module, grown: list, loader, steps: int, lr: float, kl_weight: float, progress: bool = False,
) -> list[float]:
    """Train only the rows of new batches in ``grown`` (``(parameter, n_old_rows)``
    pairs from ``net.add_batches``) for ``steps`` minibatch steps on
    ``net.adaptation_loss + kl_weight·KL``; every other weight, and batch
    normalisation's statistics, stay frozen. Returns the loss per step."""
    from .nn import RandomEffects

    saved = {p: p.requires_grad for p in net.parameters()}
    hooks = []
    for p in net.parameters():
        p.requires_grad_(False)
    params = []
    for p, n_old in grown:
        p.requires_grad_(True)
        mask = torch.ones_like(p)
        mask[:n_old] = 0
        hooks.append(p.register_hook(lambda g, m=mask: g * m))
        params.append(p)
    opt = torch.optim.Adam(params, lr=lr)
    net.eval()
    for m in net.modules():
        if isinstance(m, RandomEffects):
            m.train()  # sample the posterior, so that its scale is learned too
    losses: list[float] = []
    bar = progress_bar(total=steps, desc="aMEDL adapt", disable=not progress, leave=False, unit="step")
    try:
        while len(losses) < steps:
            for mb in loader:
                loss = net.adaptation_loss(mb) + kl_weight * net.kl()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update()
                if len(losses) >= steps:
                    break
    finally:
        bar.close()
        for h in hooks:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
        net.eval()
    return losses


# ---------------------------------------------------------------------------
# the registry of networks


def _build_fe(c: AMEDLConfig, prep) -> FixedEffectsNetwork:
    n_genes, n_batches = len(prep.genes), len(prep.batches)
    if c.fe_decoder == "tied":
        ae = TiedAutoencoder(n_genes, c.hidden, c.n_latent, c.latent_activation)
    else:
        ae = MixedEffectsAutoencoder(
            n_genes, n_batches, c.hidden, c.n_latent, c.prior_scale, likelihood=c.likelihood,
            latent_activation=c.latent_activation, variational=c.fe_latent_kl_weight > 0,
            target_sum=prep.target_sum, input_center=torch.as_tensor(prep.center), input_scale=torch.as_tensor(prep.scale),
            init_scale=c.re_init_scale,
        )
    net = FixedEffectsNetwork(ae, n_batches, c.adversary_hidden, c.adversary_input)
    if net.batch_aware:
        net.membership = _build_membership(c, prep)
    return net


def _build_membership(c: AMEDLConfig, prep) -> BatchMembership | None:
    # built after the network, so that the network's own initial weights do not depend on it
    return None if c.membership_hidden is None else BatchMembership(len(prep.genes), len(prep.batches), c.membership_hidden)


def _build_re(c: AMEDLConfig, prep) -> REAutoencoder:
    re = REAutoencoder(len(prep.genes), len(prep.batches), c.hidden, c.n_latent, c.prior_scale, c.classifier_hidden,
                       init_scale=c.re_init_scale)
    re.membership = _build_membership(c, prep)
    return re


def _build_ae(c: AMEDLConfig, prep) -> PlainAutoencoder:
    return PlainAutoencoder(TiedAutoencoder(len(prep.genes), c.hidden, c.n_latent, c.latent_activation))


@dataclass(frozen=True)
class Network:
    """How one kind of network is built, trained and checkpointed."""

    kind: str
    description: str
    seed_offset: int
    build: Callable[[AMEDLConfig, object], nn.Module]  # (config, fitted Preprocessor)
    plan: Callable[[nn.Module, AMEDLConfig, PlanContext], object]
    patience: Callable[[AMEDLConfig], int | None]
    burn_in: bool = False  # no checkpoint before the adversary has learned
    latent_needs_batch: bool = False
    latent_intercepts: bool = False  # its latent gets the batches' random intercepts (fe_intercept_clusters)
    # weight of the random effects' KL in adaptation, from (config, n_cells, n_genes)
    adapt_kl_weight: Callable[[AMEDLConfig, int, int], float] | None = None

    def needs_counts(self, c: AMEDLConfig) -> bool:
        """Whether its minibatches must carry raw counts (a count likelihood)."""
        return self.kind == "fe" and c.fe_decoder == "mixed" and c.likelihood == "nb"

    def needs_reference(self, c: AMEDLConfig) -> bool:
        """Whether its plan needs the training cells' reference PCA (the neighbourhood loss)."""
        return self.kind == "fe" and c.fe_neighbour_weight > 0


NETWORKS: dict[str, Network] = {
    "fe": Network("fe", "fixed effects", 0, _build_fe, AdversarialPlan, lambda c: c.patience, burn_in=True,
                  latent_intercepts=True, adapt_kl_weight=lambda c, n, g: c.fe_re_kl_weight / (n * g * c.fe_recon_weight)),
    "re": Network("re", "random effects", 1, _build_re, RandomEffectsPlan, lambda c: c.re_patience, latent_needs_batch=True,
                  adapt_kl_weight=lambda c, n, g: c.re_kl_weight / c.re_recon_weight),
    "ae": Network("ae", "plain autoencoder", 2, _build_ae, AutoencoderPlan, lambda c: c.patience),
}
