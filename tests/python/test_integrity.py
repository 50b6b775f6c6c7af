"""Saved models carry their integrity; inputs that would give wrong results are refused (issue 16)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import amedl
from amedl import io, modelfile
from amedl.errors import AMEDLInputError, AMEDLModelError

SETTINGS = dict(n_top_genes=50, hidden=(16,), n_latent=3, adversary_hidden=(16,))


@pytest.fixture(scope="module")
def tiny():
    return amedl.datasets.simulate(n_cells=160, n_genes=90, n_batches=2, n_cell_types=2, seed=7)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    m = amedl.AMEDL(tiny, "batch", **SETTINGS).fit(seed=0, max_epochs=1, progress=False)
    return m, m.save(tmp_path_factory.mktemp("saved") / "model")


def copy(saved, tmp_path) -> Path:
    """A copy of the saved model folder to edit."""
    return Path(shutil.copytree(saved[1], tmp_path / "model"))


def edit(folder, change):
    meta = json.loads((folder / "amedl.json").read_text())
    change(meta)
    (folder / "amedl.json").write_text(json.dumps(meta))


def test_a_saved_model_records_format_and_checksums(saved):
    meta = json.loads((saved[1] / "amedl.json").read_text())
    assert meta["format"] == modelfile.FORMAT == 2
    assert meta["checksums"]["weights.pt"] == modelfile.sha256(saved[1] / "weights.pt")
    assert (saved[1] / modelfile.MARKER).read_text().startswith("amedl model folder (format 2)")


def test_a_model_saved_before_a_setting_existed_loads_as_it_was_trained(tiny, tmp_path):
    m = amedl.AMEDL(tiny, "batch", preset="paper", **SETTINGS).fit(seed=0, max_epochs=1, progress=False)
    folder = m.save(tmp_path / "old")
    z = m.latent(tiny, kind="fe")

    def as_written_before(meta):  # an amedl without the cluster term: no key, and no clusters
        for key in modelfile.SETTINGS_ADDED_LATER:
            del meta["config"][key]
        assert meta["config"]["adversary_clusters"] is None
        meta["checksums"]["content"] = modelfile._content_checksum(meta)

    edit(folder, as_written_before)
    loaded = amedl.AMEDL.load(folder)
    assert loaded.config.fe_cluster_weight == 0.0 and loaded.config.fe_monitor_adversaries == "every"
    np.testing.assert_allclose(loaded.latent(tiny, kind="fe"), z, rtol=1e-5, atol=1e-6)


def _swap_genes(m):
    g = m["preprocessing"]["genes"]
    g[0], g[1] = g[1], g[0]


@pytest.mark.parametrize(
    "change, says",
    [
        (_swap_genes, "was changed after it was saved"),  # was: loaded, wrong latents
        (lambda m: m["preprocessing"]["scale"].__setitem__(2, 0.0), r"preprocessing\.scale must be finite and > 0"),
        (lambda m: m["preprocessing"]["scale"].__setitem__(2, float("nan")), r"preprocessing\.scale must be finite and > 0"),
        (lambda m: m["preprocessing"].__setitem__("target_sum", -1e4), r"target_sum must be a finite number > 0"),
        (lambda m: m["preprocessing"]["genes"].__setitem__(1, m["preprocessing"]["genes"][0]), "more than once"),
        (lambda m: m["preprocessing"]["center"].pop(), r"preprocessing\.center must have one number per gene"),
        (lambda m: m.__setitem__("kinds", ["fe", "xx"]), r"unknown network kind\(s\) \['xx'\]"),
        (lambda m: m["config"].__setitem__("n_latent", 0), "config: setting n_latent must be a whole number >= 1"),
        (lambda m: m.__setitem__("format", 7), r"model format 7; this amedl \(0\.1\.0\) reads model formats up to 2"),
        (lambda m: m.pop("preprocessing"), "has no 'preprocessing' entry"),
        (lambda m: m.pop("checksums"), "has no checksums"),
    ],
)
def test_an_edited_or_damaged_amedl_json_is_refused_naming_the_file(saved, tmp_path, change, says):
    folder = copy(saved, tmp_path)
    edit(folder, change)
    with pytest.raises(AMEDLModelError, match=says) as err:
        amedl.AMEDL.load(folder)
    assert str(err.value).startswith(str(folder / "amedl.json") + ":")
    assert len(str(err.value)) < 400


@pytest.mark.parametrize("text, says", [("", "is empty"), ('{"config": ', "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_an_empty_or_malformed_amedl_json_names_the_file(saved, tmp_path, text, says):
    """Was: KeyError / JSONDecodeError without the file's name."""
    folder = copy(saved, tmp_path)
    (folder / "amedl.json").write_text(text)
    with pytest.raises(AMEDLModelError, match=f"amedl.json: {says}"):
        amedl.AMEDL.load(folder)


def _rewrite_weights(folder, change):
    state = torch.load(folder / "weights.pt", weights_only=True)
    change(state)
    torch.save(state, folder / "weights.pt")
    edit(folder, lambda m: m["checksums"].__setitem__("weights.pt", modelfile.sha256(folder / "weights.pt")))


def test_nan_weights_are_refused(saved, tmp_path):
    """Was: loaded, NaN latents. (The checksum is updated, as by someone who saved NaN weights.)"""
    folder = copy(saved, tmp_path)
    _rewrite_weights(folder, lambda s: next(iter(s["re"].values())).fill_(float("nan")))
    with pytest.raises(AMEDLModelError, match=r"weights\.pt: the random effects weights hold NaN or infinite values"):
        amedl.AMEDL.load(folder)


