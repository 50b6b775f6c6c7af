# R -> AnnData -> R through the Python conversion layer (amedl.io, rpy2 +
# anndata2ri), run in a separate Python process as a Python user would, and
# `amedl fit` on .rds files of both kinds.

python_with_rpy2 <- function() {
  py <- engine_python()
  if (!nzchar(py) || !file.exists(py)) skip("no Python for the amedl engine configured")
  probe <- paste("import anndata2ri, amedl.io, rpy2.robjects as ro",
                 "assert ro.r('as.logical(requireNamespace(\"SeuratObject\", quietly = TRUE))')[0]", sep = "; ")
  ok <- suppressWarnings(system2(py, c("-c", shQuote(probe)), stdout = TRUE, stderr = TRUE))
  if (!is.null(attr(ok, "status")) && attr(ok, "status") != 0) {
    skip(paste("rpy2/anndata2ri cannot start R from the engine's Python here:", paste(utils::tail(ok, 2), collapse = " ")))
  }
  py
}

run_py <- function(py, code) {
  f <- tempfile(fileext = ".py")
  writeLines(code, f)
  out <- suppressWarnings(system2(py, shQuote(f), stdout = TRUE, stderr = TRUE))
  status <- attr(out, "status")
  if (!is.null(status) && status != 0) stop("Python failed:\n", paste(utils::tail(out, 25), collapse = "\n"))
  out
}

test_that("SingleCellExperiment -> AnnData -> SingleCellExperiment keeps counts, names and metadata exactly", {
  py <- python_with_rpy2()
  sce <- muscat_sce()
  src <- tempfile(fileext = ".rds"); dst <- tempfile(fileext = ".rds"); h5 <- tempfile(fileext = ".h5ad")
  saveRDS(sce, src)
  run_py(py, c(
    "import warnings; warnings.simplefilter('ignore')",
    "from amedl import io",
    sprintf("a = io.read(%s)", deparse(src)),
    "assert a.n_obs == 1556 and a.n_vars == 1267, a.shape",
    sprintf("io.write(a, %s)", deparse(h5)),
    sprintf("b = io.read(%s)", deparse(h5)),
    sprintf("io.write(b, %s, template=None)", deparse(dst))))
  back <- readRDS(dst)
  expect_identical(SingleCellExperiment::counts(back), SingleCellExperiment::counts(sce))
  expect_identical(SingleCellExperiment::logcounts(back), SingleCellExperiment::logcounts(sce))
  expect_identical(dimnames(back), dimnames(sce))
  expect_identical(SummarizedExperiment::colData(back), SummarizedExperiment::colData(sce))
  expect_identical(as.data.frame(SummarizedExperiment::rowData(back)), as.data.frame(SummarizedExperiment::rowData(sce)))
  expect_identical(S4Vectors::metadata(back), S4Vectors::metadata(sce))
  expect_identical(SingleCellExperiment::reducedDim(back, "TSNE"), SingleCellExperiment::reducedDim(sce, "TSNE"))
})

test_that("Seurat -> AnnData -> Seurat keeps counts, data, names, metadata and reductions exactly", {
  py <- python_with_rpy2()
  obj <- muscat_seurat()
  skip_if_no_pkg("Seurat")
  obj <- Seurat::ScaleData(obj, verbose = FALSE)
  obj <- suppressWarnings(Seurat::RunPCA(obj, npcs = 5, verbose = FALSE))
  src <- tempfile(fileext = ".rds"); dst <- tempfile(fileext = ".rds")
  saveRDS(obj, src)
  run_py(py, c(
    "import warnings; warnings.simplefilter('ignore')",
    "from amedl import io",
    sprintf("a = io.read(%s)", deparse(src)),
    "assert a.uns['amedl_io']['kind'] == 'seurat' and 'X_pca' in a.obsm and 'data' in a.layers",
    sprintf("io.write(a, %s, template=None)", deparse(dst))))
  back <- readRDS(dst)
  lay <- function(o, l) SeuratLayerCounts(o, layer = l)
  expect_identical(lay(back, "counts"), lay(obj, "counts"))
  expect_identical(lay(back, "data"), lay(obj, "data"))
  expect_identical(colnames(back), colnames(obj))
  expect_identical(rownames(back), rownames(obj))
  expect_identical(back@meta.data, obj@meta.data)
  expect_identical(SeuratObject::VariableFeatures(back), SeuratObject::VariableFeatures(obj))
  expect_identical(SeuratObject::Embeddings(back, "pca"), SeuratObject::Embeddings(obj, "pca"))
  expect_equal(SeuratObject::Key(back[["pca"]]), SeuratObject::Key(obj[["pca"]]))
})

