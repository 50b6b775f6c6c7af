"""amedl.io on real R objects: the muscat SingleCellExperiment and a Seurat object built from it in R."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import amedl
from amedl import io


@pytest.fixture(scope="module")
def sce_rda(data_dir):
    """The muscat SingleCellExperiment saved by Bioconductor >= 3.22 (needs the Seqinfo repair)."""
    path = data_dir / "muscat_example_sce.rda"
    if not path.exists():
        pytest.skip(f"{path.name} is not in the shared data")
    return path


def _r():
    """rpy2's R, or skip when rpy2 / anndata2ri / the R packages are missing."""
    try:
        import anndata2ri  # noqa: F401
        import rpy2.robjects as ro
    except Exception as e:  # pragma: no cover - environment dependent
        pytest.skip(f"rpy2/anndata2ri not usable here: {e}")
    for pkg in ("SingleCellExperiment", "SeuratObject"):
        if not ro.r(f'as.logical(requireNamespace("{pkg}", quietly = TRUE))')[0]:
            pytest.skip(f"R package {pkg} is not installed")
    return ro


def _r_true(code: str) -> bool:
    ro = _r()
    return bool(ro.r(code)[0])


@pytest.fixture(scope="module")
def sce_adata(sce_rda):
    _r()
    return io.read(sce_rda)


@pytest.fixture(scope="module")
def seurat_rds(tmp_path_factory, sce_rda):
    """A Seurat object built in R from the muscat counts and metadata, with data, variable features and a PCA."""
    ro = _r()
    path = tmp_path_factory.mktemp("seurat") / "muscat_seurat.rds"
    ro.r(
        f"""
        suppressPackageStartupMessages(requireNamespace("SingleCellExperiment"))
        local({{
          e <- new.env(); load("{sce_rda}", envir = e); sce <- e$example_sce
          obj <- suppressWarnings(SeuratObject::CreateSeuratObject(
            counts = SingleCellExperiment::counts(sce),
            meta.data = as.data.frame(SummarizedExperiment::colData(sce))))
          obj <- SeuratObject::SetAssayData(obj, slot = "data",
            new.data = log1p(SeuratObject::GetAssayData(obj, slot = "counts")))
          SeuratObject::VariableFeatures(obj) <- rownames(obj)[c(5, 1, 3, 200, 17)]
          emb <- matrix(seq_len(ncol(obj) * 3) / 7, ncol = 3,
                        dimnames = list(colnames(obj), paste0("PC_", 1:3)))
          obj[["pca"]] <- SeuratObject::CreateDimReducObject(embeddings = emb, key = "PC_", assay = "RNA")
          obj$score <- seq_len(ncol(obj)) / 3
          obj$flag <- seq_len(ncol(obj)) %% 2 == 0
          obj$n_int <- ifelse(seq_len(ncol(obj)) %% 5 == 0, NA_integer_, seq_len(ncol(obj)))
          obj$label <- ifelse(seq_len(ncol(obj)) %% 7 == 0, NA_character_, "x")
          obj@misc$note <- "made in R"
          saveRDS(obj, "{path}")
        }})
        """
    )
    return path


def test_read_sce_counts_metadata_reductions(sce_adata):
    a = sce_adata
    assert a.shape == (1556, 1267)
    assert sp.issparse(a.X) and a.X.format == "csr"
    assert list(a.layers.keys()) == ["logcounts"]
    assert sp.issparse(a.layers["logcounts"])
    # counts are integers, stored exactly
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.data.min() > 0
    assert a.obs_names[0] == "ATCATGCTGCGTAT-1" and a.var_names[0] == "HES4"
    for col in ("cluster_id", "sample_id", "group_id"):
        assert isinstance(a.obs[col].dtype, pd.CategoricalDtype)
    assert list(a.obs["sample_id"].cat.categories) == ["ctrl101", "ctrl107", "stim101", "stim107"]
    assert a.obs["sample_id"].value_counts()["stim101"] == 500
    assert list(a.var.columns) == ["ENSEMBL", "SYMBOL"]
    assert a.obsm["X_tsne"].shape == (1556, 2)
    info = a.uns["amedl_io"]
    assert info["kind"] == "sce" and info["x_name"] == "counts" and info["object_name"] == "example_sce"
    assert isinstance(a.uns["experiment_info"], pd.DataFrame)


