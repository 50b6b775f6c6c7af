# AMEDLCounterfactual() and AMEDLBatchEffects() use the fit's own batches and
# recorded inputs; names are checked before any training.

test_that("a batch vector on a Seurat object is kept in meta.data$amedl_batch and used by the follow-ups", {
  skip_if_no_engine()
  obj <- muscat_seurat()
  donors <- as.character(obj$sample_id)
  # an unrelated column named "batch" (which the follow-ups used to read) must not be used
  obj$batch <- rep(c("ctrl101", "stim107"), length.out = ncol(obj))
  out <- do.call(RunAMEDL, c(list(obj, batch = donors), FAST))
  p <- SeuratObject::Misc(out[["amedl_fe"]])$amedl
  expect_identical(p$batch_key, "amedl_batch")
  expect_identical(unname(out$amedl_batch), donors)
  expect_identical(out$batch, obj$batch)  # untouched
  expect_identical(out@commands[["RunAMEDL.RNA"]]@params$batch_key, "amedl_batch")
  fit <- amedl:::.seurat_fit_inputs(out, NULL, "amedl_fe")
  expect_identical(as.character(fit$batch), donors)

  # the follow-ups give what the matrix method gives with the true batches
  counts <- SeuratLayerCounts(out)
  m <- AMEDLModel(out)
  de <- AMEDLBatchEffects(out, "stim101", "ctrl101", n_samples = 5)
  de_ref <- AMEDLBatchEffects(counts, "stim101", "ctrl101", model = m, batch_of_cells = donors, n_samples = 5)
  expect_equal(de, de_ref)
  cf <- AMEDLCounterfactual(out, batch = "ctrl107")
  expect_equal(as.matrix(SeuratLayerCounts(cf, assay = "amedl_ctrl107", layer = "data")),
               AMEDLCounterfactual(counts, batch = "ctrl107", model = m, batch_of_cells = donors)[rownames(cf[["amedl_ctrl107"]]), ],
               tolerance = 1e-6)

  # the same vector again may reuse the column; other values are never written over it
  again <- do.call(RunAMEDL, c(list(out, batch = donors, reduction.prefix = "again"), FAST))
  expect_identical(unname(again$amedl_batch), donors)
  expect_error(do.call(RunAMEDL, c(list(out, batch = rev(donors)), FAST)),
               "column 'amedl_batch'.*already holds other values.*obj\\$amedl_batch <- NULL")
  # a batch column changed after the fit is an error, never a silent mix-up
  changed <- out
  changed$amedl_batch[1] <- "zzz"
  expect_error(AMEDLCounterfactual(changed, batch = "ctrl107"),
               "the batch column 'amedl_batch' .* holds batches that the fit did not have \\('zzz'")
  changed$amedl_batch <- NULL
  expect_error(AMEDLBatchEffects(changed, "stim101"), "the batch column 'amedl_batch' used for the fit is no longer in")
})

test_that("a batch vector on a SingleCellExperiment is kept in colData$amedl_batch and used by the follow-ups", {
  skip_if_no_engine()
  sce <- muscat_sce()
  donors <- as.character(sce$sample_id)
  sce$batch <- rep(c("x", "y"), length.out = ncol(sce))
  out <- do.call(RunAMEDL, c(list(sce, batch = donors), FAST))
  p <- S4Vectors::metadata(out)$amedl
  expect_identical(p$batch_key, "amedl_batch")
  expect_identical(out$amedl_batch, donors)
  expect_identical(out$batch, sce$batch)
  expect_identical(as.character(amedl:::.sce_fit_inputs(out, NULL)$batch), donors)
  cf <- AMEDLCounterfactual(out, batch = "stim101")
  x <- SummarizedExperiment::assay(SingleCellExperiment::altExp(cf, "amedl_stim101"), "logcounts")
  ref <- AMEDLCounterfactual(SingleCellExperiment::counts(sce), batch = "stim101", model = AMEDLModel(out),
                             batch_of_cells = donors)
  expect_equal(x, ref[rownames(x), ], tolerance = 1e-6)
  expect_error(AMEDLCounterfactual(out, batch = "stim101", sce.as = "assay", name = "counts"),
               "would replace the assay 'counts'")

  taken <- sce
  taken$amedl_batch <- rev(donors)
  expect_error(RunAMEDL(taken, batch = donors, epochs = 500, verbose = FALSE),
               "colData column 'amedl_batch'.*already holds other values.*sce\\$amedl_batch <- NULL")
})

