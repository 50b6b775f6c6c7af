# The model behind an object: a model_dir overwritten by another fit is detected by the
# record's fingerprint; an object never fitted takes its batches from the model's batch key.

small_sce <- function(n = 300) {
  sce <- amedl:::.amedl_repair_sce(muscat_sce())
  set.seed(1)
  sce[, sort(sample(ncol(sce), n))]
}

# As in a new R session: the fitted models this session keeps in memory are forgotten.
forget_models <- function() assign("models", list(), envir = amedl:::.amedl_state)

test_that("a model_dir overwritten by another fit is an error, not another model's results", {
  skip_if_no_engine()
  sce <- small_sce()
  dir <- tempfile("amedl-ow-")
  on.exit(unlink(c(dir, paste0(dir, "-A")), recursive = TRUE), add = TRUE)
  a <- RunAMEDL(sce, batch = "sample_id", epochs = 2, n_latent = 4, n_top_genes = 100, verbose = FALSE, model_dir = dir)
  rec <- S4Vectors::metadata(a)$amedl
  expect_match(rec$fingerprint, "^[0-9a-f]{16}$")
  expect_identical(as.character(AMEDLModel(a)$fingerprint), rec$fingerprint)
  # A's model, kept elsewhere too, to pass as model = later
  amedl_engine()$save_model(AMEDLModel(a), paste0(dir, "-A"))
  forget_models()
  expect_identical(as.character(AMEDLModel(a)$fingerprint), rec$fingerprint)  # the folder still holds A's model
  ref <- AMEDLCounterfactual(a, batch = "stim101")

  b <- RunAMEDL(sce, batch = "sample_id", epochs = 2, n_latent = 4, n_top_genes = 60, seed = 5, verbose = FALSE,
                model_dir = dir, overwrite = TRUE)
  expect_false(identical(S4Vectors::metadata(b)$amedl$fingerprint, rec$fingerprint))
  forget_models()
  # (was: A's counterfactual silently computed with B's model, on B's 60 genes)
  msg <- "the model in model_dir '.*' is not the model fitted for this object .*overwritten by another fit.*Fix: rerun RunAMEDL\\(\\).*model = "
  expect_error(AMEDLCounterfactual(a, batch = "stim101"), msg)
  expect_error(AMEDLBatchEffects(a, "stim101", n_samples = 2), msg)
  expect_error(AMEDLModel(a), msg)
  # B's own record matches the folder; A with its model passed explicitly works
  expect_silent(AMEDLModel(b))
  cf <- AMEDLCounterfactual(a, batch = "stim101", model = paste0(dir, "-A"))
  expect_equal(SingleCellExperiment::altExp(cf, "amedl_stim101"), SingleCellExperiment::altExp(ref, "amedl_stim101"))

  # a record made before amedl recorded fingerprints is not checked
  old <- a
  S4Vectors::metadata(old)$amedl$fingerprint <- NULL
  expect_identical(length(unlist(AMEDLModel(old)$genes)), 60L)
})

test_that("model = on an object never fitted reads each cell's batch from the model's batch key", {
  skip_if_no_engine()
  sce <- small_sce()
  fit <- RunAMEDL(sce, batch = "sample_id", epochs = 2, n_latent = 4, n_top_genes = 100, verbose = FALSE)
  m <- AMEDLModel(fit)
  fresh <- sce
  S4Vectors::metadata(fresh)$amedl <- NULL
  # (was: "the batch column 'batch' used for the fit is no longer in the colData")
  cf <- AMEDLCounterfactual(fresh, batch = "stim101", model = m)
  expect_equal(SummarizedExperiment::assay(SingleCellExperiment::altExp(cf, "amedl_stim101"), "logcounts"),
               AMEDLCounterfactual(SingleCellExperiment::counts(sce), batch = "stim101", model = m,
                                   batch_of_cells = sce$sample_id), tolerance = 1e-6)
  expect_gt(nrow(AMEDLBatchEffects(fresh, "stim101", "ctrl101", model = m, n_samples = 2)), 0)
  fresh$sample_id <- NULL
  expect_error(AMEDLCounterfactual(fresh, batch = "stim101", model = m),
               "no aMEDL fit is recorded .* the model's batch key, 'sample_id', which it does not have.*sce\\$sample_id <- ")
  expect_error(AMEDLBatchEffects(fresh, "stim101", model = m, n_samples = 2), "the model's batch key, 'sample_id'")

  skip_if_no_pkg("SeuratObject")
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(
    counts = SingleCellExperiment::counts(sce), meta.data = data.frame(donor = sce$sample_id, row.names = colnames(sce))))
  expect_error(AMEDLCounterfactual(obj, batch = "stim101", model = m),
               "Seurat object's meta.data column named as the model's batch key, 'sample_id'.*obj\\$sample_id <- ")
})

test_that("a model that is not available says how to keep it, for RunAMEDL and IntegrateLayers fits", {
  expect_error(amedl:::.find_model(list(model_id = "gone")),
               "not available.*Fix: rerun RunAMEDL\\(\\.\\.\\., model_dir = ")
  expect_error(amedl:::.find_model(list(model_id = "gone", method = "IntegrateLayers(method = AMEDLIntegration)")),
               "not available.*Fix: rerun IntegrateLayers\\(obj, method = AMEDLIntegration, \\.\\.\\., model_dir = ")
})
