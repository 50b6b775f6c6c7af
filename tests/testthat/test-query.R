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
  # (FAST's training arguments are not used when mapping: a warning says so)
  expect_warning(again <- do.call(RunAMEDL, c(list(sce[, 1:50], batch = "sample_id", model_dir = dir), FAST)),
                 "trains nothing: n_latent, n_top_genes, epochs are ignored")
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

test_that("training arguments given when mapping are named in a warning; adapted batches in a later session", {
  skip_if_no_engine()
  stored <- muscat_sce()
  sce <- SingleCellExperiment::SingleCellExperiment(
    list(counts = SingleCellExperiment::counts(stored)), colData = SummarizedExperiment::colData(stored))
  ref <- sce[, sce$sample_id != "stim107"]
  query <- sce[, sce$sample_id == "stim107"]
  dir <- tempfile("amedl-ref-")
  adir <- tempfile("amedl-adapted-")
  on.exit(unlink(c(dir, adir), recursive = TRUE), add = TRUE)
  # adapted_model_dir needs query mapping: an error before training
  expect_error(do.call(RunAMEDL, c(list(ref, batch = "sample_id", model_dir = dir, adapted_model_dir = adir), FAST)),
               "`adapted_model_dir` .* needs query mapping.*holds no saved model")
  expect_false(dir.exists(dir))
  ref <- do.call(RunAMEDL, c(list(ref, batch = "sample_id", model_dir = dir), FAST))
  files <- list.files(dir, full.names = TRUE)
  saved <- tools::md5sum(files)
  dim_fe <- function(x) dim(SingleCellExperiment::reducedDim(x, "AMEDL_FE"))

  expect_warning(
    q <- RunAMEDL(query, batch = "sample_id", model_dir = dir, n_latent = 3, epochs = 99, preset = "paper",
                  features = rownames(query)[1:50], n_top_genes = 100,
                  settings = amedl_options(lr = 5, threads = 1), verbose = FALSE),
    paste0("model_dir '.*' holds a saved model, so RunAMEDL\\(\\) maps the object onto it and trains nothing: ",
           "features, n_latent, n_top_genes, epochs, preset, settings \\(lr\\) are ignored.*overwrite = TRUE"))
  expect_equal(dim_fe(q), c(ncol(query), 8L))  # the saved model's latent size, not 3
  expect_no_warning(q <- RunAMEDL(query, batch = "sample_id", model_dir = dir, verbose = FALSE,
                                  settings = amedl_options(threads = 1)))
  p <- S4Vectors::metadata(q)$amedl
  expect_identical(p$query$unseen_batches, "adapted")

  # a later R session: nothing in memory, and model_dir has the reference model without 'stim107'
  state <- amedl:::.amedl_state
  state$models[[p$model_id]] <- NULL
  msg <- paste0("'stim107' of this object were adapted onto the model in .* in an earlier R session.*",
                "rerun RunAMEDL\\(object, batch = \"sample_id\", model_dir = .*adapted_model_dir")
  expect_error(AMEDLModel(q), msg)
  expect_error(AMEDLCounterfactual(q, batch = "stim107"), msg)
  expect_error(AMEDLBatchEffects(q, "stim107", "ctrl107", n_samples = 5), msg)
  # the fix the error gives: map again in this session
  q2 <- RunAMEDL(q, batch = "sample_id", model_dir = dir, verbose = FALSE)
  expect_true("stim107" %in% unlist(AMEDLModel(q2)$batches))
  expect_equal(SingleCellExperiment::reducedDim(q2, "AMEDL_FE"), SingleCellExperiment::reducedDim(q, "AMEDL_FE"),
               tolerance = 1e-5)

  # adapted_model_dir keeps the adapted model on disk; model_dir is not changed
  expect_message(qa <- RunAMEDL(query, batch = "sample_id", model_dir = dir, adapted_model_dir = adir),
                 "the adapted model is saved in")
  pa <- S4Vectors::metadata(qa)$amedl
  expect_identical(normalizePath(pa$model_dir), normalizePath(adir))
  expect_identical(normalizePath(pa$query$reference_model_dir), normalizePath(dir))
  expect_identical(tools::md5sum(files), saved)
  state$models[[pa$model_id]] <- NULL
  expect_true("stim107" %in% unlist(AMEDLModel(qa)$batches))  # loaded from adapted_model_dir
  cf <- AMEDLCounterfactual(qa, batch = "stim107")
  expect_true(all(is.finite(SummarizedExperiment::assay(SingleCellExperiment::altExp(cf, "amedl_stim107"), "logcounts"))))
  # mapping onto the adapted model later finds no new batch and gives the same latents
  qb <- RunAMEDL(query, batch = "sample_id", model_dir = adir, verbose = FALSE)
  expect_length(S4Vectors::metadata(qb)$amedl$query$new_batches, 0L)
  expect_equal(SingleCellExperiment::reducedDim(qb, "AMEDL_FE"), SingleCellExperiment::reducedDim(qa, "AMEDL_FE"),
               tolerance = 1e-5)

  # adapted_model_dir is never a folder that holds something, nor model_dir, and needs adapt = TRUE
  expect_error(RunAMEDL(query, batch = "sample_id", model_dir = dir, adapted_model_dir = adir),
               "already holds an amedl model, which RunAMEDL\\(\\) does not replace")
  expect_error(RunAMEDL(query, batch = "sample_id", model_dir = dir, adapted_model_dir = dir), "is model_dir itself")
  expect_error(RunAMEDL(query, batch = "sample_id", model_dir = dir, adapted_model_dir = tempfile(), adapt = FALSE),
               "needs adapt = TRUE")
  notes <- tempfile("amedl-notes-")
  dir.create(notes)
  writeLines("my notes", file.path(notes, "notes.txt"))
  expect_error(RunAMEDL(query, batch = "sample_id", model_dir = dir, adapted_model_dir = notes),
               "is not empty and is not an amedl model")
  expect_identical(list.files(notes), "notes.txt")
  unlink(notes, recursive = TRUE)
})
