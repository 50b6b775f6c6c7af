"""The demo simulation (known cell types): the FE latent's neighbourhoods are far
more mixed than PCA's, with pure cell types (what `amedl demo` shows).

The model trains with one thread so that the scores are those measured when the
thresholds were set (results are bit-identical for a seed and a thread count).
"""
from __future__ import annotations

import amedl
from amedl.baselines import pca_latent
from amedl.datasets import simulate
from amedl.demo import DEMO_SIMULATION
from amedl.metrics import neighbour_fractions


def test_demo_fe_mixes_batches_and_keeps_cell_types():
    sim = simulate(seed=0, **DEMO_SIMULATION)
    model = amedl.AMEDL(sim, "batch", threads=1)
    model.fit(seed=0, progress=False, kinds=("fe",))
    batch, labels = sim.obs["batch"].to_numpy(), sim.obs["cell_type"].to_numpy()
    fe = neighbour_fractions(model.latent(sim, kind="fe"), batch, labels)
    pca = neighbour_fractions(pca_latent(model), batch, labels)
    assert pca["same_batch_neighbours"] - pca["same_batch_mixed"] > 0.2, pca  # there is a batch effect to remove
    # measured (seed 0, one thread, the twenty-first round's default): 0.331 against 0.334 perfectly mixed
    # and PCA's 0.71 (Harmony 0.31), purity 0.980; seeds 1-3: 0.333, 0.334, 0.334, purity 0.979-0.983
    # (docs/tuning.md; without the latent intercepts 0.335-0.336, the ninth round's default 0.343-0.360);
    # issue 12 asks for at most 0.05 above mixed
    assert fe["same_batch_neighbours"] < pca["same_batch_neighbours"] - 0.1, (fe, pca)
    assert fe["same_batch_neighbours"] <= fe["same_batch_mixed"] + 0.05, fe
    assert fe["label_purity"] >= 0.95, fe