test_that("amedl fit x.rds --out y.rds works for a SingleCellExperiment and a Seurat object", {
  py <- python_with_rpy2()
  cli <- file.path(dirname(py), "amedl")
  skip_if(!file.exists(cli), "the amedl command is not installed next to the engine's Python")
  sce <- muscat_sce()
  keep <- unlist(lapply(split(seq_len(ncol(sce)), sce$sample_id), utils::head, 80))
  sce <- sce[, keep]
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(
    counts = SingleCellExperiment::counts(sce), meta.data = as.data.frame(SummarizedExperiment::colData(sce))))
  for (kind in c("sce", "seurat")) {
    x <- tempfile(fileext = ".rds"); y <- tempfile(fileext = ".rds")
    saveRDS(if (kind == "sce") sce else obj, x)
    out <- suppressWarnings(system2(cli, c("fit", shQuote(x), "--batch-key", "sample_id", "--out", shQuote(y),
                                           "--epochs", "1", "--n-latent", "6", "--n-top-genes", "150", "--quiet"),
                                    stdout = TRUE, stderr = TRUE))
    expect_null(attr(out, "status"))
    expect_true(file.exists(y))
    res <- readRDS(y)
    if (kind == "sce") {
      expect_s4_class(res, "SingleCellExperiment")
      expect_true(all(c("AMEDL_FE", "AMEDL_RE") %in% SingleCellExperiment::reducedDimNames(res)))
      expect_equal(dim(SingleCellExperiment::reducedDim(res, "AMEDL_FE")), c(ncol(sce), 6L))
      expect_identical(rownames(SingleCellExperiment::reducedDim(res, "AMEDL_RE")), colnames(sce))
      expect_identical(SingleCellExperiment::counts(res), SingleCellExperiment::counts(sce))
      # `amedl fit` and RunAMEDL() record the same fit the same way (uns['amedl'] / metadata()$amedl)
      if (isTRUE(amedl_available())) {
        fit <- RunAMEDL(sce, batch = "sample_id", epochs = 1, n_latent = 6, n_top_genes = 150, verbose = FALSE)
        cli_rec <- S4Vectors::metadata(res)$amedl
        r_rec <- S4Vectors::metadata(fit)$amedl
        expect_setequal(setdiff(names(r_rec), c("model_id", "model_dir", "assay", "object_kind")), names(cli_rec))
        shared <- setdiff(names(cli_rec), "layer")  # the CLI reads X, RunAMEDL the counts assay
        expect_identical(r_rec[shared], cli_rec[shared])
        expect_identical(cli_rec$epochs, list(fe = 1L, re = 1L))
      }
    } else {
      expect_s4_class(res, "Seurat")
      expect_true(all(c("amedl_fe", "amedl_re") %in% SeuratObject::Reductions(res)))
      expect_equal(SeuratObject::Key(res[["amedl_fe"]]), "amedlfe_")
      expect_identical(rownames(SeuratObject::Embeddings(res, "amedl_re")), colnames(obj))
      expect_equal(ncol(SeuratObject::Embeddings(res, "amedl_fe")), 6L)
    }
  }
})

test_that("a Seurat object written by `amedl fit` (recorded layer \"\") works with AMEDLCounterfactual and AMEDLBatchEffects", {
  py <- python_with_rpy2()
  cli <- file.path(dirname(py), "amedl")
  skip_if(!file.exists(cli), "the amedl command is not installed next to the engine's Python")
  skip_if_no_engine()
  sce <- muscat_sce()
  keep <- unlist(lapply(split(seq_len(ncol(sce)), sce$sample_id), utils::head, 80))
  sce <- sce[, keep]
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(
    counts = SingleCellExperiment::counts(sce), meta.data = as.data.frame(SummarizedExperiment::colData(sce))))
  x <- tempfile(fileext = ".rds"); y <- tempfile(fileext = ".rds"); m <- tempfile("amedl-cli-model-")
  on.exit(unlink(c(x, y, m), recursive = TRUE), add = TRUE)
  saveRDS(obj, x)
  out <- suppressWarnings(system2(cli, c("fit", shQuote(x), "--batch-key", "sample_id", "--out", shQuote(y),
                                         "--model-dir", shQuote(m), "--epochs", "1", "--n-latent", "6",
                                         "--n-top-genes", "150", "--quiet"), stdout = TRUE, stderr = TRUE))
  expect_null(attr(out, "status"))
  res <- readRDS(y)
  p <- SeuratObject::Misc(res[["amedl_fe"]])$amedl
  expect_identical(p$batch_key, "sample_id")
  expect_false(isTRUE(nzchar(p$layer)))  # the command line records no layer: read as the counts layer
  cf <- AMEDLCounterfactual(res, batch = "ctrl101", model = m)
  x_cf <- SeuratLayerCounts(cf, assay = "amedl_ctrl101", layer = "data")
  expect_identical(colnames(x_cf), colnames(obj))
  ref <- AMEDLCounterfactual(SeuratLayerCounts(obj), batch = "ctrl101", model = m,
                             batch_of_cells = as.character(obj$sample_id))
  expect_equal(as.matrix(x_cf), ref[rownames(x_cf), ], tolerance = 1e-6)
  de <- AMEDLBatchEffects(res, "stim101", "ctrl101", model = m, n_samples = 5)
  expect_equal(nrow(de), length(p$genes))
})
