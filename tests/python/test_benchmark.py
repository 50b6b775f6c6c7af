"""Folds, summaries, report files, the demo and the `amedl benchmark` command (amedl.benchmark, amedl.pl, amedl.demo)."""
import argparse
import base64
import importlib.util
import os
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import amedl
from amedl import benchmark as B
from amedl.pl import umap_grid

FAST_METHODS = ["pca", "ae", "fe", "re"]


@pytest.fixture(scope="module")
def small_adata():
    return amedl.datasets.simulate(n_cells=240, n_genes=150, n_batches=3, n_cell_types=3, seed=1)


# ---------------------------------------------------------------------- folds


def test_folds_are_disjoint_cover_all_and_stratified():
    rng = np.random.default_rng(0)
    batch = rng.choice(["b1", "b2", "b3"], size=600, p=[0.5, 0.3, 0.2])
    label = rng.choice(["t1", "t2", "t3", "t4"], size=600, p=[0.4, 0.3, 0.2, 0.1])
    folds = B.stratified_folds(batch, label, n_folds=5, seed=0)
    assert len(folds) == 5
    tests = [te for _, te in folds]
    all_test = np.concatenate(tests)
    assert len(all_test) == 600 and len(np.unique(all_test)) == 600  # every cell held out exactly once
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0
        assert len(tr) + len(te) == 600
    key = pd.Series(batch.astype(object) + "|" + label.astype(object))
    for stratum, n in key.value_counts().items():
        per_fold = [int((key.iloc[te] == stratum).sum()) for te in tests]
        assert max(per_fold) - min(per_fold) <= 1, (stratum, per_fold)  # stratified: balanced to within one cell


def test_folds_handle_rare_strata_and_are_seeded():
    batch = np.array(["b1"] * 50 + ["b2"] * 50)
    label = np.array(["common"] * 48 + ["rare1", "rare2"] + ["common"] * 49 + ["singleton"])
    f1 = B.stratified_folds(batch, label, n_folds=5, seed=3)
    f2 = B.stratified_folds(batch, label, n_folds=5, seed=3)
    f3 = B.stratified_folds(batch, label, n_folds=5, seed=4)
    for (a, b), (c, d) in zip(f1, f2):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(f1, f3))
    assert sorted(np.concatenate([te for _, te in f1]).tolist()) == list(range(100))
    for _, te in f1:  # batches stay balanced even with the rare strata pooled
        assert (batch[te] == "b1").sum() == 10


def test_one_fold_means_all_cells():
    (tr, te), = B.stratified_folds(["a", "b", "a"], ["x", "x", "y"], n_folds=1)
    np.testing.assert_array_equal(tr, [0, 1, 2])
    np.testing.assert_array_equal(te, [0, 1, 2])
    with pytest.raises(ValueError, match="folds must be a whole number >= 1"):
        B.stratified_folds(["a", "b"], ["x", "y"], n_folds=0)
    for odd in (True, 2.0):  # (were accepted as 1 and 2 folds)
        with pytest.raises(ValueError, match="folds must be a whole number >= 1"):
            B.stratified_folds(["a", "b"], ["x", "y"], n_folds=odd)
    with pytest.raises(ValueError, match="more than the number of cells"):
        B.stratified_folds(["a", "b"], ["x", "y"], n_folds=3)


# ----------------------------------------------------------- methods, summary


def test_resolve_methods_aliases_and_errors():
    assert B.resolve_methods(["pca", "FE", "amedl-re", "ae,harmony"]) == ["PCA", "aMEDL-FE", "aMEDL-RE", "AE", "Harmony"]
    assert B.resolve_methods("pca,pca") == ["PCA"]
    assert B.resolve_methods(None) == list(B.DEFAULT_METHODS)
    with pytest.raises(ValueError, match="unknown method 'umap'"):
        B.resolve_methods(["umap"])


def test_summary_mean_and_confidence_interval_by_hand():
    res = pd.DataFrame({"method": ["X"] * 3 + ["Y"], "fold": [1, 2, 3, 1], "batch_asw": [1.0, 2.0, 3.0, 0.5]})
    s = B.summarize(res).set_index(["method", "metric"])
    # mean 2, sd 1, t(0.975, df=2) = 4.3027 -> half-width 4.3027 / sqrt(3) = 2.4841
    assert s.loc[("X", "batch_asw"), "mean"] == pytest.approx(2.0)
    assert s.loc[("X", "batch_asw"), "ci95"] == pytest.approx(2.4841, abs=1e-4)
    assert np.isnan(s.loc[("Y", "batch_asw"), "ci95"])  # one fold: no interval