def test_weights_of_the_wrong_shape_are_refused(saved, tmp_path):
    folder = copy(saved, tmp_path)

    def grow(state):
        name, t = next((n, t) for n, t in state["fe"].items() if t.ndim == 2)
        state["fe"][name] = torch.zeros(t.shape[0] + 1, t.shape[1])

    _rewrite_weights(folder, grow)
    with pytest.raises(AMEDLModelError, match=r"weights do not fit the networks that amedl\.json describes.*format 2"):
        amedl.AMEDL.load(folder)


def test_damaged_weights_fail_their_checksum(saved, tmp_path):
    folder = copy(saved, tmp_path)
    data = (folder / "weights.pt").read_bytes()
    (folder / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(AMEDLModelError, match=r"weights\.pt: does not match the checksum"):
        amedl.AMEDL.load(folder)
    (folder / "weights.pt").unlink()
    with pytest.raises(AMEDLModelError, match=r"weights\.pt: is missing"):
        amedl.AMEDL.load(folder)


def test_a_format_1_model_still_loads(saved, tiny, tmp_path):
    """Models saved before the integrity records (no marker, no format, no checksums) load and embed the same."""
    folder = copy(saved, tmp_path)
    (folder / modelfile.MARKER).unlink()
    edit(folder, lambda m: [m.pop("format"), m.pop("checksums")])
    assert modelfile.folder_kind(folder) == "model"  # still recognised: it may be replaced with overwrite
    old = amedl.AMEDL.load(folder)
    assert np.array_equal(old.latent(tiny, kind="fe"), saved[0].latent(tiny, kind="fe"))


def test_a_loaded_model_gives_the_same_latents(saved, tiny):
    m = amedl.AMEDL.load(saved[1], device="cpu", threads=None)
    assert np.array_equal(m.latent(tiny, kind="re"), saved[0].latent(tiny, kind="re"))


# ------------------------------------------------------------------ inputs


def test_a_backed_anndata_is_read_from_disk(saved, tiny, tmp_path):
    """Was: IndexError in AMEDL() and latent(), then a refusal; now read in blocks from disk (issue 15)."""
    path = tmp_path / "cells.h5ad"
    io.write(tiny, path)
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    try:
        model = saved[0]
        assert np.allclose(model.latent(backed, kind="fe"), model.latent(tiny, kind="fe"), atol=1e-5)
        from_disk = amedl.AMEDL(backed, "batch", **SETTINGS)
        assert from_disk.genes == amedl.AMEDL(tiny, "batch", **SETTINGS).genes
    finally:
        backed.file.close()


def test_normalised_data_say_where_the_counts_are(tiny):
    """Was: 'adata.X contains non-integer values ... e.g. layer='counts'', whatever the input held."""
    import anndata as ad

    norm = sp.csr_matrix(np.log1p(tiny.X.toarray() / tiny.X.sum(1).A * 1e4))
    with_layer = ad.AnnData(norm, obs=tiny.obs, var=tiny.var, layers={"umi": tiny.X.copy()})
    with pytest.raises(AMEDLInputError, match=r"in adata\.layers\['umi'\]: pass layer='umi' \(command line: --layer umi\)"):
        amedl.AMEDL(with_layer, "batch", **SETTINGS)
    with_raw = ad.AnnData(norm, obs=tiny.obs, var=tiny.var)
    with_raw.raw = tiny.copy()
    with pytest.raises(AMEDLInputError, match=r"in adata\.raw: use adata\.raw\.to_adata\(\)"):
        amedl.AMEDL(with_raw, "batch", **SETTINGS)
    nothing = ad.AnnData(norm, obs=tiny.obs, var=tiny.var, layers={"logcounts": norm.copy()})
    with pytest.raises(AMEDLInputError, match=r"No raw counts were found \(looked in 'adata\.X', \"adata\.layers\['logcounts'\]\"\)"):
        amedl.AMEDL(nothing, "batch", **SETTINGS)


def test_error_messages_are_bounded(tiny):
    """Was: the one-cell-batch error listed every batch name (2.8 kB)."""
    a = tiny.copy()
    a.obs["batch"] = [f"donor_{i:04d}" for i in range(a.n_obs)]  # every cell its own batch
    with pytest.raises(AMEDLInputError, match=r"160 batch\(es\) .* fewer than 2 cells \('donor_\d+', .* and 155 more\)") as err:
        amedl.AMEDL(a, "batch", **SETTINGS)
    assert len(str(err.value)) < 400
    many = tiny.copy()
    many.obs = many.obs.join(pd.DataFrame(0, index=many.obs_names, columns=[f"column_{i}" for i in range(300)]))
    with pytest.raises(AMEDLInputError, match="and 293 more") as err:
        amedl.AMEDL(many, "donor", **SETTINGS)
    assert len(str(err.value)) < 400


def test_r_users_read_r_words(tiny):
    """RunAMEDL()'s errors from the engine speak of the cell metadata and subset(), not adata.obs and scanpy."""
    from amedl import _rbridge

    X = tiny.X.copy().tolil()
    X[3, :] = 0
    X = sp.csc_matrix(X.tocsr().T)
    with pytest.raises(AMEDLInputError) as err:
        _rbridge.fit(X, list(tiny.obs_names), list(tiny.var_names), list(tiny.obs["batch"].astype(str)),
                     n_latent=3, n_top_genes=50, epochs=1, progress=False)
    msg = str(err.value)
    assert "subset(obj, nCount_RNA > 0)" in msg and "adata" not in msg and "sc.pp" not in msg
    from amedl._utils import resolve_device

    if not torch.cuda.is_available():  # was: the Python and command-line forms, from R
        with pytest.raises(Exception) as err:
            resolve_device("cuda")
        assert _rbridge.r_words(str(err.value)).endswith("(amedl_options(device = ...))")
