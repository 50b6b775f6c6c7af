# Inputs that are easy to get wrong: the error (or message) names the problem and the fix.

test_that("an SCTransform assay is refused by RunAMEDL() as by AMEDLIntegration(), before training", {
  obj <- sim_seurat()
  skip_if_no_pkg("sctransform")
  sct <- suppressWarnings(suppressMessages(Seurat::SCTransform(obj, verbose = FALSE)))
  expect_identical(SeuratObject::DefaultAssay(sct), "SCT")
  t0 <- Sys.time()
  # (was: the SCT assay's corrected counts fitted silently)
  msg <- paste0("RunAMEDL\\(\\): assay 'SCT' is an SCTransform assay, but aMEDL fits the raw counts and normalises them ",
                "itself.*Fix: .*RunAMEDL\\(obj, assay = \"RNA\", batch = ...\\)")
  expect_error(RunAMEDL(sct, batch = "batch", epochs = 500, verbose = FALSE), msg)
  SeuratObject::DefaultAssay(sct) <- "RNA"
  expect_error(RunAMEDL(sct, batch = "batch", assay = "SCT", epochs = 500, verbose = FALSE), msg)
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)
})

test_that("Seurat-style arguments and an assay without counts say what to use instead", {
  obj <- sim_seurat()
  t0 <- Sys.time()
  for (arg in c("reduction.name", "reduction.key")) {
    args <- c(list(obj, batch = "batch", epochs = 500, verbose = FALSE), stats::setNames(list("x"), arg))
    expect_error(do.call(RunAMEDL, args),
                 paste0("unknown argument\\(s\\): ", arg, "\nFix: .*reduction.prefix.*amedl_fe and amedl_re"))
  }
  # the normalised "integrated" assay of IntegrateData() as the default assay: no raw counts
  integrated <- obj
  # (SeuratObject 5 warns that the new assay has no counts: that is the point here)
  suppressWarnings(integrated[["integrated"]] <- SeuratObject::CreateAssayObject(data = SeuratLayerCounts(obj, layer = "data")))
  SeuratObject::DefaultAssay(integrated) <- "integrated"
  expect_error(RunAMEDL(integrated, batch = "batch", epochs = 500, verbose = FALSE),
               "assay 'integrated' has no layer 'counts'.*Fix: use the raw counts of assay 'RNA': assay = \"RNA\"")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)
})

test_that("a cells x genes matrix is named as the likely cause of a batch of the wrong length", {
  s <- sim_counts(n_cells = 30, n_genes = 20)
  # (was: "batch has 30 values for 20 cells" only)
  expect_error(RunAMEDL(Matrix::t(s$counts), batch = s$batch, epochs = 500),
               "batch has 30 values for 20 cells.*as many as the matrix has rows: is the matrix cells x genes\\?.*Matrix::t\\(counts\\)")
  expect_error(RunAMEDL(s$counts, batch = s$batch[1:10]), "has 10 values for 30 cells$")
})

test_that("an explicit n_top_genes wins over a Seurat object's variable features, and the message says which genes", {
  skip_if_no_engine()
  obj <- sim_seurat(nfeatures = 60)
  vf <- SeuratObject::VariableFeatures(obj)
  # (was: the 60 variable features, n_top_genes ignored)
  expect_message(out <- RunAMEDL(obj, batch = "batch", n_top_genes = 30, epochs = 2, n_latent = 4, verbose = TRUE),
                 "the engine picks 30 highly variable genes.*as `n_top_genes` is given \\(the 60 variable features of assay 'RNA' are not used\\)")
  expect_length(SeuratObject::Misc(out[["amedl_fe"]])$amedl$genes, 30L)
  expect_message(out <- RunAMEDL(obj, batch = "batch", epochs = 2, n_latent = 4, verbose = TRUE),
                 "using the 60 variable features of assay 'RNA'")
  expect_setequal(SeuratObject::Misc(out[["amedl_fe"]])$amedl$genes, vf)
  expect_message(out <- RunAMEDL(obj, batch = "batch", features = vf[1:20], n_top_genes = 30, epochs = 2, n_latent = 4,
                                 verbose = TRUE),
                 "modelling the 20 genes given as `features`")
  expect_setequal(SeuratObject::Misc(out[["amedl_fe"]])$amedl$genes, vf[1:20])
})

test_that("the matrix fit passed as object, and its model read back in a later session, say the fix", {
  skip_if_no_engine()
  s <- sim_counts()
  fit <- RunAMEDL(s$counts, batch = s$batch, epochs = 2, n_latent = 4, n_top_genes = 100, verbose = FALSE)
  msg <- "`object` is the list that RunAMEDL\\(\\) returned for a count matrix.*model = fit\\$model"
  # (was: "`model` is needed for a matrix" and "must be a matrix ..., not an object of class list")
  expect_error(AMEDLBatchEffects(fit, "b1", "b2"), msg)
  expect_error(AMEDLBatchEffects(fit, "b1", "b2", model = fit$model), msg)
  expect_error(AMEDLCounterfactual(fit, batch = "b1"), msg)
  expect_error(AMEDLCounterfactual(s$counts, batch = "b1", model = fit, batch_of_cells = s$batch),
               "`model` is the list that RunAMEDL\\(\\) returned.*model = fit\\$model")
  # saveRDS() / readRDS() keep no Python object: the model pointer is stale (as in a new session)
  stale <- unserialize(serialize(fit, NULL))
  stale_msg <- "^`model` is a Python model from an earlier R session.*Fix: pass the model's folder instead, model = \"path/to/model_dir\""
  # (was: "amedl: Unable to access object (object is from previous session and is now invalid)")
  expect_error(AMEDLCounterfactual(s$counts, batch = "b1", model = stale$model, batch_of_cells = s$batch), stale_msg)
  expect_error(AMEDLBatchEffects(s$counts, "b1", model = stale$model, batch_of_cells = s$batch, n_samples = 3), stale_msg)
})

test_that("a query's own batch mapped with adapt = FALSE: the follow-ups say so and suggest adapt = TRUE", {
  skip_if_no_engine()
  skip_if_no_pkg("SingleCellExperiment")
  s <- sim_counts()
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = s$counts),
                                                    colData = S4Vectors::DataFrame(batch = s$batch, row.names = colnames(s$counts)))
  dir <- tempfile("ref")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  ref <- RunAMEDL(sce[, sce$batch != "b3"], batch = "batch", epochs = 2, n_latent = 4, n_top_genes = 100,
                  model_dir = dir, verbose = FALSE)
  q <- RunAMEDL(sce[, sce$batch == "b3"], batch = "batch", model_dir = dir, adapt = FALSE, verbose = FALSE)
  expect_identical(S4Vectors::metadata(q)$amedl$query$new_batches, "b3")
  # (was: "unknown batch 'b3'; the model knows: b1, b2")
  msg <- paste0("batch 'b3' is one of this query's new batches, which RunAMEDL\\(\\) mapped onto the model in '.*' with ",
                "adapt = FALSE.*The model knows: b1, b2.*Fix: map the query with adapt = TRUE.*RunAMEDL\\(query, batch = \"batch\"")
  expect_error(AMEDLBatchEffects(q, "b3", n_samples = 3), msg)
  expect_error(AMEDLBatchEffects(q, "b1", "b3", n_samples = 3), msg)
  expect_error(AMEDLCounterfactual(q, batch = "b3"), msg)
  expect_error(AMEDLCounterfactual(q, batch = "zzz"), "^unknown batch 'zzz'; the model knows: b1, b2$")
})