def test_a_metric_that_failed_on_some_folds_says_so():
    """Was: the mean over the folds where it did not fail, shown like any other."""
    from amedl.benchmark.report import PAPER_COLUMNS, _wide

    res = pd.DataFrame({"method": ["X"] * 3, "fold": [1, 2, 3], "batch_asw": [0.1, np.nan, 0.3],
                        "label_asw": [0.2, 0.2, 0.2]})
    table = _wide(B.summarize(res), PAPER_COLUMNS)
    assert table.loc["X", "batch ASW"] == "0.200 ± 1.271 (2 of 3 folds)"
    assert table.loc["X", "label ASW"] == "0.200 ± 0.000"


def test_pattern_check_compares_fe_total_with_harmony_and_scvi():
    res = pd.DataFrame({"method": ["PCA", "aMEDL-FE", "Harmony", "scVI"] * 2, "fold": [1] * 4 + [2] * 4,
                        "batch_asw": [0.1, -0.1, -0.1, 0.0] * 2, "label_asw": [0.2, 0.3, 0.3, 0.2] * 2,
                        "scib_total": [0.5, 0.76, 0.77, 0.70, 0.5, 0.76, 0.75, 0.72],
                        "scib_total_kmeans_mean": [0.5, 0.78, 0.76, 0.71] * 2})
    lines = B.pattern_check(res)
    # one k-means run: Harmony 0.760 ties FE 0.760 (margin 0); the averaged total: FE ahead of both by 0.02
    # and the fold-by-fold difference from the closest of them, with its 95% CI (t, 1 df: 12.706 × 0.01)
    assert ("FE scIB total 0.760 vs Harmony 0.760 and scVI 0.710: at least both (margin +0.000; FE − Harmony paired "
            "over folds +0.000 ± 0.127 (95% CI): a tie within the folds' spread)") in lines
    assert ("FE scIB total (20 k-means) 0.780 vs Harmony 0.760 and scVI 0.710: at least both (margin +0.020; "
            "FE − Harmony paired over folds +0.020 ± 0.000 (95% CI))") in lines
    worse = res.assign(scib_total=res["scib_total"].where(res["method"] != "scVI", 0.9))
    assert any(line.startswith("FE scIB total 0.760") and "NOT at least both (margin -0.140; FE − scVI paired" in line
               for line in B.pattern_check(worse))
    # one reference of PCA and AE: "below it", not "below both"
    assert "FE batch ASW -0.100 vs PCA +0.100: below it (margin +0.200)" in lines
    # no baseline ran: no sentence rather than a comparison with nothing
    assert not any("scIB total" in line for line in B.pattern_check(res[res["method"].isin(["PCA", "aMEDL-FE"])]))


def test_a_scoring_subsample_is_reported(small_adata, tmp_path):
    """Was: scores of a max_cells subsample with n_test the whole fold, and nothing in the report."""
    res = B.run_benchmark(small_adata, "batch", "cell_type", tmp_path / "cut", methods=["pca"], folds=2, scib=False,
                          progress=False, umap=False, report=False, max_cells=50)
    assert (res["n_scored"] == 50).all() and (res["n_test"] == 120).all()
    summary = (tmp_path / "cut" / "summary.md").read_text()
    assert "seeded subsample of at most 50 of its held-out cells" in summary
    # what produced it: amedl's version (and commit, from a checkout) and the scoring libraries'
    assert re.search(r"Software: amedl [0-9.]+( \(commit [0-9a-f]+( \+ changes)?\))?, torch ", summary)
    whole = B.run_benchmark(small_adata, "batch", "cell_type", tmp_path / "whole", methods=["pca"], folds=2,
                            scib=False, progress=False, umap=False, report=False)
    assert (whole["n_scored"] == whole["n_test"]).all()
    assert "subsample" not in (tmp_path / "whole" / "summary.md").read_text()


