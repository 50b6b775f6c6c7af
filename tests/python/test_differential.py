"""AMEDL.differential(): batch-vs-batch log fold changes from posterior draws."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import amedl


def test_table_per_gene_sorted_with_intervals(small_model, sim):
    before = sim.X.copy()
    t = small_model.differential(sim, "batch_1", "batch_2", n_samples=20)
    assert list(t.columns) == ["gene", "lfc", "lfc_sd", "ci_low", "ci_high", "p_effect", "credible",
                               "mean_a", "mean_b", "n_cells"]
    assert len(t) == len(small_model.genes) and set(t["gene"]) == set(small_model.genes)
    assert t["lfc"].is_monotonic_decreasing
    assert (t["ci_low"] <= t["lfc"]).all() and (t["lfc"] <= t["ci_high"]).all()
    assert t["p_effect"].between(0, 1).all() and (t["lfc_sd"] > 0).all()
    assert (t["credible"] == ((t["ci_low"] > 0) | (t["ci_high"] < 0))).all()
    assert (t["n_cells"] == sim.n_obs).all()
    assert (sim.X != before).nnz == 0  # the input is not changed
    assert t.attrs["batch_a"] == "batch_1" and t.attrs["n_samples"] == 20


def test_lfc_matches_the_ratio_of_mean_counterfactuals(small_model, sim):
    t = small_model.differential(sim, "batch_1", "batch_2", n_samples=20).set_index("gene")
    np.testing.assert_allclose(t["lfc"], (np.log2(t["mean_a"] + 0.1) - np.log2(t["mean_b"] + 0.1)), atol=0.15)


def test_reversing_the_batches_flips_the_sign(small_model, sim):
    ab = small_model.differential(sim, "batch_1", "batch_2", n_samples=10, seed=3).set_index("gene")["lfc"]
    ba = small_model.differential(sim, "batch_2", "batch_1", n_samples=10, seed=3).set_index("gene")["lfc"]
    np.testing.assert_allclose(ab, -ba.reindex(ab.index), atol=1e-5)


def test_same_seed_same_table_and_against_all_batches(small_model, sim):
    a = small_model.differential(sim, "batch_3", n_samples=10, seed=1)
    b = small_model.differential(sim, "batch_3", n_samples=10, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["batch_b"] is None


def test_groupby_gives_one_block_per_group(small_model, sim):
    t = small_model.differential(sim, "batch_1", "batch_2", groupby="cell_type", n_samples=5)
    assert list(t.columns[:2]) == ["group", "gene"]
    sizes = sim.obs["cell_type"].value_counts()
    assert set(t["group"]) == set(sizes.index.astype(str))
    for g, block in t.groupby("group"):
        assert len(block) == len(small_model.genes)
        assert (block["n_cells"] == sizes[g]).all()
        assert block["lfc"].is_monotonic_decreasing


def test_max_cells_subsamples_each_group_and_keeps_small_ones_whole(small_model, sim):
    """A large group is cut to max_cells, a smaller one is decoded whole (a subsample over all cells
    could leave a group with no cells, reported as lfc 0 with an interval [0, 0])."""
    sizes = sim.obs["cell_type"].value_counts()
    cap = int(sizes.min()) + 5
    assert sizes.max() > cap
    t = small_model.differential(sim, "batch_1", groupby="cell_type", n_samples=3, max_cells=cap)
    n = t.groupby("group")["n_cells"].first()
    assert (n == np.minimum(sizes.reindex(n.index.astype(str)).to_numpy(), cap)).all()
    assert n.min() == sizes.min()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_a="batch_1", batch_b="batch_1"), "same batch"),
        (dict(batch_a="no_such_batch"), "no_such_batch"),
        (dict(batch_a="batch_1", groupby="no_such_column"), "no_such_column"),
        (dict(batch_a="batch_1", n_samples=1), "n_samples must be a whole number >= 2, got 1"),
        (dict(batch_a="batch_1", n_samples=2.5), "n_samples must be a whole number >= 2"),
        (dict(batch_a="batch_1", credible=1.5), "between 0 and 1"),
        (dict(batch_a="batch_1", delta=-1), "delta.*at least 0"),
        (dict(batch_a="batch_1", max_cells=0), "max_cells must be a whole number >= 1 \\(or None: every cell of each group\\)"),
        (dict(batch_a="batch_1", seed=-1), "seed must be a whole number >= 0, got -1"),
        (dict(batch_a="batch_1", seed=1.5), "seed must be a whole number >= 0"),
        (dict(), "batch_a"),
    ],
)
def test_bad_requests_are_clear_errors(small_model, sim, kwargs, match):
    with pytest.raises(amedl.AMEDLError, match=match):
        small_model.differential(sim, **kwargs)


def test_a_network_without_batch_input_has_no_differential(small_model, sim):
    with pytest.raises(ValueError, match="no batch input"):
        small_model.differential(sim, "batch_1", kind="ae")
