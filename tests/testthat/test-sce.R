test_that("RunAMEDL on the muscat SingleCellExperiment adds AMEDL_FE and AMEDL_RE", {
  skip_if_no_engine()
  sce <- muscat_sce()
  dir <- tempfile("amedl-model-")
  out <- do.call(RunAMEDL, c(list(sce, batch = "sample_id", model_dir = dir), FAST))
  expect_s4_class(out, "SingleCellExperiment")
  rd <- SingleCellExperiment::reducedDimNames(out)
  expect_true(all(c("AMEDL_FE", "AMEDL_RE", "TSNE") %in% rd))
  for (n in c("AMEDL_FE", "AMEDL_RE")) {
    m <- SingleCellExperiment::reducedDim(out, n)
    expect_equal(dim(m), c(ncol(sce), 8L))
    expect_identical(rownames(m), colnames(sce))
  }
  # the data are untouched
  expect_identical(SingleCellExperiment::counts(out), SingleCellExperiment::counts(sce))
  expect_identical(SummarizedExperiment::colData(out), SummarizedExperiment::colData(sce))
  p <- S4Vectors::metadata(out)$amedl
  expect_equal(p$batch_key, "sample_id")
  expect_equal(p$assay, "counts")
  expect_equal(p$n_latent, 8L)
  expect_setequal(p$batches, levels(sce$sample_id))
  expect_true(dir.exists(p$model_dir))
  expect_true(file.exists(file.path(p$model_dir, "amedl.json")))

  # counterfactual as an altExp of the model genes, and as an assay with NA elsewhere
  cf <- AMEDLCounterfactual(out, batch = "stim101")
  alt <- SingleCellExperiment::altExp(cf, "amedl_stim101")
  x <- SummarizedExperiment::assay(alt, "logcounts")
  expect_identical(colnames(x), colnames(sce))
  expect_setequal(rownames(x), p$genes)
  expect_true(all(is.finite(x)))
  cf2 <- AMEDLCounterfactual(out, batch = "stim101", sce.as = "assay", name = "cf")
  full <- SummarizedExperiment::assay(cf2, "cf")
  expect_equal(dim(full), dim(sce))
  expect_equal(full[rownames(x), ], x)
  expect_true(all(is.na(full[setdiff(rownames(sce), rownames(x)), ])))

  # a new session has no model in memory: it is loaded from model_dir
  state <- amedl:::.amedl_state
  expect_false(is.null(state$models[[p$model_id]]))
  state$models[[p$model_id]] <- NULL
  cf3 <- AMEDLCounterfactual(out, batch = "stim101")
  expect_equal(SummarizedExperiment::assay(SingleCellExperiment::altExp(cf3, "amedl_stim101"), "logcounts"), x,
               tolerance = 1e-5)
  unlink(dir, recursive = TRUE)
  expect_error(AMEDLCounterfactual(out, batch = "stim101"), "not available.*model_dir")
})
