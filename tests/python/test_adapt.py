"""Unseen batches: the batch-membership predictor and adapt() (query mapping)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import amedl

TRAINING_BATCHES = ["batch_1", "batch_2", "batch_4"]
SMALL = dict(n_top_genes=200, hidden=(64, 32), n_latent=8, adversary_hidden=(64, 32), threads=1)


@pytest.fixture(scope="module")
def split():
    """Four simulated batches; batch_3 is the query, never seen in training."""
    a = amedl.datasets.simulate(n_cells=800, n_genes=300, n_batches=4, n_cell_types=4, seed=3)
    is_query = (a.obs["batch"] == "batch_3").to_numpy()
    return a[~is_query].copy(), a[is_query].copy()


@pytest.fixture(scope="module")
def reference(split):
    train, _ = split
    return amedl.AMEDL(train, "batch", **SMALL).fit(seed=0, max_epochs=15, progress=False)


def _error(model, query, kind="fe"):
    """Mean squared error of the reconstruction against the query's log1p CP10k."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = model.reconstruct(query, kind=kind)
    return float(((r - model.prep.transform(query).toarray()) ** 2).mean())


def test_membership_predictor_learns_the_training_batches(reference):
    for kind in ("fe", "re"):
        assert reference.history[kind]["val_membership_acc"].iloc[-1] > 0.9
    assert reference.unseen_batches == "predict"


def test_adapt_learns_new_batches_and_freezes_the_rest(reference, split):
    train, query = split
    before_latent = {k: reference.latent(train, kind=k) for k in ("fe", "re")}
    before_known = reference.reconstruct(train, batch="batch_1")
    reference.unseen_batches = "zero"
    try:
        errors = {"zero": {k: _error(reference, query, k) for k in ("fe", "re")}}
    finally:
        reference.unseen_batches = "predict"
    m = copy.deepcopy(reference).adapt(query, seed=0)
    assert m.batches == [*reference.batches, "batch_3"] and m.adapted_batches == ["batch_3"]
    assert reference.batches == TRAINING_BATCHES  # the original model is untouched
    errors["adapted"] = {k: _error(m, query, k) for k in ("fe", "re")}
    for k in ("fe", "re"):
        assert errors["adapted"][k] < 0.8 * errors["zero"][k], errors
        # shared weights and the learned batches' effects did not move
        assert np.array_equal(m.latent(train, kind=k), before_latent[k])
    assert np.array_equal(m.reconstruct(train, batch="batch_1"), before_known)
    # the new batch is an ordinary batch now: no warning, counterfactuals and differential work
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        m.latent(query, kind="re")
    cf = m.reconstruct(train[:20], batch="batch_3")
    assert cf.shape == (20, len(m.genes)) and (cf >= 0).all()
    d = m.differential(query, "batch_3", n_samples=5)
    assert set(d["gene"]) == set(m.genes)
    # against the average: the training batches' (was: the adapted batches too, so adapting moved every result)
    # (the same posterior, other Monte Carlo draws: the draws cover every batch the model has)
    before, after = (x.differential(train, "batch_1", n_samples=20).set_index("gene") for x in (reference, m))
    # (measured: largest change 0.04 log2, no gene credible either way; averaging batch_3 in gave 2.9 and 175 genes)
    assert (after["lfc"] - before.loc[after.index, "lfc"]).abs().max() < 0.2
    assert abs(int(after["credible"].sum()) - int(before["credible"].sum())) <= 5
    assert after.attrs["averaged_batches"] == TRAINING_BATCHES


def test_adapt_is_reproducible_and_saved(reference, split, tmp_path):
    _, query = split

    def adapted():
        return copy.deepcopy(reference).adapt(query, seed=4, steps=50)

    a, b = adapted(), adapted()
    assert np.array_equal(a.reconstruct(query), b.reconstruct(query))
    a.save(tmp_path / "m")
    loaded = amedl.AMEDL.load(tmp_path / "m")
    assert loaded.adapted_batches == ["batch_3"] and loaded.adapted["batch_3"]["n_cells"] == query.n_obs
    assert np.array_equal(loaded.reconstruct(query), a.reconstruct(query))
    assert np.array_equal(loaded.latent(query, kind="re"), a.latent(query, kind="re"))


def test_adapt_errors(reference, split, sim):
    train, query = split
    with pytest.raises(amedl.AMEDLInputError, match="already known"):
        reference.adapt(train)
    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(amedl.AMEDLInputError, match="no 'batch' column"):
        reference.adapt(no_batch)
    with pytest.raises(amedl.AMEDLConfigError, match="steps"):
        reference.adapt(query, steps=0)
    assert reference.batches == TRAINING_BATCHES
    # a known batch written another way is an unseen batch to the model, but the warning says what it looks like
    respelt = train[:30].copy()
    respelt.obs["batch"] = "Batch_1 "
    with pytest.warns(UserWarning, match="not seen in training.*'Batch_1 ' looks like the model's 'batch_1'"):
        reference.latent(respelt, kind="re")
    ae_only = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=0, max_epochs=2, progress=False, kinds=["ae"])
    with pytest.raises(ValueError, match="no network of this model has random effects"):
        ae_only.adapt(query.copy())


def test_without_predictor_unseen_batches_get_zero_effects(split):
    train, query = split
    m = amedl.AMEDL(train, "batch", membership_hidden=None, **SMALL).fit(seed=0, max_epochs=2, progress=False, kinds=["re"])
    assert m.unseen_batches == "zero"
    with pytest.raises(ValueError, match="no batch-membership predictor"):
        m.unseen_batches = "predict"
    with pytest.warns(UserWarning, match="set to zero"):
        m.latent(query, kind="re")