def test_folds_too_small_to_score_are_refused_before_fitting(small_adata, tmp_path):
    """Was: an 'internal error ... please report it' from the silhouette, after fitting."""
    with pytest.raises(amedl.AMEDLInputError, match=r"fold 1 \(seed 0\) has 2 held-out cells to score for .*"
                                                    r"Use fewer folds \(--folds\) or a larger max_cells"):
        B.run_benchmark(small_adata, "batch", "cell_type", tmp_path, methods=["pca"], folds=2, max_cells=2,
                        progress=False)
    rare = small_adata[np.r_[np.flatnonzero(small_adata.obs["batch"] != "batch_3"),
                             np.flatnonzero(small_adata.obs["batch"] == "batch_3")[:6]]].copy()
    B.run_benchmark(rare, "batch", "cell_type", tmp_path / "rare", methods=["pca"], folds=2, scib=False,
                    progress=False, umap=False, report=False)
    assert "few cells of batch 'batch_3' (6 cells): fewer than 5 per held-out fold" in (tmp_path / "rare" / "summary.md").read_text()


def test_missing_keys_and_labels_raise(small_adata, tmp_path):
    with pytest.raises(amedl.AMEDLInputError, match="label column 'nope' is not in adata.obs"):
        B.run_benchmark(small_adata, "batch", "nope", tmp_path, folds=1, progress=False)
    bad = small_adata.copy()
    bad.obs["cell_type"] = bad.obs["cell_type"].astype(object)
    bad.obs.iloc[0, bad.obs.columns.get_loc("cell_type")] = None
    with pytest.raises(ValueError, match="has 1 missing or empty value"):
        B.run_benchmark(bad, "batch", "cell_type", tmp_path, folds=1, progress=False)
    bad.obs.iloc[0, bad.obs.columns.get_loc("cell_type")] = " "  # (was: a label of its own)
    with pytest.raises(ValueError, match="has 1 missing or empty value"):
        B.run_benchmark(bad, "batch", "cell_type", tmp_path, folds=1, progress=False)
    with pytest.raises(amedl.AMEDLInputError, match="the batch and label columns are both 'batch'"):
        B.run_benchmark(small_adata, "batch", "batch", tmp_path, folds=1, progress=False)


# ----------------------------------------------------------------- end to end


