"""Metrics against hand-computable cases (amedl.metrics)."""
import numpy as np
import pytest

from amedl import metrics as M


def _silhouette_by_hand(x, labels):
    """Mean silhouette straight from its definition (Rousseeuw 1987)."""
    x = np.asarray(x, float)
    labels = np.asarray(labels)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    s = []
    for i in range(len(x)):
        same = (labels == labels[i]) & (np.arange(len(x)) != i)
        if not same.any():
            s.append(0.0)
            continue
        a = d[i, same].mean()
        b = min(d[i, labels == other].mean() for other in set(labels) if other != labels[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def test_separated_batches_give_silhouette_one():
    # two batches at distinct points: a(i) = 0, b(i) = 10, so every s(i) = 1
    x = np.array([[0.0], [0.0], [10.0], [10.0]])
    assert M.silhouette_batch(x, ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert M.silhouette_label(x, [1, 1, 2, 2]) == pytest.approx(1.0)


def test_interleaved_batches_give_negative_silhouette():
    # points 0, 0, 1, 1 labelled a, b, a, b: a(i) = 1, b(i) = (0 + 1) / 2, s(i) = -0.5
    x = np.array([[0.0], [0.0], [1.0], [1.0]])
    assert M.silhouette_batch(x, ["a", "b", "a", "b"]) == pytest.approx(-0.5)


def test_mixed_vs_separated_batches_on_random_data():
    rng = np.random.default_rng(0)
    batch = np.repeat(["b1", "b2", "b3"], 100)
    mixed = rng.normal(size=(300, 8))
    separated = mixed * 0.1 + np.repeat(np.eye(3, 8) * 20, 100, axis=0)
    asw_mixed = M.silhouette_batch(mixed, batch)
    asw_sep = M.silhouette_batch(separated, batch)
    assert abs(asw_mixed) < 0.05
    assert asw_sep > 0.9


def test_silhouette_matches_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    lab = rng.integers(0, 3, size=40)
    x[:, 0] += lab * 1.5
    assert M.silhouette_label(x, lab) == pytest.approx(_silhouette_by_hand(x, lab), abs=1e-10)


def test_inverse_davies_bouldin_and_calinski_harabasz_by_hand():
    # clusters {0, 2} and {10, 12}: centroids 1 and 11, within-cluster scatter 1 each.
    # DB = (1 + 1) / 10 = 0.2 -> 1/DB = 5.
    # CH = [between / (k - 1)] / [within / (n - k)] = [2*25 + 2*25] / [4 / 2] = 50.
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    lab = ["x", "x", "y", "y"]
    assert M.inverse_davies_bouldin(x, lab) == pytest.approx(5.0)
    assert M.calinski_harabasz(x, lab) == pytest.approx(50.0)


def test_basic_metrics_keys_and_directions():
    rng = np.random.default_rng(2)
    batch = np.tile(["b1", "b2"], 100)
    label = np.repeat(["t1", "t2"], 100)
    x = rng.normal(size=(200, 5))
    x[:, 0] += (label == "t2") * 10  # cell types apart, batches mixed
    out = M.basic_metrics(x, batch, label)
    assert set(out) == set(M.BASIC_METRICS)
    assert out["label_asw"] > 0.7 > abs(out["batch_asw"])
    assert out["label_inv_db"] > out["batch_inv_db"]
    assert out["label_ch"] > out["batch_ch"]


def test_neighbour_fractions_mixed_and_separated():
    """Batches mixed within cell types score the perfectly mixed value; batches
    apart score 1; purity is 1 when cell types are apart."""
    rng = np.random.default_rng(3)
    batch = np.tile(["b1", "b2", "b2"], 100)  # 100 cells of b1, 200 of b2
    label = np.repeat(["t1", "t2"], 150)
    mixed = rng.normal(size=(300, 4))
    mixed[:, 0] += (label == "t2") * 20
    out = M.neighbour_fractions(mixed, batch, label, k=15)
    expected = (100 * 99 / 299 + 200 * 199 / 299) / 300
    assert out["same_batch_mixed"] == pytest.approx(expected)
    assert abs(out["same_batch_neighbours"] - expected) < 0.05
    assert out["label_purity"] == pytest.approx(1.0)
    apart = mixed.copy()
    apart[:, 1] += (batch == "b2") * 20
    assert M.neighbour_fractions(apart, batch, label)["same_batch_neighbours"] == pytest.approx(1.0)


def test_subsample_indices_seeded_stratified_and_exact():
    strata = np.array(["a"] * 900 + ["b"] * 90 + ["c"] * 10)
    i1 = M.subsample_indices(1000, 100, seed=3, strata=strata)
    i2 = M.subsample_indices(1000, 100, seed=3, strata=strata)
    i3 = M.subsample_indices(1000, 100, seed=4, strata=strata)
    np.testing.assert_array_equal(i1, i2)
    assert not np.array_equal(i1, i3)
    assert len(i1) == 100 and len(np.unique(i1)) == 100
    counts = {s: int((strata[i1] == s).sum()) for s in "abc"}
    assert counts == {"a": 90, "b": 9, "c": 1}
    np.testing.assert_array_equal(M.subsample_indices(50, None), np.arange(50))
    np.testing.assert_array_equal(M.subsample_indices(50, 80), np.arange(50))
    assert len(M.subsample_indices(1000, 37, seed=0)) == 37
    # many tiny strata: each keeps a cell, the large one gives back what they took (was: 29 cells for 20)
    tiny = np.array(["big"] * 990 + [f"s{i}" for i in range(10)])
    i = M.subsample_indices(1000, 20, seed=0, strata=tiny)
    assert len(i) == 20 and len(np.unique(i)) == 20 and set(tiny[i]) == set(tiny)
    # more strata than cells asked for: one cell each
    assert len(M.subsample_indices(1000, 5, seed=0, strata=tiny)) == 11


def test_silhouette_subsample_is_close_and_reproducible():
    rng = np.random.default_rng(5)
    batch = np.repeat(["b1", "b2"], 1000)
    x = rng.normal(size=(2000, 4))
    x[:, 0] += (batch == "b2") * 3
    full = M.silhouette_batch(x, batch)
    sub = M.silhouette_batch(x, batch, max_cells=500, seed=0)
    assert sub == M.silhouette_batch(x, batch, max_cells=500, seed=0)
    assert abs(sub - full) < 0.05


@pytest.mark.parametrize(
    "latent, labels, match",
    [
        (np.full((4, 2), np.nan), ["a", "a", "b", "b"], "NaN"),
        (np.zeros((4, 2)), ["a", "b"], "one entry per cell"),
        (np.zeros(4), ["a", "a", "b", "b"], "2-dimensional"),
        (np.arange(8.0).reshape(4, 2), ["a"] * 4, "groups"),
    ],
)
def test_bad_inputs_raise_clear_errors(latent, labels, match):
    with pytest.raises(ValueError, match=match):
        M.silhouette_batch(latent, labels)


@pytest.mark.skipif(not M.scib_available(), reason="scib-metrics not installed (optional extra amedl[benchmark])")
def test_scib_metrics_rank_mixed_above_separated():
    rng = np.random.default_rng(0)
    n = 240
    batch = np.tile(["b1", "b2", "b3"], n // 3)
    label = np.repeat(["t1", "t2"], n // 2)
    base = rng.normal(size=(n, 6)) * 0.5
    base[:, 0] += (label == "t2") * 8
    mixed = base
    separated = base + np.stack([(batch == b) * 12.0 for b in ("b1", "b2", "b3")] + [np.zeros(n)] * 3, axis=1)
    out_mixed = M.scib_metrics(mixed, batch, label, unintegrated=separated)
    out_sep = M.scib_metrics(separated, batch, label, unintegrated=separated)
    for key in M.SCIB_BATCH_METRICS + M.SCIB_BIO_METRICS + ("batch_correction", "bio_conservation", "scib_total"):
        assert key in out_mixed
    # batches fully mixed: iLISI high, kBET accepts; fully separated: iLISI ~0
    assert out_mixed["ilisi"] > 0.7 and out_sep["ilisi"] < 0.05
    assert out_mixed["kbet"] > out_sep["kbet"]
    assert out_mixed["pcr_comparison"] > 0.9 and out_sep["pcr_comparison"] == pytest.approx(0.0, abs=1e-6)
    assert out_mixed["batch_correction"] > out_sep["batch_correction"] + 0.5
    # cell types are perfectly recoverable in the mixed latent
    assert out_mixed["nmi"] == pytest.approx(1.0) and out_mixed["ari"] == pytest.approx(1.0)
    assert out_mixed["scib_total"] == pytest.approx(0.4 * out_mixed["batch_correction"] + 0.6 * out_mixed["bio_conservation"])
    # the k-means-averaged figures: perfect clusters stay perfect, and the total is rebuilt from them
    assert out_mixed["nmi_kmeans_mean"] == pytest.approx(1.0) and out_mixed["ari_kmeans_mean"] == pytest.approx(1.0)
    assert out_mixed["scib_total_kmeans_mean"] == pytest.approx(out_mixed["scib_total"])
    others = [out_sep[k] for k in M.SCIB_BIO_METRICS if k not in ("nmi", "ari")]
    bio = np.mean([*others, out_sep["nmi_kmeans_mean"], out_sep["ari_kmeans_mean"]])
    assert out_sep["scib_total_kmeans_mean"] == pytest.approx(0.4 * out_sep["batch_correction"] + 0.6 * bio)
    assert "nmi_kmeans_mean" not in M.scib_metrics(mixed, batch, label, kmeans_inits=0)


def test_kmeans_nmi_ari_is_the_mean_of_single_runs():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(3)
    # four overlapping groups: k-means runs disagree, so the average is not any one run
    labels = np.repeat(["a", "b", "c", "d"], 30)
    x = rng.normal(size=(120, 3)) + np.repeat(np.array([[0, 0, 0], [1.5, 0, 0], [0, 1.5, 0], [1.5, 1.5, 0]]), 30, axis=0)
    runs = [KMeans(4, n_init=1, random_state=s).fit_predict(x) for s in range(5)]
    nmi = np.mean([normalized_mutual_info_score(labels, r) for r in runs])
    ari = np.mean([adjusted_rand_score(labels, r) for r in runs])
    assert M.kmeans_nmi_ari(x, labels, inits=5) == pytest.approx((nmi, ari))
    assert len({round(normalized_mutual_info_score(labels, r), 6) for r in runs}) > 1
    with pytest.raises(ValueError, match="inits must be at least 1"):
        M.kmeans_nmi_ari(x, labels, inits=0)
    with pytest.raises(ValueError, match="labels has 3 entries but the latent has 120 cells"):
        M.kmeans_nmi_ari(x, labels[:3])
