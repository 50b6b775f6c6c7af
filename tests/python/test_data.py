"""Validation errors, preprocessing and the minibatch loader."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import amedl
from amedl.data import CSRLoader, DeviceCSR, Preprocessor


def _copy(sim):
    a = sim.copy()
    a.X = a.X.toarray()
    return a


def _fit(a, **kw):
    return amedl.AMEDL(a, "batch", n_top_genes=100, hidden=(16, 8), n_latent=4, adversary_hidden=(16, 8), **kw)


def test_missing_batch_key(sim):
    with pytest.raises(amedl.AMEDLInputError, match=r"'donor' is not in adata.obs.*cell_type"):
        amedl.AMEDL(sim, "donor")


@pytest.mark.parametrize(
    "value, pattern",
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative"), (2.5, "non-integer")],
)
def test_bad_values(sim, value, pattern):
    a = _copy(sim)
    a.X[3, 5] = value
    with pytest.raises(amedl.AMEDLInputError, match=pattern) as err:
        _fit(a)
    if pattern == "NaN or infinite":  # one stray value in whole numbers: the counts are there
        assert "No raw counts were found" not in str(err.value)


def test_nonfinite_values_point_to_counts_found_elsewhere(sim):
    a = _copy(sim)
    a.layers["counts"] = a.X.copy()
    a.X = np.log1p(a.X)
    a.X[3, 5] = np.inf
    with pytest.raises(amedl.AMEDLInputError, match=r"NaN or infinite.*adata.layers\['counts'\]: pass layer='counts'"):
        _fit(a)


def test_bad_values_sparse(sim):
    a = sim.copy()
    a.X = a.X.tocsr(copy=True)
    a.X.data[0] = 0.5
    with pytest.raises(amedl.AMEDLInputError, match="non-integer.*raw counts"):
        _fit(a)


def test_gene_names_must_be_text(sim):
    """Was: training on integer or NaN gene names, then 'genes are missing' on the same cells."""
    a = sim.copy()
    a.var_names = [str(i) for i in range(a.n_vars)]
    a.var_names = a.var_names.astype(int)
    with pytest.raises(amedl.AMEDLInputError, match="gene name.*not text.*astype\\(str\\)"):
        _fit(a)


def test_counts_that_are_not_quite_counts_say_why(sim):
    a = _copy(sim)
    a.X = a.X.astype(np.float64) + 1e-7 * (a.X > 0)  # whole numbers up to rounding error
    with pytest.raises(amedl.AMEDLInputError, match=r"rounding error \(e\.g\. \d+\.0000001.*np\.round"):
        _fit(a)
    c = _copy(sim)
    c.X = c.X.astype(np.complex128)  # was: trained, with numpy's ComplexWarning
    with pytest.raises(amedl.AMEDLInputError, match="complex dtype"):
        _fit(c)


def test_the_hint_looks_in_x_and_raw_when_a_layer_is_named(sim):
    a = sim.copy()
    a.layers["logcounts"] = a.X.copy()
    a.layers["logcounts"].data = np.log1p(a.layers["logcounts"].data)
    with pytest.raises(amedl.AMEDLInputError, match='counts seem to be in adata.X: pass layer="X"'):
        _fit(a, layer="logcounts")
    b = a.copy()
    b.raw = b.copy()
    b.X = b.layers["logcounts"].copy()
    with pytest.raises(amedl.AMEDLInputError, match=r"counts seem to be in adata.raw.*raw.to_adata\(\)"):
        _fit(b, layer="logcounts")


def test_genes_argument_is_checked(sim):
    with pytest.raises(amedl.AMEDLInputError, match=r"got the string 'gene_1': write genes=\['gene_1'\]"):
        _fit(sim, genes="gene_1")
    with pytest.raises(amedl.AMEDLInputError, match="genes is empty"):
        _fit(sim, genes=[])


def test_batch_labels_alike_but_for_spaces_get_a_warning(sim):
    a = sim.copy()
    labels = a.obs["batch"].astype(str).to_numpy().copy()
    labels[::7] = [v + " " for v in labels[::7]]
    a.obs["batch"] = labels
    with pytest.warns(UserWarning, match="differ only in case, surrounding spaces or how a number is written.*"
                                         "'batch_1' / 'batch_1 '"):
        _fit(a)


def test_empty_cells(sim):
    a = _copy(sim)
    a.X[7, :] = 0
    with pytest.raises(amedl.AMEDLInputError, match=r"1 cell\(s\) have no counts.*filter_cells"):
        _fit(a)


def test_zero_genes_are_dropped(sim):
    a = _copy(sim)
    a.X[:, :10] = 0
    m = amedl.AMEDL(a, "batch", n_top_genes=None)
    assert m.prep.dropped_genes >= 10
    assert not set(a.var_names[:10]) & set(m.genes)


def test_single_batch(sim):
    a = sim.copy()
    a.obs["batch"] = "only"
    with pytest.raises(amedl.AMEDLInputError, match="single batch.*at least 2 batches"):
        _fit(a)


def test_tiny_batch(sim):
    a = sim.copy()
    a.obs["batch"] = a.obs["batch"].astype(str)
    a.obs.iloc[0, a.obs.columns.get_loc("batch")] = "lonely"
    with pytest.raises(amedl.AMEDLInputError, match=r"1 batch\(es\) .* fewer than 2 cells \('lonely'\)"):
        _fit(a)


def test_missing_batch_values(sim):
    a = sim.copy()
    a.obs["batch"] = a.obs["batch"].astype(object)
    a.obs.iloc[4, a.obs.columns.get_loc("batch")] = None
    with pytest.raises(amedl.AMEDLInputError, match="missing value"):
        _fit(a)


def test_duplicated_names(sim):
    a = sim.copy()
    a.obs_names = ["c"] * a.n_obs
    with pytest.raises(amedl.AMEDLInputError, match="obs_names_make_unique"):
        _fit(a)
    b = sim.copy()
    b.var_names = ["g"] * b.n_vars
    with pytest.raises(amedl.AMEDLInputError, match="var_names_make_unique"):
        _fit(b)


def test_missing_layer(sim):
    with pytest.raises(amedl.AMEDLInputError, match="layer 'counts' is not in adata.layers"):
        amedl.AMEDL(sim, "batch", layer="counts")


def test_layer_is_used(sim):
    a = sim.copy()
    a.layers["counts"] = a.X.copy()
    a.X = a.X * 0.5  # not counts: only the layer may be read
    m = amedl.AMEDL(a, "batch", layer="counts", n_top_genes=50)
    assert len(m.genes) == 50


def test_hvg_and_scaling(sim):
    prep, X, codes = Preprocessor.fit(sim, "batch", n_top_genes=120, scaling="minmax")
    assert len(prep.genes) == 120 == X.shape[1]
    assert sp.isspmatrix_csr(X)
    assert prep.batches == ["batch_1", "batch_2", "batch_3"]
    assert np.array_equal(codes, sim.obs["batch"].cat.codes.to_numpy())
    scaled = prep.scale_dense(X.toarray())
    assert scaled.min() == 0.0 and np.isclose(scaled.max(), 1.0)

    prep_z, Xz, _ = Preprocessor.fit(sim, "batch", n_top_genes=120, scaling="zscore")
    z = prep_z.scale_dense(Xz.toarray())
    assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-3)


def test_loader_covers_every_row_once(sim):
    prep, X, codes = Preprocessor.fit(sim, "batch", n_top_genes=50)
    loader = CSRLoader(X, codes, prep, batch_size=64, shuffle=True, rng=np.random.default_rng(3))
    seen_codes, rows, sizes = [], [], []
    for x, b, *_ in loader:
        sizes.append(x.shape[0])
        rows.append(x.numpy())
        seen_codes.append(b.numpy())
    assert max(sizes) <= 64 and sum(sizes) == X.shape[0]
    got = np.concatenate(rows)
    want = prep.scale_dense(X.toarray())
    # same multiset of rows: compare after sorting rows lexicographically
    order_got = np.lexsort(got.T[::-1])
    order_want = np.lexsort(want.T[::-1])
    assert np.allclose(got[order_got], want[order_want], atol=1e-5)
    assert np.bincount(np.concatenate(seen_codes)).tolist() == np.bincount(codes).tolist()


def test_device_csr_gathers_the_same_rows_as_scipy(sim):
    """The accelerator loader's gather (run here on the CPU) equals SciPy's row slicing,
    empty rows and repeated rows included."""
    prep, X, codes = Preprocessor.fit(sim, "batch", n_top_genes=50)
    X = X.tolil()
    X[5, :] = 0  # an all-zero row in model genes
    X = X.tocsr()
    dev = DeviceCSR(X, "cpu")
    idx = np.array([5, 0, 17, 17, X.shape[0] - 1, 3])
    assert np.array_equal(dev.dense_rows(torch.as_tensor(idx)).numpy(), X[idx].toarray())
    assert dev.dense_rows(torch.as_tensor([5])).abs().sum() == 0

    host = CSRLoader(X, codes, prep, batch_size=64, shuffle=True, rng=np.random.default_rng(3))
    on_dev = CSRLoader(dev, codes, prep, batch_size=64, shuffle=True, rng=np.random.default_rng(3))
    n = 0
    for (x1, b1, *_), (x2, b2, *_) in zip(host, on_dev):
        # the host loader sorts each minibatch's rows; compare as sets of rows
        o1, o2 = np.lexsort(x1.numpy().T[::-1]), np.lexsort(x2.numpy().T[::-1])
        assert np.allclose(x1.numpy()[o1], x2.numpy()[o2]) and sorted(b1.tolist()) == sorted(b2.tolist())
        n += x1.shape[0]
    assert n == X.shape[0] and len(host) == len(on_dev)


def test_unknown_preset_and_setting(sim):
    with pytest.raises(ValueError, match="unknown preset"):
        amedl.AMEDL(sim, "batch", preset="fastest")
    with pytest.raises(ValueError, match="unknown aMEDL setting"):
        amedl.AMEDL(sim, "batch", n_latnet=10)


def test_simulation_is_seeded_and_independent_of_processes(monkeypatch):
    monkeypatch.setattr(amedl.datasets, "_CHUNK", 300)  # several chunks at a test size
    a = amedl.datasets.simulate(n_cells=1000, n_genes=80, n_batches=3, seed=4)
    b = amedl.datasets.simulate(n_cells=1000, n_genes=80, n_batches=3, seed=4, n_jobs=2)
    c = amedl.datasets.simulate(n_cells=1000, n_genes=80, n_batches=3, seed=5)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0
    assert np.all(np.asarray(a.X.sum(axis=1)).ravel() > 0)
    assert np.array_equal(a.X.data, np.round(a.X.data))


@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_normalisation_equals_scanpy(sim, fmt):
    import scanpy as sc

    from amedl import data

    a = sim.copy()
    a.X = {"csr": a.X, "csc": sp.csc_matrix(a.X), "dense": a.X.toarray()}[fmt]
    before = a.X.copy()
    got = data._normalised_log(a, None, 1e4)
    ref = sim.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    assert sp.isspmatrix_csr(got) and got.dtype == np.float32
    np.testing.assert_allclose(got.toarray(), ref.X.toarray(), rtol=1e-6, atol=1e-6)
    # a subset of genes in any order: library sizes still come from all genes
    genes = list(sim.var_names[[7, 3, 250, 0, 99, 98]])
    sub = data._normalised_log(a, None, 1e4, genes)
    assert sub.shape == (sim.n_obs, len(genes)) and sp.isspmatrix_csr(sub)
    np.testing.assert_allclose(sub.toarray(), ref[:, genes].X.toarray(), rtol=1e-6, atol=1e-6)
    in_order = sorted(genes, key=list(sim.var_names).index)
    np.testing.assert_allclose(data._normalised_log(a, None, 1e4, in_order).toarray(), ref[:, in_order].X.toarray(), rtol=1e-6, atol=1e-6)
    assert (sp.csr_matrix(a.X) != sp.csr_matrix(before)).nnz == 0  # the input is untouched