def test_read_matches_h5ad_copy(sce_adata, data_dir):
    """The shared .h5ad holds the same cells; the counts read from R must be identical."""
    import anndata as ad

    h5 = data_dir / "muscat_kang_example.h5ad"
    if not h5.exists():
        pytest.skip("muscat_kang_example.h5ad not in the shared data")
    ref = ad.read_h5ad(h5)
    common = ref.obs_names.intersection(sce_adata.obs_names)
    assert len(common) == ref.n_obs
    genes = ref.var_names.intersection(sce_adata.var_names)
    assert len(genes) > 1000
    x = sce_adata[common, genes].X.toarray()
    y = ref[common, genes].X
    y = y.toarray() if sp.issparse(y) else np.asarray(y)
    assert np.array_equal(x, y)


def test_sce_round_trip_is_exact(sce_adata, sce_rda, tmp_path):
    out = tmp_path / "back.rds"
    io.write(sce_adata, out, template=None)
    assert _r_true(
        f"""
        local({{
          e <- new.env(); load("{sce_rda}", envir = e); a <- e$example_sce; b <- readRDS("{out}")
          suppressPackageStartupMessages(requireNamespace("SingleCellExperiment"))
          identical(SingleCellExperiment::counts(a), SingleCellExperiment::counts(b)) &&
          identical(SingleCellExperiment::logcounts(a), SingleCellExperiment::logcounts(b)) &&
          identical(SummarizedExperiment::colData(a), SummarizedExperiment::colData(b)) &&
          identical(as.data.frame(SummarizedExperiment::rowData(a)), as.data.frame(SummarizedExperiment::rowData(b))) &&
          identical(S4Vectors::metadata(a), S4Vectors::metadata(b)) &&
          identical(SingleCellExperiment::reducedDim(a, "TSNE"), SingleCellExperiment::reducedDim(b, "TSNE"))
        }})
        """
    )


def test_seurat_round_trip_is_exact(seurat_rds, tmp_path):
    a = io.read(seurat_rds)
    assert a.uns["amedl_io"]["kind"] == "seurat" and a.uns["amedl_io"]["assay"] == "RNA"
    assert sp.issparse(a.X) and "data" in a.layers
    assert a.obsm["X_pca"].shape == (a.n_obs, 3)
    assert a.var["highly_variable"].sum() == 5
    assert str(a.obs["n_int"].dtype) == "Int32" and a.obs["n_int"].isna().sum() == a.n_obs // 5
    assert a.obs["flag"].dtype == bool
    assert a.obs["label"].isna().sum() == a.n_obs // 7
    assert a.uns["note"] == "made in R"
    out = tmp_path / "back.rds"
    io.write(a, out, template=None)
    assert _r_true(
        f"""
        local({{
          a <- readRDS("{seurat_rds}"); b <- readRDS("{out}")
          g <- function(o, s) SeuratObject::GetAssayData(o, slot = s)
          identical(g(a, "counts"), g(b, "counts")) && identical(g(a, "data"), g(b, "data")) &&
          identical(a@meta.data, b@meta.data) &&
          identical(SeuratObject::VariableFeatures(a), SeuratObject::VariableFeatures(b)) &&
          identical(SeuratObject::Embeddings(a, "pca"), SeuratObject::Embeddings(b, "pca")) &&
          identical(SeuratObject::Key(b[["pca"]]), "PC_") && identical(a@misc, b@misc)
        }})
        """
    )


def test_seurat_to_sce_and_back_through_h5ad(seurat_rds, tmp_path):
    a = io.read(seurat_rds)
    h5 = tmp_path / "a.h5ad"
    io.write(a, h5)
    b = io.read(h5)
    assert b.uns["amedl_io"]["kind"] == "seurat"
    sce_out = tmp_path / "as_sce.rda"
    io.write(b, sce_out, kind="sce", template=None)
    assert _r_true(
        f"""
        local({{
          e <- new.env(); n <- load("{sce_out}", envir = e); s <- e[[n]]; a <- readRDS("{seurat_rds}")
          suppressPackageStartupMessages(requireNamespace("SingleCellExperiment"))
          cd <- as.data.frame(SummarizedExperiment::colData(s))
          # .h5ad stores string columns as categoricals: 'label' comes back as a factor
          label_ok <- identical(as.character(cd$label), a@meta.data$label)
          cd$label <- as.character(cd$label)
          n == "sce" && methods::is(s, "SingleCellExperiment") && label_ok && identical(cd, a@meta.data) &&
          identical(SummarizedExperiment::assay(s, "counts"), SeuratObject::GetAssayData(a, slot = "counts")) &&
          identical(SummarizedExperiment::assay(s, "data"), SeuratObject::GetAssayData(a, slot = "data")) &&
          identical(unname(SingleCellExperiment::reducedDim(s, "PCA")), unname(SeuratObject::Embeddings(a, "pca")))
        }})
        """
    )


