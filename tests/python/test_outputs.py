"""Every way of fitting writes the same record: `amedl fit`, amedl.tl.amedl and the R bridge (RunAMEDL)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

import amedl
from amedl import _rbridge, io, tl
from amedl.cli import main

SETTINGS = dict(n_latent=4, n_top_genes=60, hidden=(32, 16), adversary_hidden=(32, 16))


def plain(x):
    """A record as plain Python (what .h5ad / R give back as arrays and numpy scalars)."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [plain(v) for v in x]
    return x.item() if isinstance(x, np.generic) else x


@pytest.fixture(scope="module")
def tiny():
    return amedl.datasets.simulate(n_cells=200, n_genes=120, n_batches=3, n_cell_types=3, seed=2)


@pytest.fixture(scope="module")
def record_tl(tiny):
    a = tiny.copy()
    model = tl.amedl(a, "batch", seed=3, max_epochs=1, progress=False, **SETTINGS)
    assert a.obsm["X_amedl_fe"].shape == (a.n_obs, 4) and a.obsm["X_amedl_re"].shape == (a.n_obs, 4)
    np.testing.assert_allclose(a.obsm["X_amedl_fe"], model.latent(kind="fe"), rtol=1e-5, atol=1e-6)
    return a.uns["amedl"]


def test_the_record_says_what_was_fitted(record_tl, tiny):
    rec = record_tl
    assert rec["batch_key"] == "batch" and rec["seed"] == 3 and rec["n_latent"] == 4 and rec["preset"] == "default"
    assert rec["batches"] == ["batch_1", "batch_2", "batch_3"] and len(rec["genes"]) == 60
    assert set(rec["genes"]) <= set(tiny.var_names)
    assert rec["epochs"] == {"fe": 1, "re": 1}
    assert rec["settings"] == {"n_top_genes": 60, "hidden": [32, 16], "adversary_hidden": [32, 16]}
    assert rec["amedl_version"] == amedl.__version__
    assert rec["settings_none"] == [] and len(rec["fingerprint"]) == 16
    assert rec["processes"] == 1 and rec["from_disk"] is False


def test_the_record_names_settings_turned_off_and_the_model(tiny, tmp_path):
    """Was: a setting turned off (None) was missing from the record, which read as the preset's value; and an
    object could not tell whether a model folder still held the model it was fitted with."""
    m = amedl.AMEDL(tiny, "batch", n_latent=4, n_top_genes=60, fe_intercept_clusters=None, patience=None)
    m.fit(seed=3, max_epochs=1, progress=False)
    rec = amedl.tl.record(m)
    assert rec["settings_none"] == ["fe_intercept_clusters", "patience"]
    m.save(tmp_path / "m")
    assert amedl.AMEDL.load(tmp_path / "m").fingerprint == rec["fingerprint"]
    other = amedl.AMEDL(tiny, "batch", n_latent=4, n_top_genes=60, fe_intercept_clusters=None, patience=None)
    other.fit(seed=4, max_epochs=1, progress=False)
    assert other.fingerprint != rec["fingerprint"]


def test_amedl_fit_writes_the_same_record(record_tl, tiny, tmp_path):
    src, out = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    io.write(tiny, src)
    assert main(["fit", str(src), "--batch-key", "batch", "--out", str(out), "--epochs", "1", "--seed", "3",
                 "--n-latent", "4", "--n-top-genes", "60", "--quiet"]) == 0
    back = io.read(out)
    rec = plain(back.uns["amedl"])
    # the command line has no --hidden: compare everything else
    other = ("settings", "fingerprint")  # another network size: other settings, other weights
    assert {k: v for k, v in rec.items() if k not in other} == {k: v for k, v in record_tl.items() if k not in other}
    assert rec["settings"] == {"n_top_genes": 60}
    assert back.obsm["X_amedl_fe"].shape == (tiny.n_obs, 4)


def test_the_r_bridge_returns_the_same_record(record_tl, tiny):
    X = sp.csc_matrix(tiny.X.T)  # what reticulate hands over for a genes x cells dgCMatrix
    res = _rbridge.fit(X, list(tiny.obs_names), list(tiny.var_names), list(tiny.obs["batch"].astype(str)),
                       n_latent=4, n_top_genes=60, epochs=1, seed=3, progress=False,
                       settings={"hidden": [32, 16], "adversary_hidden": [32, 16]})
    assert res["record"] == record_tl
    assert res["fe"].shape == (tiny.n_obs, 4) and res["model_dir"] is None


@pytest.mark.skipif(importlib.util.find_spec("rpy2") is None, reason="rpy2 is not installed")
def test_rds_output_carries_the_record(record_tl, tiny, tmp_path):
    a = tiny.copy()
    a.uns["amedl"] = record_tl
    out = tmp_path / "out.rds"
    try:
        io.write(a, out, kind="sce")
    except ImportError as e:  # pragma: no cover
        pytest.skip(str(e))
    assert plain(io.read(out).uns["amedl"]) == record_tl
