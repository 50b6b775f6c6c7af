"""Cross-validation folds stratified on batch x label."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .._utils import whole_number
from ..errors import AMEDLConfigError, AMEDLInputError

__all__ = ["stratified_folds"]


def stratified_folds(batch, labels, n_folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split cells into ``n_folds`` folds stratified on batch x label.

    Uses scikit-learn's ``StratifiedKFold`` (shuffled, seeded) on the combined
    key ``batch|label``. Strata with fewer cells than folds are pooled first
    within their batch (``batch|rare``) and, if still too small, into one
    ``rare`` stratum; a ``rare`` pool smaller than ``n_folds`` is spread over
    the largest stratum of each cell's batch. Every cell is held out exactly once.

    Parameters
    ----------
    batch, labels
        One batch and one label per cell.
    n_folds
        Number of folds; 1 returns a single split whose training and test sets
        are both all cells.
    seed
        Seed of the shuffle.

    Returns
    -------
    List of ``(train_indices, test_indices)`` pairs (sorted integer arrays).
    """
    from sklearn.model_selection import StratifiedKFold

    batch = np.asarray(batch).astype(str)
    labels = np.asarray(labels).astype(str)
    n = batch.shape[0]
    if labels.shape[0] != n:
        raise AMEDLInputError("batch and labels must have one entry per cell")
    n_folds = whole_number("folds", n_folds, 1)
    if n_folds == 1:
        idx = np.arange(n)
        return [(idx, idx)]
    if n_folds > n:
        raise AMEDLConfigError(f"folds={n_folds} is more than the number of cells ({n})")
    key = pd.Series(np.char.add(np.char.add(batch, "|"), labels))
    counts = key.value_counts()
    rare = key.map(counts) < n_folds
    key[rare] = pd.Series(batch, dtype=object)[rare] + "|rare"
    counts = key.value_counts()
    rare = key.map(counts) < n_folds
    key[rare] = "rare"
    if 0 < int(rare.sum()) < n_folds:
        # too few even pooled: each joins the largest stratum of its own batch (else the largest overall)
        common = key[~rare]
        fallback = common.value_counts().idxmax() if len(common) else "all"
        biggest = {b: common[batch[~rare.to_numpy()] == b].value_counts().idxmax()
                   for b in np.unique(batch[~rare.to_numpy()])}
        key[rare] = [biggest.get(b, fallback) for b in batch[rare.to_numpy()]]
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in skf.split(np.zeros(n), key.to_numpy())]
