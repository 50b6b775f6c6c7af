"""Training loops: adversarial fixed effects, random effects, plain autoencoder.

Each trainer exposes ``train_epoch(loader)`` and ``evaluate(loader)``; the
shared :func:`fit_loop` runs epochs, keeps the loss history, stops early on a
validation ``monitor`` loss and restores the best weights.
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
from tqdm.auto import tqdm

from .nn import Adversary, REAutoencoder, TiedAutoencoder


def batch_entropy(codes: np.ndarray, n_batches: int) -> tuple[float, float]:
    """Cross-entropy and accuracy of the best batch predictor that ignores the cell (chance level)."""
    p = np.bincount(codes, minlength=n_batches) / max(len(codes), 1)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum()), float(p.max())


@dataclass
class LoopSettings:
    max_epochs: int
    patience: int | None
    min_epochs: int = 1
    min_delta: float = 0.0
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
) -> pd.DataFrame:
    """Run epochs until ``max_epochs`` or until the validation ``monitor`` has not
    improved for ``patience`` epochs; restore the weights of the best epoch.

    The first ``burn_in`` epochs are never taken as the best (an adversary that
    has barely trained makes any latent look batch-blind).

    Returns the per-epoch history; ``history.attrs`` holds ``best_epoch`` and
    ``stopped_early``.
    """
    best, best_state, best_epoch, wait = math.inf, None, 0, 0
    rows = []
    stopped = False
    bar = tqdm(range(1, settings.max_epochs + 1), desc=settings.desc, disable=not settings.progress, leave=False, unit="epoch")
    for epoch in bar:
        tr = train_epoch()
        ev = evaluate()
        rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in tr.items()}, **{f"val_{k}": v for k, v in ev.items()}})
        if epoch <= settings.burn_in and epoch < settings.max_epochs:
            pass
        elif ev["monitor"] < best - settings.min_delta:
            best, best_epoch, wait = ev["monitor"], epoch, 0
            best_state = copy.deepcopy(modules.state_dict())
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
    history = pd.DataFrame(rows)
    history.attrs.update(best_epoch=best_epoch, stopped_early=stopped)
    return history


class _EpochMeans:
    """Means of per-step training losses over an epoch, summed as tensors so
    that a step does not wait for the device to report its numbers."""

    def __init__(self):
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.steps = 0

    def add(self, **values: torch.Tensor) -> None:
        stacked = torch.stack([v.detach().float() for v in values.values()])
        self.sums = stacked if self.sums is None else self.sums + stacked
        self.names = list(values)
        self.steps += 1

    def means(self) -> dict:
        if not self.steps:
            return {}
        return dict(zip(self.names, (self.sums.double() / self.steps).tolist()))


@torch.no_grad()
def _evaluate_reconstruction_and_batch(loader, forward, needs_batch: bool = False) -> tuple[float, float, float]:
    """Reconstruction MSE, batch cross-entropy and batch accuracy over a loader.

    ``forward`` maps a minibatch (and its batch codes if ``needs_batch``) to
    ``(reconstruction, batch logits)``.
    """
    se = ce = correct = 0.0
    n_el = n = 0
    for x, b in loader:
        x_hat, logits = forward(x, b) if needs_batch else forward(x)
        se += F.mse_loss(x_hat, x, reduction="sum").item()
        ce += F.cross_entropy(logits, b, reduction="sum").item()
        correct += (logits.argmax(1) == b).sum().item()
        n_el += x.numel()
        n += x.shape[0]
    return se / n_el, ce / n, correct / n


class AutoencoderTrainer:
    """Plain autoencoder: minimise the reconstruction MSE."""

    def __init__(self, ae: TiedAutoencoder, lr: float, recon_weight: float = 1.0):
        self.ae = ae
        self.recon_weight = recon_weight
        self.opt = torch.optim.Adam(ae.parameters(), lr=lr)

    def train_epoch(self, loader) -> dict:
        self.ae.train()
        means = _EpochMeans()
        for x, _ in loader:
            x_hat, _, _ = self.ae(x)
            mse = F.mse_loss(x_hat, x)
            self.opt.zero_grad(set_to_none=True)
            (self.recon_weight * mse).backward()
            self.opt.step()
            means.add(mse=mse)
        return means.means()

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        self.ae.eval()
        se, n = 0.0, 0
        for x, _ in loader:
            x_hat, _, _ = self.ae(x)
            se += F.mse_loss(x_hat, x, reduction="sum").item()
            n += x.numel()
        mse = se / max(n, 1)
        return {"mse": mse, "monitor": mse}


class FixedEffectsTrainer:
    """Alternating adversarial training of the fixed-effects autoencoder.

    Per minibatch: (1) one Adam step of the adversary on the batch
    cross-entropy with the autoencoder's outputs detached; (2) one Adam step of
    the autoencoder on ``recon_weight·MSE − adv_weight·CE(adversary)``.

    ``adversarial_loss="uniform"`` replaces ``−CE`` by the cross-entropy of the
    adversary's prediction against the uniform distribution (it cannot be
    lowered by making the adversary confidently wrong).

    The validation monitor is ``recon_weight·MSE + adv_weight·max(0, H − CE)``:
    reconstruction plus how far the adversary beats the chance cross-entropy
    ``H`` on held-out cells, so the best epoch reconstructs well *and* hides
    the batch.
    """

    def __init__(
        self,
        ae: TiedAutoencoder,
        adversary: Adversary,
        *,
        lr: float,
        adversary_lr: float,
        recon_weight: float,
        adv_weight: float,
        chance_ce: float,
        adversarial_loss: str = "ce",
        latent_only: bool = False,
    ):
        self.ae, self.adv = ae, adversary
        self.latent_only = latent_only
        self.recon_weight, self.adv_weight = recon_weight, adv_weight
        self.chance_ce = chance_ce
        if adversarial_loss not in ("ce", "uniform"):
            raise ValueError("adversarial_loss must be 'ce' or 'uniform'")
        self.adversarial_loss = adversarial_loss
        self.opt_ae = torch.optim.Adam(ae.parameters(), lr=lr)
        self.opt_adv = torch.optim.Adam(adversary.parameters(), lr=adversary_lr)

    def _fooling_loss(self, logits: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.adversarial_loss == "ce":
            return -F.cross_entropy(logits, b)
        return -F.log_softmax(logits, dim=1).mean(dim=1).mean()

    def train_epoch(self, loader) -> dict:
        self.ae.train()
        self.adv.train()
        means = _EpochMeans()
        for x, b in loader:
            z, outputs = self.ae.encode(x)
            if self.latent_only:
                outputs = [z]
            # (1) adversary step on detached encoder outputs
            adv_logits = self.adv([o.detach() for o in outputs])
            adv_ce = F.cross_entropy(adv_logits, b)
            self.opt_adv.zero_grad(set_to_none=True)
            adv_ce.backward()
            self.opt_adv.step()
            # (2) autoencoder step against the updated, frozen adversary
            self.adv.requires_grad_(False)
            x_hat = self.ae.decode(z)
            mse = F.mse_loss(x_hat, x)
            fool = self._fooling_loss(self.adv(outputs), b)
            loss = self.recon_weight * mse + self.adv_weight * fool
            self.opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_ae.step()
            self.adv.requires_grad_(True)
            means.add(mse=mse, adv_ce=adv_ce, adv_acc=(adv_logits.argmax(1) == b).float().mean())
        return means.means()

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        self.ae.eval()
        self.adv.eval()

        def forward(x):
            z, outputs = self.ae.encode(x)
            return self.ae.decode(z), self.adv([z] if self.latent_only else outputs)

        mse, ce, acc = _evaluate_reconstruction_and_batch(loader, forward)
        monitor = self.recon_weight * mse + self.adv_weight * max(0.0, self.chance_ce - ce)
        return {"mse": mse, "adv_ce": ce, "adv_acc": acc, "monitor": monitor}


class RandomEffectsTrainer:
    """Random-effects autoencoder: ``recon_weight·MSE + cls_weight·CE(classifier) + kl_weight·KL``, one Adam optimiser.

    The validation monitor is the same loss without the KL term, computed with
    the posterior means of the random effects.
    """

    def __init__(self, re: REAutoencoder, *, lr: float, recon_weight: float, cls_weight: float, kl_weight: float):
        self.re = re
        self.recon_weight, self.cls_weight, self.kl_weight = recon_weight, cls_weight, kl_weight
        self.opt = torch.optim.Adam(re.parameters(), lr=lr)

    def train_epoch(self, loader) -> dict:
        self.re.train()
        means = _EpochMeans()
        for x, b in loader:
            x_hat, _, logits = self.re(x, b)
            mse = F.mse_loss(x_hat, x)
            ce = F.cross_entropy(logits, b)
            kl = self.re.kl()
            loss = self.recon_weight * mse + self.cls_weight * ce + self.kl_weight * kl
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            means.add(mse=mse, cls_ce=ce, kl=kl, cls_acc=(logits.argmax(1) == b).float().mean())
        return means.means()

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        self.re.eval()

        def forward(x, b):
            x_hat, _, logits = self.re(x, b)
            return x_hat, logits

        mse, ce, acc = _evaluate_reconstruction_and_batch(loader, forward, needs_batch=True)
        return {"mse": mse, "cls_ce": ce, "cls_acc": acc, "monitor": self.recon_weight * mse + self.cls_weight * ce}