test_that("reduction.prefix and the counterfactual's name are checked before any training", {
  obj <- muscat_seurat()
  # epochs = 500 on 1556 cells would take minutes: these errors come first
  t0 <- Sys.time()
  expect_error(RunAMEDL(obj, batch = "sample_id", epochs = 500, verbose = FALSE, reduction.prefix = "_1"),
               "`reduction.prefix = \"_1\"` must start with a letter")
  expect_error(RunAMEDL(obj, batch = "sample_id", epochs = 500, verbose = FALSE, reduction.prefix = NA_character_),
               "`reduction.prefix` must be a single non-empty string")
  expect_error(RunAMEDL(obj, batch = "sample_id", epochs = 500, verbose = FALSE, reduction.prefix = c("a", "b")),
               "`reduction.prefix` must be a single non-empty string")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)

  skip_if_no_engine()
  out <- do.call(RunAMEDL, c(list(obj, batch = "sample_id"), FAST))
  expect_error(AMEDLCounterfactual(out, batch = "ctrl101", name = "RNA"),
               "`name = \"RNA\"` is an assay of the object that is not an aMEDL counterfactual")
  expect_error(AMEDLCounterfactual(out, batch = "ctrl101", name = "amedl_fe"), "is the name of a reduction")
  expect_error(AMEDLCounterfactual(out, batch = "ctrl101", name = ""), "`name` must be a single non-empty string")
  expect_error(AMEDLCounterfactual(out, batch = c("ctrl101", "stim101")), "`batch` must be a single batch name")
  expect_error(AMEDLCounterfactual(out, batch = "ctrl101", name = "1cf"), "not a syntactic R name.*'X1cf'")
  # a name that does not start with a letter still gets a valid key; a counterfactual may be replaced
  cf <- AMEDLCounterfactual(out, batch = "ctrl101", name = ".cf")
  expect_match(SeuratObject::Key(cf[[".cf"]]), "^[a-z][a-z0-9]*_$")
  cf <- AMEDLCounterfactual(cf, batch = "stim101", name = ".cf")
  expect_identical(SeuratObject::Misc(cf[[".cf"]], slot = "amedl")$counterfactual_batch, "stim101")
})

test_that("a recorded layer that is empty or NA means the counts layer", {
  skip_if_no_engine()
  obj <- muscat_seurat()
  out <- do.call(RunAMEDL, c(list(obj, batch = "sample_id"), FAST))
  ref <- AMEDLCounterfactual(out, batch = "ctrl101")
  for (empty in list("", NA_character_)) {
    rec <- out
    misc <- SeuratObject::Misc(rec[["amedl_fe"]])
    misc$amedl$layer <- empty
    rec@reductions$amedl_fe@misc <- misc
    cf <- AMEDLCounterfactual(rec, batch = "ctrl101")
    expect_equal(SeuratLayerCounts(cf, assay = "amedl_ctrl101", layer = "data"),
                 SeuratLayerCounts(ref, assay = "amedl_ctrl101", layer = "data"))
  }
  expect_null(amedl:::.recorded(""))
  expect_null(amedl:::.recorded(NA))
  expect_identical(amedl:::.recorded("counts"), "counts")
})

test_that("AMEDLIntegration's groups are read back from the record by cell, not from a meta.data column", {
  params <- list(batch_key = "groups", method = "IntegrateLayers(method = AMEDLIntegration)",
                 batches = c("a", "b"), cell_batches = c(c1 = "a", c2 = "b", c3 = "a"))
  meta <- data.frame(groups = c("b", "b", "b"), row.names = c("c3", "c2", "c1"))
  got <- amedl:::.recorded_batches(params, meta, c("c3", "c2", "c1"), NULL, "counts", "meta.data", "obj")
  expect_identical(got, c("a", "b", "a"))
  expect_error(amedl:::.recorded_batches(params, meta, c("c1", "c9"), NULL, "counts", "meta.data", "obj"),
               "1 cell\\(s\\) have no batch in the record of the fit, which used the `groups`.*'c9'.*Rerun IntegrateLayers\\(")
  # a layer-split fit records the split by cell too, so it is found after JoinLayers() (split NULL)
  split_params <- list(batch_key = "layer_split", batches = c("a", "b"), cell_batches = c(c1 = "a", c2 = "b", c3 = "a"))
  expect_identical(amedl:::.recorded_batches(split_params, meta, c("c3", "c1"), NULL, "counts", "meta.data", "obj"),
                   c("a", "a"))
  # a split fit by an older amedl (no cell_batches) whose layer is no longer split says so, and
  # names the function that made the fit
  expect_error(amedl:::.recorded_batches(list(batch_key = "layer_split"), meta, rownames(meta), NULL, "counts",
                                         "meta.data", "obj"),
               "split of the 'counts' layer .* no longer split.*rerun RunAMEDL\\(obj, batch = ")
  expect_error(amedl:::.recorded_batches(list(batch_key = "layer_split", assay = "RNA", method = params$method), meta,
                                         rownames(meta), NULL, "counts", "meta.data", "obj"),
               "obj\\[\\[\"RNA\"\\]\\] <- split.*rerun IntegrateLayers\\(obj, method = AMEDLIntegration")
})

