"""Cluster-balanced adversary weights (amedl.balance) and their use in FE training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import amedl
from amedl.balance import ClusterBalance, weighted_cross_entropy
from amedl.errors import AMEDLConfigError

SMALL = dict(n_top_genes=200, hidden=(64, 32), n_latent=8, adversary_hidden=(64, 32))
ROOT = Path(__file__).resolve().parents[2]

#: Each rank feeds its own half of every minibatch to a ClusterBalance.
WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from amedl import distributed
    from amedl.balance import ClusterBalance

    distributed.init_from_env()
    r = distributed.rank()
    rng = np.random.default_rng(0)
    balance = ClusterBalance(3, torch.tensor([0.5, 0.5]), torch.Generator().manual_seed(r))
    for _ in range(20):
        z = torch.as_tensor(rng.normal(size=(64, 2)), dtype=torch.float32)
        z[:32, 0] += 5.0
        b = torch.as_tensor(rng.integers(0, 2, 64))
        balance.update(z[r::2], b[r::2])
    with open(f"{sys.argv[1]}/rank{r}.json", "w") as fh:
        json.dump({"centroids": balance.centroids.tolist(), "counts": balance.counts.tolist()}, fh)
    distributed.shutdown()
    """
)


def _confounded(n: int, rng: np.random.Generator):
    """Two well-separated cell types; type 0 is 90% batch 0, type 1 is 90% batch 1."""
    kind = rng.integers(0, 2, n)
    batch = np.where(rng.random(n) < 0.9, kind, 1 - kind)
    z = rng.normal(size=(n, 4)) * 0.3
    z[:, 0] += 6.0 * kind
    return torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(batch), kind


def test_weights_balance_batches_within_each_cluster():
    rng = np.random.default_rng(0)
    balance = ClusterBalance(2, torch.tensor([0.5, 0.5]), torch.Generator().manual_seed(0))
    assert torch.equal(balance.weights(*_confounded(10, rng)[:2]), torch.ones(10))  # before any update
    for _ in range(200):
        z, b, _ = _confounded(256, rng)
        balance.update(z, b)
    z, b, kind = _confounded(4000, rng)
    w = balance.weights(z, b).numpy()
    b = b.numpy()
    for k in (0, 1):
        here = kind == k
        # p(b) / p(b | cluster) with the generating proportions 0.9 / 0.1
        np.testing.assert_allclose(w[here & (b == k)], 0.5 / 0.9, rtol=0.05)
        np.testing.assert_allclose(w[here & (b != k)], 0.5 / 0.1, rtol=0.1)
        balanced = w[here & (b == k)].sum() / w[here].sum()
        assert (b[here] == k).mean() > 0.85 and abs(balanced - 0.5) < 0.1


def test_weights_are_capped_and_one_where_composition_is_even():
    rng = np.random.default_rng(1)
    even = ClusterBalance(3, torch.tensor([0.5, 0.5]), torch.Generator().manual_seed(0))
    for _ in range(100):
        z = torch.as_tensor(rng.normal(size=(256, 3)), dtype=torch.float32)
        even.update(z, torch.as_tensor(rng.integers(0, 2, 256)))
    w = even.weights(torch.as_tensor(rng.normal(size=(500, 3)), dtype=torch.float32), torch.as_tensor(rng.integers(0, 2, 500)))
    assert abs(float(w.mean()) - 1.0) < 0.1
    skewed = ClusterBalance(1, torch.tensor([0.5, 0.5]), torch.Generator().manual_seed(0), max_weight=4.0)
    z = torch.zeros(1000, 2)
    b = torch.zeros(1000, dtype=torch.long)
    b[:2] = 1
    skewed.update(z, b)
    assert float(skewed.weights(z, b).max()) == 4.0


def test_weighted_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    b = torch.tensor([0, 0, 1])
    per_cell = torch.nn.functional.cross_entropy(logits, b, reduction="none")
    assert torch.allclose(weighted_cross_entropy(logits, b, None), per_cell.mean())
    w = torch.tensor([1.0, 0.0, 3.0])
    assert torch.allclose(weighted_cross_entropy(logits, b, w), (per_cell[0] + 3 * per_cell[2]) / 4)


def test_fe_training_with_balanced_adversary_is_reproducible(sim):
    fits = []
    for _ in range(2):
        m = amedl.AMEDL(sim, "batch", adversary_clusters=5, **SMALL)
        m.fit(seed=3, max_epochs=3, kinds=("fe",), progress=False)
        fits.append(m)
    h = fits[0].history["fe"]
    assert np.isfinite(h[["train_adv_ce", "val_adv_ce", "val_monitor"]].to_numpy()).all()
    np.testing.assert_array_equal(fits[0].latent(sim, kind="fe"), fits[1].latent(sim, kind="fe"))
    plain = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=3, max_epochs=3, kinds=("fe",), progress=False)
    assert not np.array_equal(plain.history["fe"]["train_adv_ce"], h["train_adv_ce"])


def test_adversary_clusters_is_checked():
    with pytest.raises(AMEDLConfigError, match="adversary_clusters"):
        amedl.AMEDLConfig(adversary_clusters=0)


def test_ranks_share_one_clustering(tmp_path):
    """Under torch.distributed (2 gloo ranks, each with its own half of the cells) the
    k-means sums are all-reduced: both ranks hold the same centroids, and the counts
    cover every rank's cells."""
    (tmp_path / "balance_worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "python"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from amedl.distributed import launch; "
         "sys.exit(launch(sys.argv[1:], 2, module='balance_worker'))", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    decayed_cells = sum(64 * 0.99**i for i in range(20))
    assert np.isclose(np.sum(ranks[0]["counts"]), decayed_cells, rtol=1e-4)
