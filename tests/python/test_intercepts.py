"""The batches' random intercepts in the FE latent (amedl.intercepts and their use in AMEDL)."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import amedl
from amedl.config import make_config
from amedl.errors import AMEDLModelError
from amedl.intercepts import LatentIntercepts

SMALL = dict(n_top_genes=200, hidden=(64, 32), n_latent=8, adversary_hidden=(64, 32), threads=1)


def _shifted_clusters(seed=0, n=900, shift=(0.0, 1.0, -1.0)):
    """Three well-separated clusters in 4 dimensions; batch b's cells are moved by
    ``shift[b]`` along the first axis, in every cluster alike."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    codes = rng.integers(0, 3, n)
    centres = np.array([[0, 0, 0, 0], [20, 0, 0, 0], [0, 20, 0, 0]], dtype=float)
    z = centres[label] + rng.normal(size=(n, 4))
    z[:, 0] += np.asarray(shift)[codes]
    return z, codes, label


def _batch_gap(z, codes, label):
    """Largest distance between two batches' means within a cluster."""
    gaps = []
    for lab in np.unique(label):
        means = [z[(label == lab) & (codes == b)].mean(0) for b in np.unique(codes)]
        gaps += [np.linalg.norm(a - b) for a in means for b in means]
    return max(gaps)