test_that("AMEDLBatchEffects checks n_samples, delta, credible and seed, and puts group first", {
  skip_if_no_engine()
  sce <- amedl:::.amedl_repair_sce(muscat_sce())
  sce <- sce[, seq(1, ncol(sce), by = 5)]  # every sample
  fit <- RunAMEDL(sce, batch = "sample_id", epochs = 2, n_latent = 4, n_top_genes = 80, verbose = FALSE)
  # (were: an integer overflow message, silent truncation to 2, all p_effect 1, Python errors)
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = "a"), "`n_samples` must be a whole number >= 2, not \"a\"")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = 2.7), "`n_samples` must be a whole number >= 2, not 2.7")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = NA), "`n_samples` must be a whole number")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = 5, delta = -1), "`delta` must be a single number >= 0.*not -1")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = 5, delta = c(1, 2)), "`delta` must be a single number")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = 5, credible = 1.5), "`credible` must be a single number between 0 and 1")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = 5, seed = NA), "`seed` must be a whole number >= 0, not NA")
  expect_error(AMEDLBatchEffects(SingleCellExperiment::counts(sce), "stim101", model = AMEDLModel(fit),
                                 batch_of_cells = sce$sample_id, n_samples = 5, delta = -1), "`delta` must be")
  expect_error(AMEDLBatchEffects(fit, "stim101", n_samples = 5, max_cells = 0), "`max_cells` must be a whole number >= 1 \\(or NULL\\)")
  expect_error(AMEDLBatchEffects(fit, "stim101", "stim101", n_samples = 5), "`batch_a` and `batch_b` are the same batch \\('stim101'\\)")
  be <- AMEDLBatchEffects(fit, "stim101", group.by = "cluster_id", n_samples = 3)
  expect_identical(names(be), c("group", "gene", "lfc", "lfc_sd", "ci_low", "ci_high", "p_effect", "credible",
                                "mean_a", "mean_b", "n_cells"))
  # max_cells cuts each group to at most that many cells and keeps smaller groups whole
  sizes <- table(sce$cluster_id)
  cap <- as.integer(sort(sizes)[2])
  capped <- AMEDLBatchEffects(fit, "stim101", group.by = "cluster_id", n_samples = 3, max_cells = cap)
  n <- tapply(capped$n_cells, capped$group, `[`, 1)
  expect_equal(as.vector(n), as.vector(pmin(sizes[names(n)], cap)))
  expect_true(any(sizes > cap))
})

test_that("new reduction and counterfactual keys may not be keys the object already has", {
  obj <- muscat_seurat()
  obj <- obj[, seq(1, ncol(obj), by = 5)]  # every sample
  skip_if_no_engine()
  out <- RunAMEDL(obj, batch = "sample_id", epochs = 2, n_latent = 4, n_top_genes = 80, verbose = FALSE,
                  reduction.prefix = "amedl.s")
  t0 <- Sys.time()
  # (was: Seurat's "Key 'amedlsfe_' taken, using '<random>_'")
  expect_error(RunAMEDL(out, batch = "sample_id", epochs = 500, verbose = FALSE, reduction.prefix = "amedl_s"),
               "the key 'amedlsfe_' of the new reduction 'amedl_s_fe' is already the key of reduction 'amedl.s_fe'.*Fix: choose another `reduction.prefix`")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)
  # the same prefix replaces its own reductions (their keys are not "taken")
  again <- RunAMEDL(out, batch = "sample_id", epochs = 2, n_latent = 4, n_top_genes = 80, verbose = FALSE,
                    reduction.prefix = "amedl.s")
  expect_identical(SeuratObject::Key(again[["amedl.s_fe"]]), "amedlsfe_")
  expect_error(AMEDLCounterfactual(out, batch = "ctrl101", name = "amedlsre"),
               "the key 'amedlsre_' of the new assay 'amedlsre' is already the key of reduction 'amedl.s_re'")
  # a counterfactual adds an assay without warnings (Seurat 5: was "Layer counts isn't present ...")
  expect_no_warning(cf <- AMEDLCounterfactual(out, batch = "ctrl101", reduction = "amedl.s_fe"))
  expect_identical(class(cf[["amedl_ctrl101"]])[1], class(out[["RNA"]])[1])
})
