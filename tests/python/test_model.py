"""The AMEDL model on simulated data: reproducibility, save/load, new cells, counterfactuals."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import amedl

SMALL = dict(n_top_genes=200, hidden=(64, 32), n_latent=8, adversary_hidden=(64, 32))


def _assert_same_adata(a, b):
    assert a.shape == b.shape
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert set(a.obsm) == set(b.obsm) and set(a.layers) == set(b.layers)
    assert a.uns.keys() == b.uns.keys()


def test_fit_does_not_modify_input(sim):
    before = sim.copy()
    m = amedl.AMEDL(sim, "batch", **SMALL)
    m.fit(seed=0, max_epochs=2, progress=False)
    m.latent(sim, kind="re")
    m.reconstruct(sim, kind="re", batch="batch_2")
    _assert_same_adata(sim, before)


def test_latent_shapes_and_history(small_model, sim):
    for kind in ("fe", "re", "ae"):
        z = small_model.latent(kind=kind)
        assert z.shape == (sim.n_obs, 8) and z.dtype == np.float32
        assert np.isfinite(z).all()
        h = small_model.history[kind]
        assert len(h) == small_model.train_info[kind]["epochs_run"] <= 8
        assert "val_monitor" in h and "train_recon" in h
    assert {"val_adv_acc", "val_adv_ce"} <= set(small_model.history["fe"].columns)
    assert {"val_cls_acc", "train_kl"} <= set(small_model.history["re"].columns)


def test_training_reduces_reconstruction_error(small_model):
    for kind in ("fe", "re", "ae"):
        h = small_model.history[kind]
        assert h["val_recon"].min() < h["val_recon"].iloc[0]


def test_same_seed_same_latents_different_seed_differs(sim):
    def run(seed):
        m = amedl.AMEDL(sim, "batch", **SMALL)
        m.fit(seed=seed, max_epochs=3, progress=False)
        return m.latent(kind="fe"), m.latent(kind="re")

    fe0, re0 = run(0)
    fe0b, re0b = run(0)
    fe1, _ = run(1)
    assert np.array_equal(fe0, fe0b) and np.array_equal(re0, re0b)
    assert not np.allclose(fe0, fe1)


def test_batch_size_of_embedding_is_checked(small_model, sim):
    """Was: ZeroDivisionError for latent(batch_size=0)."""
    for bad in (0, -5, 2.5):
        with pytest.raises(amedl.AMEDLConfigError, match="batch_size must be a whole number >= 1"):
            small_model.latent(sim, kind="fe", batch_size=bad)


def test_numpy_integer_seeds_are_seeds(sim):
    """Was: TypeError from Python's random.seed for a seed taken from np.arange, after fit() had accepted it."""
    a = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=np.int64(2), max_epochs=1, progress=False, kinds=("fe",))
    b = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=2, max_epochs=1, progress=False, kinds=("fe",))
    np.testing.assert_array_equal(a.latent(kind="fe"), b.latent(kind="fe"))
    assert amedl.tl.record(a)["seed"] == 2


def test_fitting_one_kind_matches_fitting_both(sim):
    a = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=2, max_epochs=2, progress=False, kinds=["re"])
    b = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=2, max_epochs=2, progress=False, kinds=["fe", "re"])
    assert np.array_equal(a.latent(kind="re"), b.latent(kind="re"))


def test_save_load_identical(small_model, sim, tmp_path):
    path = small_model.save(tmp_path / "model")
    meta = json.loads((path / "amedl.json").read_text())
    assert meta["preprocessing"]["genes"] == small_model.genes
    assert meta["preprocessing"]["batches"] == small_model.batches
    assert meta["config"]["n_latent"] == 8
    m2 = amedl.AMEDL.load(path)
    for kind in ("fe", "re", "ae"):
        assert np.array_equal(m2.latent(sim, kind=kind), small_model.latent(sim, kind=kind))
    assert np.array_equal(m2.reconstruct(sim, batch="batch_1"), small_model.reconstruct(sim, batch="batch_1"))
    with pytest.raises(amedl.AMEDLInputError, match="pass the AnnData"):
        m2.latent(kind="fe")
    assert m2.unseen_batches == "predict"
    for kind, hist in small_model.history.items():  # was: attrs lost, floats off in the last digit
        pd.testing.assert_frame_equal(m2.history[kind], hist, check_exact=True, check_dtype=False)
        assert m2.history[kind].attrs == hist.attrs and set(hist.attrs) == {"best_epoch", "stopped_early"}


def test_unseen_batches_zero_survives_save_and_load(small_model, sim, tmp_path):
    """Was: a saved model set to 'zero' loaded as 'predict' (new batches silently got predicted effects)."""
    new = sim[:30].copy()
    new.obs["batch"] = "donor_new"
    try:
        small_model.unseen_batches = "zero"
        with pytest.warns(UserWarning, match="set to zero"):
            zero = small_model.latent(new, kind="re")
        path = small_model.save(tmp_path / "model_zero")
    finally:
        small_model.unseen_batches = "predict"
    loaded = amedl.AMEDL.load(path)
    assert loaded.unseen_batches == "zero"
    with pytest.warns(UserWarning, match="set to zero"):
        assert np.array_equal(loaded.latent(new, kind="re"), zero)