def test_latents_become_reductions_in_the_source_object(seurat_rds, sce_adata, tmp_path):
    rng = np.random.default_rng(0)
    a = io.read(seurat_rds)
    a.obsm["X_amedl_fe"] = rng.normal(size=(a.n_obs, 4)).astype(np.float32)
    a.obsm["X_amedl_re"] = rng.normal(size=(a.n_obs, 4)).astype(np.float32)
    a.uns["amedl"] = {"batch_key": "sample_id", "n_latent": 4}
    a.obs["new_col"] = np.arange(a.n_obs)
    out = tmp_path / "with_latents.rds"
    io.write(a, out)  # template "auto": the object it was read from, updated
    fe = a.obsm["X_amedl_fe"].astype(np.float64)
    ro = _r()
    assert _r_true(
        f"""
        local({{
          b <- readRDS("{out}"); a <- readRDS("{seurat_rds}")
          all(c("pca", "amedl_fe", "amedl_re") %in% SeuratObject::Reductions(b)) &&
          SeuratObject::Key(b[["amedl_fe"]]) == "amedlfe_" && SeuratObject::Key(b[["amedl_re"]]) == "amedlre_" &&
          identical(rownames(SeuratObject::Embeddings(b, "amedl_fe")), colnames(a)) &&
          identical(b[["pca"]], a[["pca"]]) && identical(b@commands, a@commands) &&
          SeuratObject::DefaultAssay(b[["amedl_re"]]) == "RNA" &&
          identical(SeuratObject::Misc(b[["amedl_fe"]])$amedl$batch_key, "sample_id") &&
          identical(b$new_col, stats::setNames(0:(ncol(a) - 1L), colnames(a))) &&
          identical(SeuratObject::GetAssayData(a, slot = "counts"), SeuratObject::GetAssayData(b, slot = "counts"))
        }})
        """
    )
    emb = np.asarray(ro.r(f'SeuratObject::Embeddings(readRDS("{out}"), "amedl_fe")'))
    np.testing.assert_allclose(emb, fe)

    s = sce_adata.copy()
    s.obsm["X_amedl_fe"] = rng.normal(size=(s.n_obs, 3))
    s.obsm["X_amedl_re"] = rng.normal(size=(s.n_obs, 3))
    out2 = tmp_path / "sce_latents.rds"
    io.write(s, out2)
    assert _r_true(
        f"""
        local({{
          suppressPackageStartupMessages(requireNamespace("SingleCellExperiment"))
          b <- readRDS("{out2}")
          all(c("TSNE", "AMEDL_FE", "AMEDL_RE") %in% SingleCellExperiment::reducedDimNames(b)) &&
          identical(dim(SingleCellExperiment::reducedDim(b, "AMEDL_FE")), c(1556L, 3L)) &&
          identical(rownames(SingleCellExperiment::reducedDim(b, "AMEDL_RE")), colnames(b))
        }})
        """
    )


def test_fresh_seurat_from_anndata_and_underscores(tmp_path):
    """An AnnData not read from R (simulated) written as Seurat: dashes replace underscores, with a warning."""
    import anndata as ad

    _r()
    X = sp.random(30, 8, density=0.5, format="csr", random_state=0)
    X.data = np.ceil(X.data * 10)
    a = ad.AnnData(
        X=X,
        obs=pd.DataFrame({"batch": pd.Categorical(["a", "b"] * 15)}, index=[f"c{i}" for i in range(30)]),
        var=pd.DataFrame(index=[f"g_{i}" for i in range(8)]),
    )
    a.obsm["X_amedl_fe"] = np.ones((30, 2))
    a.obsm["X_umap_fe"] = np.arange(60.0).reshape(30, 2)  # no R name of its own: "umap_fe" there, X_ again here
    out = tmp_path / "fresh.rds"
    with pytest.warns(UserWarning, match="'_' in feature names"):
        io.write(a, out, kind="seurat")
    b = io.read(out)
    assert list(b.var_names) == [f"g-{i}" for i in range(8)]
    assert (b.X != a.X).nnz == 0
    assert list(b.obs["batch"].cat.categories) == ["a", "b"]
    np.testing.assert_array_equal(b.obsm["X_amedl_fe"], np.ones((30, 2)))
    assert b.uns["amedl_io"]["reduction_keys"]["X_amedl_fe"] == "amedlfe_"
    assert sorted(b.obsm) == ["X_amedl_fe", "X_umap_fe"]
    np.testing.assert_array_equal(b.obsm["X_umap_fe"], a.obsm["X_umap_fe"])
    out_sce = tmp_path / "fresh_sce.rds"
    io.write(a, out_sce, kind="sce")
    assert _r_true(f'"umap_fe" %in% SingleCellExperiment::reducedDimNames(readRDS("{out_sce}"))')
    assert sorted(io.read(out_sce).obsm) == ["X_amedl_fe", "X_umap_fe"]