def test_intercepts_remove_a_batch_shift_and_keep_the_clusters():
    z, codes, label = _shifted_clusters()
    fitted = LatentIntercepts.fit(z, codes, 3, n_clusters=3, shrinkage=1.0, rounds=3, seed=0)
    corrected = fitted.apply(z, codes)
    assert _batch_gap(z, codes, label) > 1.8
    assert _batch_gap(corrected, codes, label) < 0.3
    # the clusters stay where they were: each cell is still nearest its own cluster's mean
    means = np.stack([corrected[label == k].mean(0) for k in range(3)])
    nearest = ((corrected[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == label).mean() == 1.0


def test_shrinkage_keeps_small_batches_near_zero():
    # hard clusters: a batch's intercept is n / (n + shrinkage) of its mean offset
    z, codes, _ = _shifted_clusters(n=300)
    one_cell = np.flatnonzero(codes == 2)[:1]
    keep = np.concatenate([np.flatnonzero(codes != 2), one_cell])
    z, codes = z[keep], codes[keep]
    big = LatentIntercepts.fit(z, codes, 3, n_clusters=3, shrinkage=100.0, rounds=1, seed=0)
    none = LatentIntercepts.fit(z, codes, 3, n_clusters=3, shrinkage=0.0, rounds=1, seed=0)
    moved_big = np.abs(big.apply(z, codes) - z)[-1].max()
    moved_none = np.abs(none.apply(z, codes) - z)[-1].max()
    assert moved_none > 0.5 and moved_big < moved_none / 50


def test_apply_maps_each_cell_on_its_own_and_leaves_unknown_batches():
    z, codes, _ = _shifted_clusters()
    fitted = LatentIntercepts.fit(z, codes, 3, n_clusters=5, seed=0)
    all_cells = fitted.apply(z, codes)
    assert np.allclose(fitted.apply(z[:7], codes[:7]), all_cells[:7])
    unknown = codes.copy()
    unknown[:10] = -1
    unknown[10:20] = 3  # not a batch of these intercepts
    out = fitted.apply(z, unknown)
    assert np.array_equal(out[:20], z[:20]) and np.allclose(out[20:], all_cells[20:])
    assert fitted.apply(z.astype(np.float32), codes).dtype == np.float32


@pytest.mark.parametrize("offsets", ["cluster", "neighbours"])
def test_fit_is_reproducible_and_new_batches_get_their_own_intercepts(offsets):
    z, codes, label = _shifted_clusters()
    a = LatentIntercepts.fit(z, codes, 3, n_clusters=3, seed=4, offsets=offsets)
    b = LatentIntercepts.fit(z, codes, 3, n_clusters=3, seed=4, offsets=offsets)
    assert np.array_equal(a.apply(z, codes), b.apply(z, codes))
    # a fourth batch, moved further, added from its own cells
    rng = np.random.default_rng(9)
    lab_new = rng.integers(0, 3, 200)
    z_new = np.array([[0, 0, 0, 0], [20, 0, 0, 0], [0, 20, 0, 0]], dtype=float)[lab_new] + rng.normal(size=(200, 4))
    z_new[:, 0] += 3.0
    grown = a.add_batches(z_new, np.zeros(200, dtype=int), 1)
    assert grown.n_batches == 4 and np.array_equal(grown.offsets[:, :, :3], a.offsets)
    fixed = grown.apply(z_new, np.full(200, 3))
    ref = a.apply(z, codes)
    for k in range(3):
        before = np.linalg.norm(z_new[lab_new == k].mean(0) - ref[label == k].mean(0))
        after = np.linalg.norm(fixed[lab_new == k].mean(0) - ref[label == k].mean(0))
        # neighbour offsets measure a shift of three standard deviations only in part (their
        # neighbours are chosen by closeness; see test_neighbour_offsets_do_not_read_...)
        assert after < (0.4 if offsets == "cluster" else 0.6 * before), (before, after)


@pytest.fixture(scope="module")
def fitted(sim):
    return amedl.AMEDL(sim, "batch", fe_intercept_clusters=6, **SMALL).fit(seed=0, max_epochs=6, progress=False,
                                                                           kinds=("fe",))


def test_model_latent_has_the_intercepts_removed(fitted, sim, tmp_path):
    assert fitted.intercepts is not None and fitted.intercepts.n_batches == 3
    z, raw = fitted.latent(sim), fitted.latent(sim, intercepts=False)
    assert z.shape == raw.shape and z.dtype == np.float32 and not np.allclose(z, raw)
    assert np.allclose(z, fitted.intercepts.apply(raw, fitted.prep.encode_batches(sim.obs["batch"].astype(str))))
    # saved with the model, to the last digit
    fitted.save(tmp_path / "m")
    loaded = amedl.AMEDL.load(tmp_path / "m")
    assert np.array_equal(loaded.latent(sim), z)
    # reconstructions decode the encoder's latent, not the corrected one
    assert np.array_equal(loaded.reconstruct(sim), fitted.reconstruct(sim))


def test_cells_without_a_batch_keep_the_encoders_latent(fitted, sim):
    no_batch = sim.copy()
    del no_batch.obs["batch"]
    with pytest.warns(UserWarning, match="no 'batch' column"):
        z = fitted.latent(no_batch)
    assert np.array_equal(z, fitted.latent(sim, intercepts=False))


def test_on_by_default_off_by_setting_and_in_the_paper_preset(sim):
    assert make_config().fe_intercept_clusters == 10 and make_config().fe_intercept_offsets == "neighbours"
    off = amedl.AMEDL(sim, "batch", fe_intercept_clusters=None, **SMALL).fit(seed=0, max_epochs=2, progress=False,
                                                                             kinds=("fe",))
    assert off.config.fe_intercept_clusters is None and off.intercepts is None
    assert np.array_equal(off.latent(sim), off.latent(sim, intercepts=False))
    on = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=0, max_epochs=2, progress=False, kinds=("fe",))
    assert on.intercepts.centres.shape == (3, 10, 8)
    # the intercepts come after training: the encoder is the same
    assert np.array_equal(on.latent(sim, intercepts=False), off.latent(sim))
    assert make_config("paper").fe_intercept_clusters is None


def test_a_saved_model_without_its_intercepts_is_refused(fitted, tmp_path):
    import torch

    from amedl import modelfile

    fitted.save(tmp_path / "m")
    weights = tmp_path / "m" / modelfile.WEIGHTS_FILE
    state = torch.load(weights, weights_only=True)
    del state["fe_intercepts"]
    torch.save(state, weights)
    meta = modelfile.read_meta(tmp_path / "m")
    modelfile.write_meta(tmp_path / "m", {k: v for k, v in meta.items() if k not in ("checksums", "format")})
    with pytest.raises(AMEDLModelError, match="no latent intercepts"):
        amedl.AMEDL.load(tmp_path / "m")
    # reference cells that do not fit their intercepts (neighbour offsets, the default kind)
    fitted.save(tmp_path / "r")
    weights = tmp_path / "r" / modelfile.WEIGHTS_FILE
    state = torch.load(weights, weights_only=True)
    assert "reference" in state["fe_intercepts"]
    state["fe_intercepts"]["reference_codes"] = state["fe_intercepts"]["reference_codes"][:-1]
    torch.save(state, weights)
    meta = modelfile.read_meta(tmp_path / "r")
    modelfile.write_meta(tmp_path / "r", {k: v for k, v in meta.items() if k not in ("checksums", "format")})
    with pytest.raises(AMEDLModelError, match="reference cells do not match"):
        amedl.AMEDL.load(tmp_path / "r")


def test_adapt_estimates_the_new_batches_intercepts(sim):
    train = sim[sim.obs["batch"] != "batch_3"].copy()
    query = sim[sim.obs["batch"] == "batch_3"].copy()
    ref = amedl.AMEDL(train, "batch", fe_intercept_clusters=6, **SMALL).fit(seed=0, max_epochs=6, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        before = ref.latent(query)
    assert np.array_equal(before, ref.latent(query, intercepts=False))  # unknown batch: the encoder's latent
    m = copy.deepcopy(ref).adapt(query, seed=0, steps=20)
    assert m.intercepts.n_batches == 3
    assert np.array_equal(m.intercepts.offsets[:, :, :2], ref.intercepts.offsets)
    assert not np.allclose(m.latent(query), before)
    assert np.array_equal(m.latent(train), ref.latent(train))


def test_apply_in_chunks_is_the_same_map(monkeypatch):
    import amedl.intercepts as mod

    z, codes, _ = _shifted_clusters()
    fitted = LatentIntercepts.fit(z, codes, 3, n_clusters=4, seed=0)
    whole = fitted.apply(z, codes)
    monkeypatch.setattr(mod, "CHUNK", 100)
    assert np.array_equal(fitted.apply(z, codes), whole)


def test_neighbour_offsets_do_not_read_composition_as_a_batch():
    # two cell types in one cluster (k-means with one cluster), batch 0 mostly type A, batch 1 mostly
    # type B, and no batch effect at all: offsets from the cluster mean move the batches apart,
    # offsets from the other batch's nearest cells leave them
    rng = np.random.default_rng(2)
    codes = np.repeat([0, 1], 400)
    label = np.where(rng.random(800) < np.where(codes == 0, 0.8, 0.2), 0, 1)
    z = np.array([[0.0, 0.0], [3.0, 0.0]])[label] + rng.normal(scale=0.5, size=(800, 2))
    gap = {}
    for how in ("cluster", "neighbours"):
        fitted = LatentIntercepts.fit(z, codes, 2, n_clusters=1, rounds=1, offsets=how)
        gap[how] = _batch_gap(fitted.apply(z, codes), codes, label)
    assert _batch_gap(z, codes, label) < 0.3
    assert gap["cluster"] > 1.0 and gap["neighbours"] < 0.3, gap
    # a real batch shift is removed in part: the nearest cells of the other batch are chosen by their
    # closeness, so each round measures less than the whole shift (0.95 -> 0.41 in three rounds)
    shifted = z + np.where(codes == 1, 1.0, 0.0)[:, None] * np.array([[0.0, 1.0]])
    fitted = LatentIntercepts.fit(shifted, codes, 2, n_clusters=2, rounds=3, offsets="neighbours")
    before, after = _batch_gap(shifted, codes, label), _batch_gap(fitted.apply(shifted, codes), codes, label)
    assert before > 0.9 and after < 0.5 * before
    with pytest.raises(ValueError, match="offsets must be"):
        LatentIntercepts.fit(z, codes, 2, offsets="median")


def test_a_new_batch_is_measured_from_its_neighbours_too():
    # the reference: two batches, both half type A, half type B, in one cluster; a new batch of
    # type A alone with no batch effect is no offset from its nearest reference cells, though it is
    # one from the cluster's pooled mean
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [3.0, 0.0]])
    codes = np.repeat([0, 1], 400)
    z = centres[np.tile([0, 1], 400)] + rng.normal(scale=0.5, size=(800, 2))
    z_new = centres[np.zeros(300, dtype=int)] + rng.normal(scale=0.5, size=(300, 2))
    moved = {}
    for how in ("cluster", "neighbours"):
        grown = LatentIntercepts.fit(z, codes, 2, n_clusters=1, rounds=1, offsets=how).add_batches(
            z_new, np.zeros(300, dtype=int), 1)
        moved[how] = np.linalg.norm(grown.apply(z_new, np.full(300, 2)).mean(0) - z_new.mean(0))
    assert moved["cluster"] > 1.0 and moved["neighbours"] < 0.2, moved
    # the reference survives a save and load (the model's weights.pt holds state())
    fitted = LatentIntercepts.fit(z, codes, 2, n_clusters=1, rounds=1, offsets="neighbours")
    again = LatentIntercepts.from_state(fitted.state())
    assert np.array_equal(again.reference, fitted.reference) and np.array_equal(again.reference_codes, codes)
    assert np.array_equal(again.add_batches(z_new, np.zeros(300, dtype=int), 1).offsets,
                          fitted.add_batches(z_new, np.zeros(300, dtype=int), 1).offsets)


def test_intercepts_from_a_sample_encode_only_the_sampled_cells(sim, monkeypatch):
    """Above the cap the intercepts are estimated on a seeded sample; only those cells are encoded
    (every cell was), with the same result as encoding every cell and taking the sample's rows."""
    import amedl.model

    monkeypatch.setattr(amedl.model, "INTERCEPT_CELLS", 250)
    m = amedl.AMEDL(sim, "batch", fe_intercept_clusters=6, **SMALL).fit(seed=0, max_epochs=2, progress=False,
                                                                         kinds=["fe"])
    z = m._run((m._X, m._codes, m._library), m.modules["fe"].latent, 4096)
    rows = np.sort(np.random.default_rng([0, 23]).choice(sim.n_obs, size=250, replace=False))
    c = m.config
    ref = LatentIntercepts.fit(z[rows], m._codes[rows], len(m.batches), n_clusters=c.fe_intercept_clusters,
                               shrinkage=c.fe_intercept_shrinkage, rounds=c.fe_intercept_rounds, seed=0,
                               offsets=c.fe_intercept_offsets)
    np.testing.assert_allclose(m.intercepts.apply(z, m._codes), ref.apply(z, m._codes), rtol=0, atol=1e-5)