def test_save_refuses_to_overwrite_and_is_atomic(small_model, tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    # a folder that is not an amedl model is never replaced, even with overwrite=True
    for overwrite in (False, True):
        with pytest.raises(FileExistsError):
            small_model.save(target, overwrite=overwrite)
        assert (target / "keep.txt").read_text() == "user data"
    model = tmp_path / "saved"
    small_model.save(model)
    with pytest.raises(FileExistsError):
        small_model.save(model)
    small_model.save(model, overwrite=True)  # a model folder is replaced when asked
    assert (model / "amedl.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "saved"]  # no temporary folders left


def test_genes_matched_by_name(small_model, sim):
    shuffled = sim[:, np.random.default_rng(0).permutation(sim.n_vars)].copy()
    assert np.allclose(small_model.latent(shuffled, kind="fe"), small_model.latent(kind="fe"), atol=1e-5)
    missing = sim[:, [g for g in sim.var_names if g not in small_model.genes[:3]]].copy()
    with pytest.raises(amedl.AMEDLInputError, match=r"3 of the model's 200 genes are missing"):
        small_model.latent(missing, kind="fe")


def test_cells_cut_down_to_the_model_genes_are_warned_about(small_model, sim):
    """Was: "extra genes are ignored", but every gene counts in a cell's library size, so cells given with
    only the model's genes got other latents, silently."""
    m = amedl.AMEDL(sim, "batch", **{**SMALL, "n_top_genes": 100}).fit(seed=0, max_epochs=1, progress=False,
                                                                       kinds=("fe",))
    assert m.prep.n_genes_fit == sim.n_vars > 2 * len(m.genes)
    with pytest.warns(UserWarning, match=rf"the input has 100 genes, the training input had {sim.n_vars}"):
        z_cut = m.latent(sim[:, m.genes].copy(), kind="fe")
    assert not np.allclose(z_cut, m.latent(sim, kind="fe"), atol=1e-3)  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.latent(sim[:, ::-1].copy(), kind="fe")  # all the genes, in another order: no warning
        small_model.latent(sim[:, small_model.genes].copy(), kind="fe")  # 200 of 300 genes: no warning


def test_new_batch_gets_predicted_or_zero_random_effects(small_model, sim):
    new = sim[:50].copy()
    new.obs["batch"] = "unseen_donor"
    with pytest.warns(UserWarning, match="not seen in training.*batch-membership predictor"):
        z = small_model.latent(new, kind="re")
    assert z.shape == (50, 8) and np.isfinite(z).all()
    small_model.unseen_batches = "zero"
    try:
        with pytest.warns(UserWarning, match="not seen in training.*set to zero"):
            z0 = small_model.latent(new, kind="re")
    finally:
        small_model.unseen_batches = "predict"
    assert not np.allclose(z, z0, atol=1e-4)
    # the FE encoder needs no batch column: without one, a cell keeps the encoder's
    # latent (its batch's intercepts cannot be applied), and a warning says so
    del new.obs["batch"]
    with pytest.warns(UserWarning, match="batch"):
        fe = small_model.latent(new, kind="fe")
    assert np.allclose(fe, small_model.latent(kind="fe", intercepts=False)[:50], atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = small_model.latent(new, kind="fe", intercepts=False)
    assert np.allclose(plain, fe, atol=1e-6)
    with pytest.raises(amedl.AMEDLInputError, match="random effects latent needs each cell's batch.*use kind='fe'"):
        small_model.latent(new, kind="re")
    # the mixed-effects decoder needs a batch: each cell's own, or one for all
    with pytest.raises(amedl.AMEDLInputError, match=r"reconstruct\(\) .* needs each cell's batch.*pass batch=") as err:
        small_model.reconstruct(new)
    assert "kind='fe'" not in str(err.value) and "zero random effects" not in str(err.value)
    assert small_model.reconstruct(new, batch=small_model.batches[0]).shape == (50, len(small_model.genes))


@pytest.mark.parametrize("kind", ["fe", "re"])
def test_counterfactual(small_model, sim, kind):
    own = small_model.reconstruct(kind=kind)
    assert own.shape == (sim.n_obs, len(small_model.genes))
    assert (own >= 0).all()  # valid log1p expression
    in_b1 = (sim.obs["batch"] == "batch_1").to_numpy()
    as_b1 = small_model.reconstruct(batch="batch_1", kind=kind)
    # decoding a cell as its own batch is the ordinary reconstruction
    assert np.allclose(as_b1[in_b1], own[in_b1], atol=1e-5)
    assert not np.allclose(as_b1[~in_b1], own[~in_b1], atol=1e-3)
    with pytest.raises(amedl.errors.AMEDLInputError, match=r"unknown batch 'nope'.*model\.adapt"):
        small_model.reconstruct(batch="nope", kind=kind)


def test_counterfactual_scores_check_what_they_are_asked(small_model, sim):
    from amedl.counterfactual import counterfactual_scores, predicted_change

    with pytest.raises(amedl.AMEDLInputError, match="unknown batch 'batch_9'"):
        counterfactual_scores(small_model, sim, "batch_1", "batch_9", "cell_type")
    with pytest.raises(amedl.AMEDLInputError, match="unknown batch 'batch 1'"):
        predicted_change(small_model, sim, "batch 1", "batch_2")
    with pytest.raises(amedl.AMEDLInputError, match="same batch"):
        counterfactual_scores(small_model, sim, "batch_1", "batch_1", "cell_type")
    with pytest.raises(amedl.AMEDLInputError, match="groupby column 'celltype'"):
        counterfactual_scores(small_model, sim, "batch_1", "batch_2", "celltype")
    with pytest.raises(amedl.AMEDLInputError, match="min_cells"):
        counterfactual_scores(small_model, sim, "batch_1", "batch_2", "cell_type", min_cells=0)
    with pytest.warns(UserWarning, match="no 'cell_type' group has 10000 cells"):
        empty = counterfactual_scores(small_model, sim, "batch_1", "batch_2", "cell_type", min_cells=10_000)
    scores = counterfactual_scores(small_model, sim, "batch_1", "batch_2", "cell_type", min_cells=5)
    assert len(empty) == 0 and list(empty.columns) == list(scores.columns) and len(scores) > 0


def test_counterfactual_scores_read_the_models_layer(sim):
    """The real cells' means come from the same counts as the decoded ones (they were read from X)."""
    from amedl.counterfactual import counterfactual_scores

    a = sim.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X * 0.5  # not counts: reading it is an error
    m = amedl.AMEDL(a, "batch", layer="counts", **SMALL).fit(seed=0, max_epochs=1, progress=False, kinds=["fe"])
    on_layer = counterfactual_scores(m, a, "batch_1", "batch_2", "cell_type", min_cells=5)
    in_x = counterfactual_scores(m, sim, "batch_1", "batch_2", "cell_type", min_cells=5, layer="X")
    assert len(on_layer) > 0
    pd.testing.assert_frame_equal(on_layer, in_x)


def test_new_cells_counts_in_x_for_a_model_fitted_on_a_layer(sim):
    """``layer="X"`` reads ``adata.X`` whatever layer the model was fitted on (``None``: the model's layer)."""
    a = sim.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X * 0.5
    m = amedl.AMEDL(a, "batch", layer="counts", **SMALL).fit(seed=0, max_epochs=1, progress=False, kinds=["fe"])
    new = sim[:50].copy()  # counts in X, no layers
    with pytest.raises(amedl.AMEDLInputError, match="layer 'counts' is not in adata.layers.*layer=\"X\""):
        m.latent(new)
    np.testing.assert_allclose(m.latent(new, layer="X"), m.latent()[:50], atol=1e-6)
    assert amedl.AMEDL(sim, "batch", layer="X", n_top_genes=50).genes == amedl.AMEDL(sim, "batch", n_top_genes=50).genes


def test_genes_renamed_by_seurat_get_the_fix(small_model, sim):
    renamed = sim.copy()
    renamed.var_names = [g.replace("_", "-") for g in sim.var_names]
    with pytest.raises(amedl.AMEDLInputError, match="with '-' for '_', as Seurat renames features") as err:
        small_model.latent(renamed)
    names = {g.replace("_", "-"): g for g in small_model.genes}  # the fix the message gives
    assert "names = {g.replace('_', '-'): g for g in model.genes}" in str(err.value)
    renamed.var_names = [names.get(v, v) for v in renamed.var_names]
    np.testing.assert_allclose(small_model.latent(renamed), small_model.latent(sim), atol=1e-6)


def test_counterfactual_needs_no_batch_column_with_the_fe_decoder(small_model, sim):
    """The FE latent is batch-blind, so "as if from batch b" needs no batch label."""
    new = sim[:40].copy()
    del new.obs["batch"]
    np.testing.assert_allclose(
        small_model.reconstruct(new, batch="batch_2"), small_model.reconstruct(batch="batch_2")[:40], atol=1e-5
    )


def test_batch_blind_decoders_refuse_counterfactuals(small_model, sim):
    with pytest.raises(ValueError, match="no batch input"):
        small_model.reconstruct(batch="batch_1", kind="ae")
    paper = amedl.AMEDL(sim, "batch", preset="paper", **SMALL).fit(seed=0, max_epochs=1, progress=False, kinds=["fe"])
    with pytest.raises(ValueError, match="no batch input"):
        paper.reconstruct(batch="batch_1")
    assert paper.reconstruct().shape == (sim.n_obs, len(paper.genes))


def test_count_likelihood_reconstructs_counts_per_10k(sim):
    """With the negative binomial likelihood the decoder gives expected counts: the
    reconstruction is log1p of counts per 10^4, close to the data on average."""
    m = amedl.AMEDL(sim, "batch", likelihood="nb", **SMALL).fit(seed=0, max_epochs=60, progress=False, kinds=["fe"])
    rec = m.reconstruct()
    real = m.prep.transform(sim).toarray()
    assert rec.shape == real.shape and (rec >= 0).all()
    assert np.corrcoef(rec.mean(0), real.mean(0))[0, 1] > 0.95


@pytest.mark.parametrize("kind", ["fe", "re"])
def test_batch_effects_table(small_model, kind):
    df = small_model.batch_effects("batch_2", kind=kind)
    assert list(df.columns) == ["scale", "shift", "scale_sd", "shift_sd"]
    assert list(df.index) == small_model.genes
    assert (df["scale_sd"] > 0).all()
    with pytest.raises(ValueError, match="no per-batch output effects"):
        small_model.batch_effects("batch_2", kind="ae")


def test_errors_before_fit(sim):
    m = amedl.AMEDL(sim, "batch", **SMALL)
    with pytest.raises(RuntimeError, match="not trained"):
        m.latent(kind="fe")
    with pytest.raises(ValueError, match="unknown kind"):
        m.fit(kinds=["xx"], progress=False)


def test_tl_writes_obsm(sim):
    a = sim.copy()
    m = amedl.tl.amedl(a, "batch", max_epochs=2, progress=False, **SMALL)
    assert a.obsm["X_amedl_fe"].shape == (a.n_obs, 8)
    assert np.array_equal(a.obsm["X_amedl_re"], m.latent(kind="re"))
    assert a.uns["amedl"]["batch_key"] == "batch"
    b, _ = amedl.tl.amedl(sim, "batch", max_epochs=1, progress=False, copy=True, **SMALL)
    assert "X_amedl_fe" in b.obsm and "X_amedl_fe" not in sim.obsm


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device here")
def test_cuda_fit_matches_cpu_quality(sim, tmp_path):
    """On a GPU the matrix lives on the device; the model trains, embeds new cells,
    saves, and loads back onto the CPU with the same latents."""
    m = amedl.AMEDL(sim, "batch", device="cuda", **SMALL)
    assert m.device.type == "cuda"
    m.fit(seed=0, max_epochs=20, progress=False)
    assert m._X_on_device is not None and m._X_on_device.device.type == "cuda"
    z_fe, z_re = m.latent(kind="fe"), m.latent(sim, kind="re")
    assert np.isfinite(z_fe).all() and np.isfinite(z_re).all()
    asw_re = amedl.metrics.silhouette_batch(z_re, sim.obs["batch"])
    asw_fe = amedl.metrics.silhouette_batch(z_fe, sim.obs["batch"])
    assert asw_re > asw_fe
    m.save(tmp_path / "gpu_model")
    cpu = amedl.AMEDL.load(tmp_path / "gpu_model", device="cpu")
    np.testing.assert_allclose(cpu.latent(sim, kind="fe"), z_fe, atol=1e-4)


def test_device_matrix_path_trains_like_the_host_path(sim, monkeypatch):
    """The accelerator data path (the matrix gathered by DeviceCSR), run on the CPU, gives
    the same first-epoch losses and nearly the same latents as the host path."""
    from amedl.data import DeviceCSR

    host = amedl.AMEDL(sim, "batch", **SMALL).fit(seed=0, max_epochs=1, progress=False, kinds=("re",))
    dev = amedl.AMEDL(sim, "batch", **SMALL)
    monkeypatch.setattr(dev, "_matrix_for_device", lambda X: DeviceCSR(X, "cpu"))
    dev.fit(seed=0, max_epochs=1, progress=False, kinds=("re",))
    for col in ("train_recon", "val_recon", "val_cls_ce"):
        assert dev.history["re"][col].iloc[0] == pytest.approx(host.history["re"][col].iloc[0], rel=1e-4)
    np.testing.assert_allclose(dev.latent(sim, kind="re"), host.latent(sim, kind="re"), atol=1e-3)


def test_random_effects_lookup_equals_design_matrix():
    """Batch codes (a row lookup) and the one-hot design matrix give the same effects and
    gradients; code -1 (an unseen batch) gives zero effects."""
    import torch

    from amedl.nn import REAutoencoder

    torch.manual_seed(0)
    re = REAutoencoder(n_genes=30, n_batches=4, hidden=(16, 8), n_latent=4)
    with torch.no_grad():
        for m in re.random_effects():
            m.mean.normal_()
    x = torch.randn(6, 30)
    codes = torch.tensor([0, 3, 1, -1, 2, 3])
    re.eval()
    out_codes = re(x, codes, torch.full_like(codes, 2))
    out_design = re(x, re.one_hot(codes), re.one_hot(torch.full_like(codes, 2)))
    for a, b in zip(out_codes, out_design):
        torch.testing.assert_close(a, b)
    assert torch.all(re.out_beta(torch.tensor([-1])) == 0)
    re.train()
    grads = []
    for batch in (codes, re.one_hot(codes)):
        re.zero_grad()
        torch.manual_seed(1)
        re(x, batch)[0].square().sum().backward()
        grads.append(re.out_gamma.mean.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_decorrelation_penalty_measures_and_reduces_latent_correlation(sim):
    import torch

    from amedl.train import _decorrelation

    g = torch.Generator().manual_seed(0)
    independent = torch.randn(2000, 6, generator=g)
    assert float(_decorrelation(independent)) < 0.01
    shared = torch.randn(2000, 1, generator=g).repeat(1, 6) + 0.01 * torch.randn(2000, 6, generator=g)
    assert float(_decorrelation(shared)) > 0.95

    def off_diagonal(weight):
        m = amedl.AMEDL(sim, "batch", fe_decorrelation_weight=weight, **SMALL)
        m.fit(seed=0, max_epochs=6, kinds=("fe",), progress=False)
        return float(_decorrelation(torch.as_tensor(m.latent(kind="fe"))))

    assert off_diagonal(5.0) < 0.5 * off_diagonal(0.0)


def test_neighbour_loss_compares_same_batch_neighbourhoods(sim):
    import torch

    from amedl.train import _neighbour_loss

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(120, 20, generator=g)
    b = torch.arange(120) % 3
    # only who is near whom counts: a rotated, scaled and shifted copy loses nothing
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    assert float(_neighbour_loss(3.0 * ref @ q + 1.0, ref, b)) < 1e-4
    # pairs across batches do not count: moving one batch away from the others changes nothing
    moved = ref + 10.0 * (b == 0).float()[:, None]
    assert float(_neighbour_loss(moved, ref, b)) < 1e-4
    assert float(_neighbour_loss(torch.randn(120, 20, generator=g), ref, b)) > 0.1
    # a single cell per batch: nothing to compare
    assert float(_neighbour_loss(ref[:3], ref[:3], torch.arange(3))) == 0.0

    def loss_after(weight):
        m = amedl.AMEDL(sim, "batch", fe_neighbour_weight=weight, fe_neighbour_pcs=50, fe_scaled_weight=0.0, **SMALL)
        m.fit(seed=0, max_epochs=6, kinds=("fe",), progress=False)
        center, components = m._reference_pca(np.arange(sim.n_obs), 0)
        x = torch.as_tensor(m.transform())
        z = torch.as_tensor(m.latent(kind="fe"))
        return float(_neighbour_loss(z[:256], ((x - center) @ components)[:256], torch.as_tensor(m._codes[:256])))

    assert loss_after(5.0) < 0.8 * loss_after(0.0)


def test_depth_correlation_counts_depth_within_clusters_and_batches(sim):
    import torch

    from amedl.errors import AMEDLConfigError
    from amedl.train import AdversarialPlan, PlanContext, _depth_correlation

    g = torch.Generator().manual_seed(0)
    centroids = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    cluster = torch.arange(200) % 2
    b = (torch.arange(200) // 2) % 2
    noise = torch.randn(200, generator=g)
    z = centroids[cluster] + 0.1 * torch.randn(200, 2, generator=g)
    group = torch.cdist(z, centroids).argmin(1) * 2 + b  # nearest centroid x batch, as in training
    # depth that differs only between clusters and between batches: not a latent axis, nothing to penalise
    depth = 3.0 * cluster.float() + 1.0 * b.float()
    depth_z = z.clone()
    depth_z[:, 1] = depth_z[:, 1] + 0.5 * noise
    assert float(_depth_correlation(z, depth + 0.0 * noise, group, 4)) < 1e-6
    # depth that one coordinate follows within each cluster: correlation 1 on that coordinate, 0 on the other
    within = depth + noise
    loss = float(_depth_correlation(depth_z, within, group, 4))
    assert 0.45 < loss <= 0.5 + 1e-6
    assert float(_depth_correlation(z, within, group, 4)) < 0.05
    with pytest.raises(AMEDLConfigError, match="^fe_depth_weight=1 reads .* adversary_clusters is None: .* or fe_depth_weight=0$"):
        amedl.AMEDLConfig(fe_depth_weight=1.0, adversary_clusters=None, fe_cluster_weight=0.0)
    with pytest.raises(AMEDLConfigError, match="fe_cluster_weight=0.3 and fe_depth_weight=1 read .* "
                                               "or fe_cluster_weight=0 and fe_depth_weight=0$"):
        amedl.AMEDLConfig(adversary_clusters=None)
    assert amedl.AMEDLConfig().fe_depth_weight == 1.0  # on by default (docs/tuning.md, nineteenth round)
    # the library sizes come with the count likelihood: without it (and in the paper's tied network) the term is off
    for preset, kw in (("default", dict(likelihood="mse", fe_neighbour_weight=0.0)), ("paper", dict(fe_depth_weight=1.0,
                                                                                                    adversary_clusters=4))):
        other = amedl.AMEDL(sim, "batch", preset=preset, **kw, **SMALL)
        assert other.config.fe_depth_weight == 1.0
        ctx = PlanContext.from_codes(other._codes, len(other.genes), len(other.batches))
        assert AdversarialPlan(other._build("fe"), other.config, ctx).depth_weight == 0.0
    assert amedl.make_config("paper").fe_depth_weight == 0.0
    # it trains: a short fit with the term runs and gives a finite latent
    m = amedl.AMEDL(sim, "batch", fe_depth_weight=1.0, **SMALL)
    m.fit(seed=0, max_epochs=2, kinds=("fe",), progress=False)
    assert np.isfinite(m.latent(kind="fe")).all()


def test_neighbour_bandwidth_sets_how_far_neighbourhoods_reach():
    import torch

    from amedl.train import _neighbour_loss

    g = torch.Generator().manual_seed(0)
    offsets = 0.1 * torch.randn(120, 8, generator=g)
    cluster = torch.arange(120) // 10  # 12 tight clusters of 10 cells, one batch
    ref = 10.0 * torch.randn(12, 8, generator=g)[cluster] + offsets
    moved = 10.0 * torch.randn(12, 8, generator=g)[cluster] + offsets  # same clusters, rearranged
    b = torch.zeros(120, dtype=torch.long)
    near, far = float(_neighbour_loss(moved, ref, b, k=5)), float(_neighbour_loss(moved, ref, b, k=30))
    # within a cluster nothing changed; only a bandwidth reaching other clusters sees the rearrangement
    assert near < 0.01 and far > 0.05 and far > 10 * near
    with pytest.raises(amedl.errors.AMEDLConfigError, match="fe_neighbour_k"):
        amedl.AMEDLConfig(fe_neighbour_k=0)


def test_scaled_weight_fits_the_scaled_input_beside_the_counts(sim):
    def scaled_error(weight):
        # the depth term off: it also shapes the latent (with it 0.85 against 0.91 at the default thread count)
        total = 0.0
        for seed in (0, 1, 2):  # one 60-epoch fit's ratio ranges 0.86-0.94 over seeds and thread counts
            m = amedl.AMEDL(sim, "batch", fe_scaled_weight=weight, fe_ema_decay=None, fe_depth_weight=0.0, **SMALL)
            assert m.config.likelihood == "nb"
            m.fit(seed=seed, max_epochs=60, kinds=("fe",), progress=False)
            x = m.transform()  # the scaled model input
            decoded = m.prep.scale_dense(m.reconstruct(kind="fe"))
            total += float(np.mean((decoded - x) ** 2))
        return total

    # summed over three seeds: 2.447 against 2.727 (0.90) with one thread, 2.405 against 2.738 (0.88) with two
    assert scaled_error(5.0) < 0.95 * scaled_error(0.0)
    with pytest.raises(amedl.errors.AMEDLConfigError, match="fe_scaled_weight"):
        amedl.AMEDL(sim, "batch", fe_scaled_weight=-1.0)
    assert amedl.AMEDL(sim, "batch", preset="paper").config.fe_scaled_weight == 0.0
    assert amedl.AMEDL(sim, "batch").config.fe_neighbour_weight > 0  # the default keeps PCA neighbourhoods
    # an MSE reconstruction already is the scaled-input error: the term is not added twice
    from amedl.train import AdversarialPlan, PlanContext
    tied = amedl.AMEDL(sim, "batch", preset="paper", fe_scaled_weight=1.0, **SMALL)
    ctx = PlanContext.from_codes(tied._codes, len(tied.prep.genes), len(tied.prep.batches))
    assert AdversarialPlan(tied._build("fe"), tied.config, ctx).scaled_weight == 0.0


def test_scaled_path_says_which_weights_the_scaled_error_trains(sim):
    import dataclasses

    import torch

    from amedl.data import Minibatch
    from amedl.nn import RandomEffects
    from amedl.train import AdversarialPlan, PlanContext

    m = amedl.AMEDL(sim, "batch", fe_scaled_weight=1.0, **SMALL)
    net = m._build("fe")
    ae = net.autoencoder
    x = torch.as_tensor(m.transform()[:64])
    counts = sim[:64, m.genes].X
    counts = torch.as_tensor(np.asarray(counts.todense() if hasattr(counts, "todense") else counts), dtype=torch.float32)
    mb = Minibatch(x, torch.as_tensor(m._codes[:64]), counts, counts.sum(1))
    random = {id(p) for mod in ae.decoder.modules() if isinstance(mod, RandomEffects) for p in mod.parameters()}

    def trained_by(path):
        config = dataclasses.replace(m.config, fe_scaled_path=path)
        ctx = dataclasses.replace(PlanContext.from_codes(m._codes, len(m.genes), len(m.batches)),
                                  reference=m._reference_pca(np.arange(sim.n_obs), 0))
        plan = AdversarialPlan(net, config, ctx)
        net.zero_grad(set_to_none=True)
        enc = ae.encode(mb.x)
        plan._scaled_loss(ae.decode(enc.z, mb.batch), enc, mb).backward()
        touched = lambda params: any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)
        dec = list(ae.decoder.parameters())
        return (touched(ae.encoder.parameters()), touched([p for p in dec if id(p) not in random]),
                touched([p for p in dec if id(p) in random]))

    assert trained_by("network") == (True, True, True)
    assert trained_by("fixed") == (True, True, False)
    assert trained_by("encoder") == (True, False, False)
    with pytest.raises(amedl.errors.AMEDLConfigError, match="fe_scaled_path"):
        amedl.AMEDL(sim, "batch", fe_scaled_path="decoder")


def test_accuracy_monitor_counts_how_far_the_adversary_beats_chance(sim):
    m = amedl.AMEDL(sim, "batch", fe_monitor="accuracy", **SMALL)
    m.fit(seed=0, max_epochs=3, kinds=("fe",), progress=False)
    h, info, c = m.history["fe"], m.train_info["fe"], m.config
    chance_acc, chance_ce = info["chance_accuracy"], info["chance_cross_entropy"]
    leak = chance_ce * np.clip(h["val_adv_acc"] - chance_acc, 0, None) / (1 - chance_acc)
    np.testing.assert_allclose(h["val_monitor"], c.fe_recon_weight * h["val_recon"] + c.fe_adv_weight * leak, rtol=1e-6)


def test_a_latent_adversary_beside_the_all_layer_one(sim, tmp_path):
    m = amedl.AMEDL(sim, "batch", adversary_input="both", **SMALL)
    net = m._build("fe")
    assert len(net.adversaries) == 2
    assert net.adversary.net[0].in_features == sum(net.autoencoder.layer_sizes)
    assert net.latent_adversary.net[0].in_features == SMALL["n_latent"]
    m.fit(seed=0, max_epochs=3, kinds=("fe",), progress=False)
    h, info, c = m.history["fe"], m.train_info["fe"], m.config
    chance = info["chance_cross_entropy"]
    leak = np.maximum(np.clip(chance - h["val_adv_ce"], 0, None), np.clip(chance - h["val_latent_adv_ce"], 0, None))
    np.testing.assert_allclose(h["val_monitor"], c.fe_recon_weight * h["val_recon"] + c.fe_adv_weight * leak, rtol=1e-6)
    assert {"train_latent_adv_acc", "val_latent_adv_acc"} <= set(h.columns)
    m.save(tmp_path / "both")
    again = amedl.AMEDL.load(tmp_path / "both")
    np.testing.assert_array_equal(again.latent(sim, kind="fe"), m.latent(sim, kind="fe"))
    fe = again.modules["fe"]
    fe.add_batches(2, 1e-3)
    assert [a.net[-1].out_features for a in fe.adversaries] == [fe.n_batches] * 2 == [len(m.batches) + 2] * 2


def test_calibrated_monitor_scores_the_adversary_at_its_best_temperature(sim):
    m = amedl.AMEDL(sim, "batch", fe_monitor="calibrated", adversary_input="both", **SMALL)
    m.fit(seed=0, max_epochs=4, kinds=("fe",), progress=False)
    h, info, c = m.history["fe"], m.train_info["fe"], m.config
    for prefix in ("adv", "latent_adv"):
        # temperature 1 is among those tried, so the calibrated cross-entropy is never above the plain one
        assert (h[f"val_{prefix}_ce_calibrated"] <= h[f"val_{prefix}_ce"] + 1e-6).all()
    assert not any("_ce_t" in col for col in h.columns)
    chance = info["chance_cross_entropy"]
    leak = np.clip(chance - h[["val_adv_ce_calibrated", "val_latent_adv_ce_calibrated"]].min(axis=1), 0, None)
    np.testing.assert_allclose(h["val_monitor"], c.fe_recon_weight * h["val_recon"] + c.fe_adv_weight * leak, rtol=1e-6)



def test_monitor_counts_the_adversaries_it_is_told(sim):
    import dataclasses

    from amedl.train import AdversarialPlan, PlanContext

    m = amedl.AMEDL(sim, "batch", **SMALL)
    ctx = dataclasses.replace(PlanContext.from_codes(m._codes, len(m.genes), len(m.batches)),
                              reference=m._reference_pca(np.arange(sim.n_obs), 0))
    record = {"adv_ce": 0.1, "latent_adv_ce": ctx.chance_ce - 0.2}  # the all-layer adversary leads far more

    def leak(**kw):
        config = dataclasses.replace(m.config, **kw)
        return AdversarialPlan(amedl.AMEDL(sim, "batch", **SMALL, **kw)._build("fe"), config, ctx)._leak(record)

    assert leak(fe_monitor_adversaries="every", adversary_input="both") == pytest.approx(ctx.chance_ce - 0.1)
    assert leak(fe_monitor_adversaries="latent", adversary_input="both") == pytest.approx(0.2)
    assert leak(fe_monitor_adversaries="latent", adversary_input="latent") == pytest.approx(ctx.chance_ce - 0.1)  # its only adversary
    with pytest.raises(ValueError, match="adversary on the latent"):
        leak(fe_monitor_adversaries="latent", adversary_input="all")


def test_cluster_term_is_within_over_total_spread(sim):
    import dataclasses

    import torch

    from amedl.train import AdversarialPlan, PlanContext, _compactness

    g = torch.Generator().manual_seed(0)
    centroids = 5 * torch.randn(5, 4, generator=g)
    z = centroids[torch.arange(50) % 5] + 0.1 * torch.randn(50, 4, generator=g)
    assert float(_compactness(centroids, centroids)) == 0.0
    assert 0 < float(_compactness(z, centroids)) < 0.05
    assert float(_compactness(z, centroids[:1])) > 0.5
    torch.testing.assert_close(_compactness(3 * z, 3 * centroids), _compactness(z, centroids), rtol=1e-3, atol=1e-6)
    m = amedl.AMEDL(sim, "batch", **SMALL)
    ctx = dataclasses.replace(PlanContext.from_codes(m._codes, len(m.genes), len(m.batches)),
                              reference=m._reference_pca(np.arange(sim.n_obs), 0))
    with pytest.raises(amedl.errors.AMEDLConfigError, match="adversary_clusters"):
        dataclasses.replace(m.config, fe_cluster_weight=1.0, adversary_clusters=None)
    AdversarialPlan(m._build("fe"), dataclasses.replace(m.config, fe_cluster_weight=0.0, fe_depth_weight=0.0,
                                                        adversary_clusters=None), ctx)


def test_layer_adversary_scale_weighs_only_the_all_layer_adversary(sim):
    def latent(**kw):
        m = amedl.AMEDL(sim, "batch", threads=1, **SMALL, **kw)
        m.fit(seed=0, max_epochs=2, kinds=("fe",), progress=False)
        return m.latent(sim, kind="fe")

    assert not np.allclose(latent(adversary_input="both", fe_layer_adv_scale=1.0),
                           latent(adversary_input="both", fe_layer_adv_scale=0.0))
    np.testing.assert_array_equal(latent(adversary_input="latent", fe_layer_adv_scale=1.0),
                                  latent(adversary_input="latent", fe_layer_adv_scale=0.0))


def test_adversary_weight_warms_up_from_its_start_value(sim):
    """``fe_adv_weight_start`` moves the fooling weight linearly to ``fe_adv_weight``
    over ``fe_adv_warmup_steps`` minibatch steps; the monitor keeps the final weight."""
    m = amedl.AMEDL(sim, "batch", fe_adv_weight=0.1, fe_adv_weight_start=0.5, fe_adv_warmup_steps=8, **SMALL)
    m.fit(seed=0, max_epochs=6, kinds=("fe",), progress=False)
    h, info, c = m.history["fe"], m.train_info["fe"], m.config
    steps = len(range(0, info["n_train"], min(c.batch_size, info["n_train"])))  # minibatches per epoch
    weights = h["train_adv_weight"].to_numpy()
    assert weights[0] == pytest.approx(0.5)
    assert np.all(np.diff(weights) <= 0) and weights[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(weights[:2], [0.5, 0.1 + 0.4 * max(0.0, 1 - steps / 8)])
    leak = np.clip(info["chance_cross_entropy"] - h["val_adv_ce"], 0, None)
    np.testing.assert_allclose(h["val_monitor"], c.fe_recon_weight * h["val_recon"] + c.fe_adv_weight * leak, rtol=1e-6)
    # without a start value the weight is fe_adv_weight from the first step, and the fit is that of no warm-up
    plain = amedl.AMEDL(sim, "batch", fe_adv_weight=0.1, **SMALL).fit(seed=0, max_epochs=2, kinds=("fe",), progress=False)
    same = amedl.AMEDL(sim, "batch", fe_adv_weight=0.1, fe_adv_weight_start=0.1, **SMALL).fit(
        seed=0, max_epochs=2, kinds=("fe",), progress=False)
    assert (plain.history["fe"]["train_adv_weight"] == 0.1).all()
    np.testing.assert_array_equal(plain.latent(sim, kind="fe"), same.latent(sim, kind="fe"))


def test_adversary_lead_gain_raises_the_weight_while_the_adversary_wins(sim):
    """``fe_adv_lead_gain`` multiplies the fooling weight by ``1 + gain·lead``; the
    lead (the adversary's moving training lead over chance) is recorded per epoch
    and moves the fit; a gain of 0 records none."""
    with pytest.raises(ValueError, match="fe_adv_lead_gain"):
        amedl.AMEDL(sim, "batch", fe_adv_lead_gain=-1.0, **SMALL)
    fit = lambda gain: amedl.AMEDL(sim, "batch", fe_adv_weight=0.1, fe_adv_lead_gain=gain, **SMALL).fit(  # noqa: E731
        seed=0, max_epochs=3, kinds=("fe",), progress=False)
    off, led = fit(0.0), fit(5.0)
    assert amedl.AMEDL(sim, "batch", **SMALL).config.fe_adv_lead_gain == 5.0  # the default (docs/tuning.md, 16th round)
    assert "train_adv_lead" not in off.history["fe"]
    lead = led.history["fe"]["train_adv_lead"].to_numpy()
    assert np.all((lead >= 0) & (lead < 1)) and lead.max() > 0.01, lead
    assert not np.allclose(off.latent(sim, kind="fe"), led.latent(sim, kind="fe"))
    assert (led.history["fe"]["train_adv_weight"] == 0.1).all()  # the schedule's weight, before the lead's factor


def test_encoder_weight_decay_reaches_the_encoder_weight_matrices_only(sim):
    import dataclasses

    from amedl.train import AdversarialPlan, PlanContext

    m = amedl.AMEDL(sim, "batch", fe_encoder_weight_decay=0.5, **SMALL)
    net = m._build("fe")
    ctx = dataclasses.replace(PlanContext.from_codes(m._codes, len(m.genes), len(m.batches)),
                              reference=m._reference_pca(np.arange(sim.n_obs), 0))
    groups = AdversarialPlan(net, m.config, ctx).opt_ae.param_groups
    decayed = [id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    in_groups = [id(p) for g in groups for p in g["params"]]
    encoder_matrices = {id(p) for p in net.autoencoder.encoder.parameters() if p.ndim >= 2}
    assert set(decayed) == encoder_matrices and len(decayed) == len(encoder_matrices) > 0
    assert {g["weight_decay"] for g in groups if g["weight_decay"] > 0} == {0.5}
    assert len(in_groups) == len(set(in_groups)) and set(in_groups) >= {id(p) for p in net.autoencoder.parameters()}

    def encoder_norm(decay: float) -> float:
        model = amedl.AMEDL(sim, "batch", fe_encoder_weight_decay=decay, threads=1, **SMALL)
        model.fit(seed=0, progress=False, kinds=("fe",), max_epochs=20)
        encoder = model.modules["fe"].autoencoder.encoder
        return sum(float(p.detach().square().sum()) for p in encoder.parameters() if p.ndim >= 2)

    assert encoder_norm(0.5) < 0.9 * encoder_norm(0.0)
    with pytest.raises(amedl.errors.AMEDLConfigError, match="fe_encoder_weight_decay"):
        amedl.AMEDL(sim, "batch", fe_encoder_weight_decay=-0.1)


def test_training_summary_says_how_each_network_ended(small_model):
    """One line per network, as `amedl fit` prints it (from memory and from disk alike)."""
    lines = small_model.training_summary()
    assert [line.split(":")[0] for line in lines] == [k.upper() for k in small_model.train_info]
    for line, info in zip(lines, small_model.train_info.values()):
        assert re.fullmatch(rf"[A-Z]+: {info['epochs_run']} epochs \(best {info['best_epoch']}, (early stop|budget)\) "
                            r"in [0-9.]+s", line)