def test_errors_are_clear(sce_adata, tmp_path):
    ro = _r()
    not_sc = tmp_path / "iris.rds"
    ro.r(f'saveRDS(iris, "{not_sc}")')
    with pytest.raises(io.RConversionError, match="not a Seurat object or a SingleCellExperiment"):
        io.read(not_sc)
    with pytest.raises(ValueError, match="unknown suffix"):
        io.read(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        io.read(tmp_path / "missing.rds")
    with pytest.raises(ValueError, match="kind must be 'seurat' or 'sce'"):
        io.write(sce_adata, tmp_path / "x.rds", kind="loom")


def test_r_writes_are_atomic_with_umask_permissions(sce_adata, tmp_path):
    import os
    import stat

    target = tmp_path / "out.rds"
    old = os.umask(0o027)
    try:
        io.write(sce_adata, target, template=None)
    finally:
        os.umask(old)
    assert target.stat().st_size > 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.rds"]  # no temporary left behind


def test_import_amedl_does_not_start_r():
    code = "import sys, amedl, amedl.io; print('rpy2' in sys.modules, 'anndata2ri' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_amedl_fit_reads_and_writes_rda_like_rds(sce_adata, tmp_path, capsys):
    """.rda works wherever .rds does: the dispatcher is the one of amedl.io, for the CLI too."""
    from amedl.cli import main

    small = sce_adata[::6].copy()  # ~260 cells, all four samples
    src, out = tmp_path / "in.rda", tmp_path / "out.RData"
    io.write(small, src, template=None, object_name="cells")
    assert main(["fit", str(src), "--batch-key", "sample_id", "--out", str(out), "--epochs", "1",
                 "--n-latent", "4", "--n-top-genes", "50", "--quiet"]) == 0
    back = io.read(out)
    assert back.uns["amedl_io"]["object_name"] == "cells" and back.uns["amedl"]["batch_key"] == "sample_id"
    assert back.obsm["X_amedl_fe"].shape == (small.n_obs, 4)
    assert (back.X != small.X).nnz == 0
    assert main(["fit", str(src), "--batch-key", "sample_id", "--out", str(tmp_path / "x.loom")]) == 1
    err = capsys.readouterr().err
    assert "amedl: cannot write" in err and "unknown suffix '.loom'" in err


def test_writing_back_keeps_what_could_not_be_read(seurat_rds, sce_rda, tmp_path):
    """Was: a Date column left out on reading was deleted from the object written back; writing into an
    .rda dropped the file's other objects; a template that no longer fitted was replaced silently."""
    ro = _r()
    rds, rda = tmp_path / "dated.rds", tmp_path / "two.rda"
    ro.r(f"""
        local({{
          obj <- readRDS("{seurat_rds}")
          obj$day <- as.Date("2020-01-01") + seq_len(ncol(obj))
          saveRDS(obj, "{rds}")
          e <- new.env(); load("{sce_rda}", envir = e); sce <- e$example_sce
          notes <- "an R object beside the cells"
          save(sce, notes, file = "{rda}")
        }})""")
    with pytest.warns(UserWarning, match="'day'.*left out"):
        a = io.read(rds)
    assert "day" not in a.obs
    a.obs["new_col"] = 1
    io.write(a, rds)  # into the same file
    assert _r_true(f'local({{ b <- readRDS("{rds}"); inherits(b@meta.data$day, "Date") && all(b$new_col == 1) }})')

    s = io.read(rda)
    s.obsm["X_pca_mine"] = np.zeros((s.n_obs, 2))
    io.write(s, rda)  # into the file itself
    from amedl.cli import main  # and through the command line, which writes beside it and moves the file in

    assert main(["fit", str(rda), "--batch-key", "sample_id", "--out", str(rda), "--epochs", "1",
                 "--n-latent", "4", "--n-top-genes", "50", "--quiet"]) == 0
    assert _r_true(f"""local({{ e <- new.env(); n <- load("{rda}", envir = e)
        setequal(n, c("sce", "notes")) && identical(e$notes, "an R object beside the cells") &&
        all(c("pca_mine", "AMEDL_FE") %in% SingleCellExperiment::reducedDimNames(e$sce)) }})""")

    with pytest.warns(UserWarning, match="is not updated \\(its cells differ from the AnnData's\\)"):
        io.write(a[:100].copy(), tmp_path / "subset.rds")


def test_command_line_picks_the_object_and_the_assay(sce_adata, tmp_path, capsys):
    """Was: an .rda holding several objects, or a Seurat object whose default assay is not the counts',
    could be read only from Python (object_name=, assay=); the command line said to use object_name=."""
    from amedl.cli import main

    ro = _r()
    small = sce_adata[::6].copy()
    rda, rds = tmp_path / "two.rda", tmp_path / "two_assays.rds"
    io.write(small, tmp_path / "one.rds", template=None)
    ro.r(f"""
        local({{
          first <- readRDS("{tmp_path / 'one.rds'}")
          second <- first[1:300, ]
          save(first, second, file = "{rda}")
          obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = SingleCellExperiment::counts(first),
            meta.data = as.data.frame(SummarizedExperiment::colData(first))))
          obj[["ALT"]] <- SeuratObject::CreateAssayObject(counts = SingleCellExperiment::counts(first)[1:40, ] * 2)
          SeuratObject::DefaultAssay(obj) <- "ALT"
          saveRDS(obj, "{rds}")
        }})""")
    fit = ["fit", "--batch-key", "sample_id", "--epochs", "1", "--n-latent", "4", "--n-top-genes", "30", "--quiet"]

    assert main([*fit, str(rda), "--out", str(rda)]) == 1
    err = capsys.readouterr().err
    assert "holds 2 Seurat objects / SingleCellExperiments (first, second)" in err and "--object-name" in err
    assert "Error in" not in err  # R's call is not the user's business
    assert main([*fit, str(rda), "--out", str(rda), "--object-name", "second"]) == 0
    assert _r_true(f"""local({{ e <- new.env(); n <- load("{rda}", envir = e)
        setequal(n, c("first", "second")) && nrow(e$second) == 300 &&
        "AMEDL_FE" %in% SingleCellExperiment::reducedDimNames(e$second) &&
        !"AMEDL_FE" %in% SingleCellExperiment::reducedDimNames(e$first) }})""")

    out = tmp_path / "rna.h5ad"
    assert main([*fit, str(rds), "--out", str(out), "--assay", "RNA"]) == 0
    import anndata as ad

    back = ad.read_h5ad(out)
    assert back.n_vars == small.n_vars and back.uns["amedl_io"]["assay"] == "RNA"
    assert main([*fit, str(rds), "--out", str(out), "--assay", "ADT"]) == 1
    assert "has no assay 'ADT' (assays: " in capsys.readouterr().err

    for args, says in (([str(tmp_path / "one.rds"), "--object-name", "first"], "an .rds, which holds one object"),
                       ([str(rda), "--object-name", "first", "--assay", "RNA"], "pick the counts with layer=, command line --layer"),
                       ([str(out), "--assay", "RNA"], "--assay chooses what to read from an R file")):
        assert main([*fit, *args, "--out", str(tmp_path / "x.h5ad")]) == 1, args
        assert says in capsys.readouterr().err, args
    assert not (tmp_path / "x.h5ad").exists()


def test_a_file_another_process_writes_is_named_as_such(tmp_path):
    """Was: 'is it truncated, or another format renamed?' for a file held open for writing."""
    path = tmp_path / "busy.h5ad"
    amedl.datasets.simulate(n_cells=40, n_genes=20, n_batches=2, n_cell_types=2, seed=0).write_h5ad(path)
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'r+'); "
                               "print('open', flush=True); time.sleep(60)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(amedl.AMEDLInputError, match="is open for writing in another process"):
            amedl.io.read(path)
    finally:
        holder.kill()
        holder.wait()
