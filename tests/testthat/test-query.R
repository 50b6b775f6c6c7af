# Query mapping: RunAMEDL(query, model_dir = <saved model>) embeds new donors with a trained model.

test_that("a Seurat query of unseen samples is mapped onto a model saved from an SCE reference", {
  skip_if_no_engine()
  stored <- muscat_sce()
  # a fresh SCE of the same cells (subsetting the stored object needs packages newer than Debian's)
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = SingleCellExperiment::counts(stored)), colData = SummarizedExperiment::colData(stored))
  rownames(sce) <- gsub("_", "-", rownames(sce))  # the gene names as Seurat spells them
  ref <- sce[, sce$sample_id != "stim107"]
  ref$sample_id <- droplevels(ref$sample_id)
  dir <- tempfile("amedl-ref-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  ref <- do.call(RunAMEDL, c(list(ref, batch = "sample_id", model_dir = dir), FAST))
  saved <- tools::md5sum(list.files(dir, full.names = TRUE))

  obj <- muscat_seurat()
  query <- obj[, obj$sample_id == "stim107"]
  expect_message(
    query <- RunAMEDL(query, batch = "sample_id", model_dir = dir, verbose = TRUE),
    "mapped 306 cells onto the model.*1 new batch.*stim107.*adapt = TRUE"
  )
  for (kind in c("fe", "re")) {
    emb <- SeuratObject::Embeddings(query, paste0("amedl_", kind))
    expect_equal(dim(emb), c(306L, 8L))
    expect_true(all(is.finite(emb)))
  }
  p <- SeuratObject::Misc(query[["amedl_fe"]])$amedl
  expect_identical(p$query$new_batches, "stim107")
  expect_identical(p$query$unseen_batches, "adapted")
  expect_true("stim107" %in% p$batches)
  # the reference model on disk is unchanged
  expect_identical(tools::md5sum(list.files(dir, full.names = TRUE)), saved)
  # the adapted batch is a batch of the query's model: compare it with a reference sample
  de <- AMEDLBatchEffects(query, batch_a = "stim107", batch_b = "ctrl107", n_samples = 10)
  expect_true(is.data.frame(de) && nrow(de) == length(p$genes))
  # the FE latent of a reference cell does not depend on the mapping
  again <- do.call(RunAMEDL, c(list(sce[, 1:50], batch = "sample_id", model_dir = dir), FAST))
  expect_equal(SingleCellExperiment::reducedDim(again, "AMEDL_FE"),
               SingleCellExperiment::reducedDim(ref, "AMEDL_FE")[colnames(sce)[1:50], ], tolerance = 1e-5)

  # without adaptation the batch-membership predictor places the new sample
  sce_q <- sce[, sce$sample_id == "stim107"]
  expect_message(
    predicted <- RunAMEDL(sce_q, batch = "sample_id", model_dir = dir, adapt = FALSE, verbose = TRUE),
    "batch-membership predictor"
  )
  expect_identical(S4Vectors::metadata(predicted)$amedl$query$unseen_batches, "predict")
  # adapted, the new sample's latent intercepts are removed from its FE latent; not adapted, its cells
  # keep the encoder's latent: the two differ by those intercepts alone, small next to the latent's spread
  adapted_fe <- SeuratObject::Embeddings(query, "amedl_fe")
  shift <- SingleCellExperiment::reducedDim(predicted, "AMEDL_FE") - adapted_fe
  expect_gt(max(abs(shift)), 1e-3)
  expect_lt(sqrt(mean(rowSums(shift^2))), 0.5 * sqrt(mean(rowSums(scale(adapted_fe, scale = FALSE)^2))))
  expect_error(RunAMEDL(sce_q, batch = "sample_id", model_dir = dir, adapt = NA), "`adapt` must be TRUE or FALSE")
})
