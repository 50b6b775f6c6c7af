"""Differential expression between batches, from the random-effects posterior.

A batch's effect on a gene is read off counterfactual expression: the same
cells decoded as batch a and as batch b. The decoder's random effects have a
posterior, so each Monte Carlo draw of them gives one log fold change per gene
(and per cell group); the draws give its credible interval and the
probability that the effect exceeds a threshold. Where batches do not differ,
the random effects shrink to their prior and the intervals cover zero.

What the interval does and does not hold: it is the posterior uncertainty of
the batches' random effects, given the fitted network. Cell-to-cell sampling
and the uncertainty of the network's other weights are not in it, so it does
not widen for a small group, and ``credible`` is a per-gene call with no
multiple-testing correction. The interval's ends and the calls near them are
Monte Carlo estimates: with the default 100 draws they can move between seeds
(by a few tenths of a log2 unit on real data); give ``n_samples=1000`` for
results to report.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._utils import whole_number
from .errors import AMEDLConfigError, AMEDLInputError, preview
from .nn import posterior_draw, predicts_unseen
from .train import NETWORKS

__all__ = ["differential", "PSEUDOCOUNT"]

#: Added to mean expression per 10⁴ counts before taking logs (0.1 counts per 10⁴).
PSEUDOCOUNT = 0.1


def _group_codes(adata, groupby: str | None, n: int) -> tuple[np.ndarray, list[str]]:
    if groupby is None:
        return np.zeros(n, dtype=np.int64), []
    if groupby not in adata.obs.columns:
        raise AMEDLInputError(f"groupby column {groupby!r} is not in adata.obs (columns: {preview(adata.obs.columns, 20)})")
    values = adata.obs[groupby]
    if values.isna().any():
        raise AMEDLInputError(f"adata.obs[{groupby!r}] has missing values; give every cell a group or drop those cells")
    cat = pd.Categorical(values.astype(str))
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


def _subsample_per_group(group: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted indices of at most ``max_cells`` cells of each group (a small group whole), or
    ``None`` when no group has more."""
    sizes = np.bincount(group)
    if sizes.max() <= max_cells:
        return None
    keep = [
        members if len(members) <= max_cells else rng.choice(members, max_cells, replace=False)
        for members in (np.flatnonzero(group == g) for g in range(len(sizes)))
    ]
    return np.sort(np.concatenate(keep))


def differential(
    model,
    adata=None,
    batch_a: str | None = None,
    batch_b: str | None = None,
    groupby: str | None = None,
    *,
    kind: str = "fe",
    n_samples: int = 100,
    delta: float = 0.5,
    credible: float = 0.95,
    max_cells: int | None = 20_000,
    seed: int = 0,
    layer: str | None = None,
    batch_size: int = 4096,
) -> pd.DataFrame:
    """See :meth:`amedl.AMEDL.differential`."""
    net = model._module(kind)
    if not net.batch_aware:
        raise AMEDLConfigError(f"the {kind} network of this model has no batch input, so it has no batch effects to compare")
    if batch_a is None:
        raise AMEDLInputError("name batch_a, the batch whose effects to report (e.g. a donor or a stimulated sample)")
    whole_number("n_samples", n_samples, 2)
    if not 0 < credible < 1:
        raise AMEDLConfigError(f"credible must be between 0 and 1, got {credible}")
    if not delta >= 0:
        raise AMEDLConfigError(f"delta, the smallest |log2 fold change| that counts as an effect, must be at least 0, "
                               f"got {delta}")
    whole_number("max_cells", max_cells, 1, none_means="every cell of each group")
    whole_number("seed", seed, 0)
    code_a = model._batch_code(batch_a)
    # against batch_b, or the average over the training batches (batches added later by adapt() do not move it)
    targets = [model._batch_code(batch_b)] if batch_b is not None else \
        [i for i, b in enumerate(model.batches) if b not in model.adapted]
    if batch_b is not None and targets[0] == code_a:
        raise AMEDLInputError(f"batch_a and batch_b are the same batch ({batch_a!r}); name two batches, "
                              "or leave batch_b out to compare with the average over the training batches")

    X, codes, library = model._inputs(adata, layer, need_batches=NETWORKS[kind].latent_needs_batch, predicted=predicts_unseen(net))
    n = X.shape[0]
    group, names = _group_codes(adata, groupby, n) if adata is not None else (np.zeros(n, dtype=np.int64), [])
    if adata is None and groupby is not None:
        raise AMEDLInputError("groupby needs the AnnData (pass adata=...)")
    keep = None if max_cells is None else _subsample_per_group(group, max_cells, np.random.default_rng(seed))
    if keep is not None:
        X, codes, library, group = X[keep], codes[keep], library[keep], group[keep]
    n_groups = max(len(names), 1)
    sizes = np.bincount(group, minlength=n_groups).astype(np.float64)
    membership = sp.csr_matrix((np.ones(len(group), np.float32), (group, np.arange(len(group)))), shape=(n_groups, len(group)))
    inputs = (X, codes, library)
    minibatches = list(model._loader(inputs, batch_size, library=net.output_space == "log1p"))

    def group_means(target: int) -> np.ndarray:
        """Mean expression per 10⁴ counts per group (groups x genes) decoded as ``target``."""
        expr = np.expm1(model._decode(inputs, net, target, batch_size, minibatches))
        return np.asarray(membership @ expr, dtype=np.float64) / np.maximum(sizes, 1)[:, None]

    generator = torch.Generator().manual_seed(int(seed))
    mean_a, mean_b = [], []
    for _ in range(int(n_samples)):
        with posterior_draw(net, generator):
            a = group_means(code_a)
            b = np.mean([a if t == code_a else group_means(t) for t in targets], axis=0)
        mean_a.append(a)
        mean_b.append(b)
    mean_a, mean_b = np.stack(mean_a), np.stack(mean_b)  # draws x groups x genes
    lfc = np.log2(mean_a + PSEUDOCOUNT) - np.log2(mean_b + PSEUDOCOUNT)
    tail = (1 - credible) / 2
    lo, hi = np.quantile(lfc, [tail, 1 - tail], axis=0)
    frames = []
    for g in range(n_groups):
        df = pd.DataFrame(
            {
                "gene": model.genes,
                "lfc": lfc[:, g].mean(0),
                "lfc_sd": lfc[:, g].std(0, ddof=1),
                "ci_low": lo[g],
                "ci_high": hi[g],
                "p_effect": (np.abs(lfc[:, g]) > delta).mean(0),
                "credible": (lo[g] > 0) | (hi[g] < 0),
                "mean_a": mean_a[:, g].mean(0),
                "mean_b": mean_b[:, g].mean(0),
                "n_cells": int(sizes[g]),
            }
        )
        if names:
            df.insert(0, "group", names[g])
        frames.append(df.sort_values("lfc", ascending=False, kind="stable"))
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update(batch_a=str(batch_a), batch_b=None if batch_b is None else str(batch_b), kind=kind,
                     n_samples=int(n_samples), delta=float(delta), credible=float(credible),
                     averaged_batches=[] if batch_b is not None else [model.batches[t] for t in targets])
    return out