def test_run_benchmark_writes_report_files(small_adata, tmp_path):
    before = small_adata.copy()
    out = tmp_path / "bench"
    harmony = importlib.util.find_spec("harmonypy") is not None
    res = B.run_benchmark(small_adata, "batch", "cell_type", out, methods=FAST_METHODS + ["harmony"],
                          folds=2, seed=0, progress=False, scib=False, max_epochs=3)
    # the expected list comes from what is installed, not from the result
    methods = ["PCA", "AE", "aMEDL-FE", "aMEDL-RE"] + (["Harmony"] if harmony else [])
    assert list(pd.unique(res["method"])) == methods
    assert len(res) == 2 * len(methods)
    # each fold scores its held-out cells; together they are every cell once
    per_fold = res.groupby("fold")["n_test"].first()
    assert per_fold.sum() == small_adata.n_obs
    assert (res["n_train"] + res["n_test"] == small_adata.n_obs).all()
    for col in ("batch_asw", "label_asw", "batch_inv_db", "label_inv_db", "batch_ch", "label_ch"):
        assert res[col].notna().all()
        assert col in res.columns
    assert res["batch_asw"].between(-1, 1).all()
    for name in ("results.csv", "summary.md", "umap.png", "report.html"):
        assert (out / name).stat().st_size > 0, name
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(res) and set(csv["method"]) == set(methods)
    md = (out / "summary.md").read_text()
    assert "| aMEDL-FE |" in md and "±" in md  # two folds: mean ± CI
    # the training record reads each network's validation loss (was: a column name no history has, so "–")
    for kind in ("ae", "fe", "re"):
        assert res[f"{kind}_val_recon"].notna().all() and (res[f"{kind}_val_recon"] > 0).all()
    record = B.report.training_table(res)
    assert not record["validation reconstruction loss"].str.contains("–").any()
    png = (out / "umap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert m and base64.b64decode(m.group(1)) == png  # the figure is embedded, the page stands alone
    assert "<table" in html and "aMEDL-RE" in html
    # the input is untouched
    assert (small_adata.X != before.X).nnz == 0 and small_adata.obs.equals(before.obs)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.csv", "summary.md", "umap.png"]


def test_umap_grid_shapes_and_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    lat = {"A": rng.normal(size=(n, 5)), "B": rng.normal(size=(n, 3))}
    ann = {"batch": np.repeat(["x", "y"], n // 2), "label": np.tile(["p", "q", "r"], n // 3)}
    fig, coords = umap_grid(lat, ann, tmp_path / "u.png", seed=0)
    assert fig.axes and len([a for a in fig.axes if a.get_title()]) == 4  # 2 methods x 2 annotations
    assert coords["A"].shape == (n, 2) and np.isfinite(coords["A"]).all()
    assert (tmp_path / "u.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="number of cells"):
        umap_grid({"A": lat["A"][:10]}, ann)


def test_umap_grid_keeps_the_backend_the_category_order_and_missing_labels():
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend but Agg: a notebook's inline one must stay
    try:
        n = 40
        rng = np.random.default_rng(0)
        label = pd.Categorical(["T", "B"] * (n // 2), categories=["T", "B"])
        label[:4] = np.nan
        fig, _ = umap_grid({"A": rng.normal(size=(n, 3))}, {"label": label}, umaps={"A": rng.normal(size=(n, 2))})
        assert matplotlib.get_backend() == "svg"
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert legend[:2] == ["T", "B"] and "nan" not in legend
        plt.close(fig)
    finally:
        matplotlib.use(before)


def test_demo_prints_table_and_writes_figure(tmp_path, capsys):
    from amedl.demo import run_demo

    res = run_demo(tmp_path / "demo", seed=0, progress=False, max_epochs=3, n_cells=240, n_genes=150)
    assert list(res["method"]) == ["PCA", "AE", "aMEDL-FE", "aMEDL-RE"]
    printed = capsys.readouterr().out
    assert "batch ASW" in printed and "cell-type ASW" in printed and "same-batch neighbours" in printed
    for meth in ("PCA", "AE", "aMEDL-FE", "aMEDL-RE"):
        assert re.search(rf"^{re.escape(meth)}\s+\d\.\d\d\s+\d\.\d\d\s+[+-]\d\.\d{{3}}\s+[+-]\d\.\d{{3}}$", printed, re.M), meth
    for name in ("umap.png", "report.html", "summary.md", "results.csv"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    # the recorded command reproduces this run (was "amedl demo --out-dir ..." whatever was run)
    md = (tmp_path / "demo" / "summary.md").read_text()
    assert f"amedl.demo.run_demo('{tmp_path / 'demo'}', seed=0, max_epochs=3, n_cells=240, n_genes=150)" in md
    from amedl.demo import _command

    assert _command("d", 3, None, False, {}).startswith("amedl demo --out-dir d --seed 3 --threads ")


def test_several_seeds_repeat_the_cross_validation(small_adata, tmp_path):
    kw = dict(methods=["pca", "fe"], folds=2, progress=False, scib=False, max_epochs=2)
    res = B.run_benchmark(small_adata, "batch", "cell_type", tmp_path / "two", seed=[0, 3], **kw)
    assert len(res) == 2 * 2 * 2 and sorted(res["seed"].unique()) == [0, 3]
    for _, rows in res[res["method"] == "PCA"].groupby("seed"):  # each seed's folds hold every cell once
        assert rows["n_test"].sum() == small_adata.n_obs
    # a seed's rows are those of a run with that seed alone
    alone = B.run_benchmark(small_adata, "batch", "cell_type", tmp_path / "one", seed=0, umap=False, report=False,
                            **kw)
    scores = ["n_test", "batch_asw", "label_asw", "same_batch_neighbours", "label_purity"]
    pd.testing.assert_frame_equal(res[res["seed"] == 0][["method", "fold", *scores]].reset_index(drop=True),
                                  alone[["method", "fold", *scores]].reset_index(drop=True))
    # the second seed draws other folds and fits other models
    assert not np.allclose(res[res["seed"] == 3]["batch_asw"], alone["batch_asw"])
    md = (tmp_path / "two" / "summary.md").read_text()
    assert "seeds 0, 3 (the cross-validation repeated once per seed" in md and "## Per seed" in md
    table = B.per_seed_table(res)
    assert list(table.columns) == ["seed 0", "seed 3"] and list(table.index) == ["PCA", "aMEDL-FE"]
    fe3 = res[(res["method"] == "aMEDL-FE") & (res["seed"] == 3)]
    assert table.loc["aMEDL-FE", "seed 3"] == f"{fe3['batch_asw'].mean():+.3f} / {fe3['label_asw'].mean():+.3f}"
    assert "## Per seed" not in (tmp_path / "one" / "summary.md").read_text()
    for bad, why in (([0, 0], "seed lists a seed twice"), ([], "non-negative integer"), (-1, "non-negative integer")):
        with pytest.raises(amedl.AMEDLInputError, match=why):
            B.run_benchmark(small_adata, "batch", "cell_type", tmp_path / "bad", seed=bad, **kw)


def test_benchmark_command_line(small_adata, tmp_path, capsys):
    from amedl.cli import _benchmark_command_line, build_parser

    path = tmp_path / "in.h5ad"
    small_adata.write_h5ad(path)
    args = build_parser().parse_args(["benchmark", str(path), "--batch-key", "batch", "--label-key", "cell_type",
                                      "--out-dir", str(tmp_path / "cli"), "--methods", "pca,fe", "--folds", "2",
                                      "--epochs", "2", "--no-scib", "--quiet"])
    old = os.umask(0o077)
    try:
        assert args.func(args) == 0
    finally:
        os.umask(old)
    res = pd.read_csv(tmp_path / "cli" / "results.csv")
    assert list(pd.unique(res["method"])) == ["PCA", "aMEDL-FE"] and len(res) == 4
    assert {stat.S_IMODE((tmp_path / "cli" / n).stat().st_mode) for n in ("results.csv", "umap.png")} == {0o600}
    out = capsys.readouterr().out
    assert "amedl benchmark" in out and "--folds 2" in out  # the summary, with the command that made it
    several = build_parser().parse_args(["benchmark", str(path), "--batch-key", "batch", "--label-key", "cell_type",
                                         "--out-dir", str(tmp_path / "s"), "--seed", "0", "2"])
    assert several.seed == [0, 2] and "--seed 0 2" in _benchmark_command_line(several)
    import torch  # the threads it ran with are part of what reproduces it

    assert f"--threads {torch.get_num_threads()}" in _benchmark_command_line(several)
    three = build_parser().parse_args(["benchmark", str(path), "--batch-key", "batch", "--label-key", "cell_type",
                                       "--out-dir", str(tmp_path / "s"), "--threads", "3"])
    assert _benchmark_command_line(three).endswith("--threads 3")
    r_file = build_parser().parse_args(["benchmark", "cells.rda", "--batch-key", "batch", "--label-key", "cell_type",
                                        "--out-dir", "s", "--object-name", "pbmc", "--assay", "RNA"])
    assert "cells.rda --batch-key batch --label-key cell_type --out-dir s " in _benchmark_command_line(r_file)
    assert "--object-name pbmc --assay RNA" in _benchmark_command_line(r_file)
    from amedl.cli import main

    assert main(["benchmark", str(path), "--batch-key", "batch", "--label-key", "cell_type",
                 "--out-dir", str(tmp_path / "x"), "--methods", "tsne"]) == 1
    assert "amedl: unknown method 'tsne'" in capsys.readouterr().err
    assert main(["benchmark", str(path), "--batch-key", "batch", "--label-key", "cell_type",
                 "--out-dir", str(tmp_path / "x"), "--seed", "1", "1"]) == 1
    assert "amedl: --seed lists a seed twice (1 1); give each seed once" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("scvi") is None, reason="scvi-tools is not installed")
def test_scvi_uses_the_model_genes_and_latent_size(small_adata, tmp_path):
    res = B.run_benchmark(small_adata, "batch", "cell_type", tmp_path, methods=["scvi"], folds=1, progress=False,
                          scib=False, max_epochs=2, umap=False, report=False, model_kwargs={"n_latent": 6,
                                                                                          "n_top_genes": 100})
    assert list(res["method"]) == ["scVI"] and res["batch_asw"].notna().all()
    ctx = B.FoldContext(small_adata, np.arange(small_adata.n_obs), np.arange(40), "batch", max_epochs=2,
                        progress=False, model_kwargs={"n_latent": 6, "n_top_genes": 100}, kinds=())
    (z,) = B.METHODS["scVI"].embed(ctx, [np.arange(40)])
    assert z.shape == (40, 6)
    model = ctx.cache["scVI"]
    assert list(model.adata.var_names) == list(ctx.model.genes)  # the genes the aMEDL model selected
    assert (model.adata.X != small_adata[:, ctx.model.genes].X).nnz == 0  # raw counts, not normalised


def test_a_method_whose_package_is_missing_is_skipped_with_a_note(small_adata, tmp_path, monkeypatch):
    monkeypatch.setitem(B.METHODS, "Harmony", B.Method("Harmony", None, "x", requires=("no_such_module_xyz",),
                                                         note="pip install it"))
    res = B.run_benchmark(small_adata, "batch", "cell_type", tmp_path, methods=["pca", "harmony"], folds=1,
                          progress=False, scib=False, max_epochs=1, umap=False, report=False)
    assert list(res["method"]) == ["PCA"]
    assert "Harmony skipped: no_such_module_xyz not installed (pip install it)" in (tmp_path / "summary.md").read_text()
