# Seurat 5 objects: split layers, RunAMEDL and IntegrateLayers(method = AMEDLIntegration).
# Runs in the Seurat 5 lane (scripts/seurat5-lane: R 4.5, Seurat 5, SeuratObject 5);
# skipped under SeuratObject 4 (Debian bookworm's default lane).

s5_skip <- function() {
  for (pkg in c("SeuratObject", "Seurat")) {
    if (!requireNamespace(pkg, quietly = TRUE)) skip(paste(pkg, "is not installed"))
    v <- utils::packageVersion(pkg)
    if (v < "5.0.0") {
      skip(sprintf("%s %s installed; Seurat 5 objects are tested in the Seurat 5 lane (scripts/seurat5-lane)", pkg, v))
    }
  }
  skip_if_not_installed("SingleCellExperiment")
}

# The muscat SingleCellExperiment from the shared data (helper-amedl.R), or NULL.
s5_muscat_path <- function() {
  d <- shared_data_dir()
  if (nzchar(d)) file.path(d, "muscat_example_sce.rda") else NULL
}

# The engine must be there in the lanes (RETICULATE_PYTHON set by scripts/run-tests
# and scripts/seurat5-lane): then a missing engine fails loudly; elsewhere it skips.
s5_skip_if_no_engine <- function() {
  if (nzchar(Sys.getenv("RETICULATE_PYTHON"))) return(invisible(TRUE))
  ok <- tryCatch({
    reticulate::py_module_available("amedl")
  }, error = function(e) FALSE)
  if (!isTRUE(ok)) skip("the amedl Python engine is not available (set RETICULATE_PYTHON)")
}

# A Seurat 5 object from the muscat SingleCellExperiment, RNA split by sample,
# normalised, 300 variable features, the top 200 scaled; built once per file.
s5_env <- new.env()
s5_object <- function() {
  if (!is.null(s5_env$obj)) return(s5_env$obj)
  path <- s5_muscat_path()
  if (is.null(path)) {
    skip("shared data muscat_example_sce.rda not found (../shared/data beside the checkout, or set AMEDL_DATA_DIR)")
  }
  e <- new.env()
  load(path, envir = e)
  sce <- e$example_sce
  counts <- SingleCellExperiment::counts(sce)
  meta <- as.data.frame(SummarizedExperiment::colData(sce))
  op <- options(Seurat.object.assay.version = "v5")
  on.exit(options(op), add = TRUE)
  # (the muscat gene names have underscores, which Seurat replaces with dashes)
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = counts, meta.data = meta))
  obj[["RNA"]] <- split(obj[["RNA"]], f = obj$sample_id)
  obj <- Seurat::NormalizeData(obj, verbose = FALSE)
  obj <- Seurat::FindVariableFeatures(obj, nfeatures = 300, verbose = FALSE)
  s5_env$feats <- head(SeuratObject::VariableFeatures(obj), 200)
  obj <- Seurat::ScaleData(obj, features = s5_env$feats, verbose = FALSE)
  s5_env$obj <- obj
  obj
}

s5_expect_reduction <- function(obj, name, n_latent, key = NULL) {
  expect_true(name %in% SeuratObject::Reductions(obj))
  dr <- obj[[name]]
  expect_s4_class(dr, "DimReduc")
  emb <- SeuratObject::Embeddings(dr)
  expect_identical(rownames(emb), SeuratObject::Cells(obj))
  expect_equal(dim(emb), c(ncol(obj), n_latent))
  expect_true(all(is.finite(emb)))
  expect_gt(stats::sd(emb[, 1]), 0)
  expect_identical(SeuratObject::DefaultAssay(dr), "RNA")
  if (!is.null(key)) expect_identical(SeuratObject::Key(dr), key)
  invisible(emb)
}

test_that("AMEDLIntegration refuses a Seurat v3/v4 assay with a clear message", {
  skip_if_not_installed("SeuratObject")
  a <- SeuratObject::CreateAssayObject(counts = matrix(1:4, 2, dimnames = list(c("g1", "g2"), c("c1", "c2"))))
  expect_error(AMEDLIntegration(a), "needs a Seurat 5 assay")
  expect_identical(attr(AMEDLIntegration, "Seurat.method"), "integration")
})

test_that("the shared muscat data becomes a Seurat 5 object with split layers", {
  s5_skip()
  obj <- s5_object()
  expect_s4_class(obj[["RNA"]], "Assay5")
  samples <- sort(unique(as.character(obj$sample_id)))
  expect_length(samples, 4L)
  expect_setequal(SeuratObject::Layers(obj[["RNA"]], search = "counts"),
                  paste0("counts.", samples))
  expect_equal(ncol(obj), 1556)
  for (s in samples) {
    expect_setequal(SeuratObject::Cells(obj[["RNA"]], layer = paste0("counts.", s)),
                    SeuratObject::Cells(obj)[as.character(obj$sample_id) == s])
  }
})

test_that("RunAMEDL on a Seurat 5 object with split layers and a batch column adds both reductions", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- s5_object()
  layers_before <- SeuratObject::Layers(obj[["RNA"]])
  out <- RunAMEDL(obj, batch = "sample_id", features = s5_env$feats,
                  n_latent = 8, epochs = 3, seed = 0, verbose = FALSE)
  s5_expect_reduction(out, "amedl_fe", 8, key = "amedlfe_")
  s5_expect_reduction(out, "amedl_re", 8, key = "amedlre_")
  # the object's own layers stay split (counts are joined only for the fit)
  expect_identical(SeuratObject::Layers(out[["RNA"]]), layers_before)
  s5_env$fe_batch_col <- SeuratObject::Embeddings(out[["amedl_fe"]])
})

test_that("RunAMEDL without a batch column fits on the split layers with the split as batch", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- s5_object()
  out <- RunAMEDL(obj, features = s5_env$feats, n_latent = 8, epochs = 3, seed = 0, verbose = FALSE)
  fe <- s5_expect_reduction(out, "amedl_fe", 8)
  s5_expect_reduction(out, "amedl_re", 8)
  # the split is by sample_id, so this is the same fit as batch = "sample_id"
  skip_if(is.null(s5_env$fe_batch_col), "the batch-column fit did not run")
  expect_equal(unname(fe), unname(s5_env$fe_batch_col), tolerance = 1e-5)
})

test_that("IntegrateLayers(method = AMEDLIntegration) adds the FE latent as the integrated reduction", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- s5_object()
  feats <- s5_env$feats
  obj <- Seurat::RunPCA(obj, features = feats, npcs = 10, verbose = FALSE)
  expect_identical(attr(AMEDLIntegration, "Seurat.method"), "integration")
  out <- Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = "pca",
                                 features = feats, n_latent = 8, epochs = 3, seed = 0,
                                 verbose = FALSE)
  emb <- s5_expect_reduction(out, "integrated.amedl", 8, key = "integratedamedl_")
  expect_true("pca" %in% SeuratObject::Reductions(out))
  dr <- out[["integrated.amedl"]]
  expect_identical(SeuratObject::Misc(dr)$amedl$batches, sort(unique(as.character(obj$sample_id))))
  expect_identical(SeuratObject::Misc(dr)$amedl$latent, "fe")
  # the fitted model is found from the reduction, like after RunAMEDL()
  m <- AMEDLModel(out, reduction = "integrated.amedl")
  b <- m$batches
  if (inherits(b, "python.builtin.object")) b <- reticulate::py_to_r(b)
  expect_identical(as.character(unlist(b)), sort(unique(as.character(obj$sample_id))))
  # layers stay split, as with Seurat's own integration methods
  expect_identical(SeuratObject::Layers(out[["RNA"]]), SeuratObject::Layers(obj[["RNA"]]))
  # same counts, same batches, same seed: the FE latent of RunAMEDL(batch = "sample_id")
  if (!is.null(s5_env$fe_batch_col)) {
    expect_equal(unname(emb), unname(s5_env$fe_batch_col), tolerance = 1e-5)
  }
  # usable downstream like any integrated reduction
  out <- Seurat::FindNeighbors(out, reduction = "integrated.amedl", dims = 1:8, verbose = FALSE)
  expect_true(any(grepl("_snn$", SeuratObject::Graphs(out))))
  expect_identical(SeuratObject::Cells(out[[SeuratObject::Graphs(out)[1]]]), SeuratObject::Cells(out))
})

test_that("AMEDLIntegration works without an original reduction and can return the RE latent too", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- s5_object()
  out <- Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL,
                                 features = s5_env$feats, new.reduction = "amedl.int",
                                 re.reduction = "amedl.int.re", n_latent = 6, epochs = 3,
                                 seed = 1, verbose = FALSE)
  fe <- s5_expect_reduction(out, "amedl.int", 6, key = "amedlint_")
  re <- s5_expect_reduction(out, "amedl.int.re", 6, key = "amedlintre_")
  expect_identical(SeuratObject::Misc(out[["amedl.int.re"]])$amedl$latent, "re")
  expect_false(isTRUE(all.equal(unname(fe), unname(re))))
})

test_that("AMEDLIntegration checks reduction names and keys before training", {
  s5_skip()
  obj <- s5_object()
  t0 <- Sys.time()
  expect_error(AMEDLIntegration(obj[["RNA"]], reduction.key = "1x_", epochs = 500, verbose = FALSE),
               "`reduction.key = \"1x_\"` is not a valid Seurat key")
  expect_error(AMEDLIntegration(obj[["RNA"]], re.reduction = "re", re.key = "re.", epochs = 500, verbose = FALSE),
               "`re.key = \"re.\"` is not a valid Seurat key")
  expect_error(AMEDLIntegration(obj[["RNA"]], new.reduction = "", epochs = 500, verbose = FALSE),
               "`new.reduction` must be a single non-empty string")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)
})

test_that("AMEDLIntegration takes groups for an unsplit assay and explains a missing split", {
  s5_skip()
  obj <- s5_object()
  joined <- SeuratObject::JoinLayers(obj)
  expect_length(SeuratObject::Layers(joined[["RNA"]], search = "counts"), 1L)
  expect_error(
    Seurat::IntegrateLayers(joined, method = AMEDLIntegration, orig.reduction = NULL,
                            features = s5_env$feats, epochs = 3, verbose = FALSE),
    "one batch.*split")
  expect_error(AMEDLIntegration(joined[["RNA"]], groups = c("a", "b"), verbose = FALSE),
               "one batch per cell")

  s5_skip_if_no_engine()
  # cells shuffled relative to the sample order: groups are matched by cell name
  groups <- stats::setNames(as.character(joined$sample_id), SeuratObject::Cells(joined))
  groups <- groups[rev(seq_along(groups))]
  out <- Seurat::IntegrateLayers(joined, method = AMEDLIntegration, orig.reduction = NULL,
                                 features = s5_env$feats, groups = groups, n_latent = 8,
                                 epochs = 3, seed = 0, verbose = FALSE)
  emb <- s5_expect_reduction(out, "integrated.amedl", 8)
  expect_identical(SeuratObject::Misc(out[["integrated.amedl"]])$amedl$batches,
                   sort(unique(as.character(obj$sample_id))))
  expect_identical(SeuratObject::Misc(out[["integrated.amedl"]])$amedl$batch_key, "groups")
  # the groups are recorded by cell, and the follow-ups read them from there (not from a
  # meta.data column "groups", which here holds something else)
  expect_identical(SeuratObject::Misc(out[["integrated.amedl"]])$amedl$cell_batches[SeuratObject::Cells(joined)],
                   stats::setNames(as.character(joined$sample_id), SeuratObject::Cells(joined)))
  out$groups <- rep(c("x", "y"), length.out = ncol(out))
  cf <- AMEDLCounterfactual(out, batch = "ctrl101", reduction = "integrated.amedl")
  expect_true("amedl_ctrl101" %in% SeuratObject::Assays(cf))
  de <- AMEDLBatchEffects(out, "stim101", "ctrl101", reduction = "integrated.amedl", n_samples = 5)
  expect_gt(nrow(de), 0)
  # same cells in the same order, same counts and batches: the same fit as on the split layers
  if (!is.null(s5_env$fe_batch_col) && identical(SeuratObject::Cells(joined), SeuratObject::Cells(obj))) {
    expect_equal(unname(emb), unname(s5_env$fe_batch_col), tolerance = 1e-5)
  }
})

# A quarter of the cells (every sample), split as s5_object(): for the quicker fits below.
s5_small <- function() {
  obj <- s5_object()
  subset(obj, cells = SeuratObject::Cells(obj)[seq(1, ncol(obj), by = 4)])
}

test_that("after JoinLayers() the follow-ups of layer-split fits still use each cell's batch", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- s5_small()
  obj <- RunAMEDL(obj, features = s5_env$feats, n_latent = 4, epochs = 2, verbose = FALSE)
  obj <- Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL, features = s5_env$feats,
                                 n_latent = 4, epochs = 2, verbose = FALSE)
  truth <- stats::setNames(as.character(obj$sample_id), SeuratObject::Cells(obj))
  for (r in c("amedl_fe", "integrated.amedl")) {
    expect_identical(SeuratObject::Misc(obj[[r]])$amedl$cell_batches[names(truth)], truth)
  }
  split_cf <- AMEDLCounterfactual(obj, batch = "stim101", reduction = "integrated.amedl")
  joined <- SeuratObject::JoinLayers(obj)
  expect_length(SeuratObject::Layers(joined[["RNA"]], search = "counts"), 1L)
  # (was: "the fit used the split of the 'counts' layer as the batch ... no longer split")
  cf <- AMEDLCounterfactual(joined, batch = "stim101", reduction = "integrated.amedl")
  expect_equal(SeuratObject::LayerData(cf[["amedl_stim101"]], layer = "data"),
               SeuratObject::LayerData(split_cf[["amedl_stim101"]], layer = "data"))
  expect_s4_class(AMEDLCounterfactual(joined, batch = "ctrl101")[["amedl_ctrl101"]], "Assay5")
  fit <- amedl:::.seurat_fit_inputs(joined, NULL, "amedl_fe")
  expect_identical(as.character(fit$batch), unname(truth[SeuratObject::Cells(joined)]))
  expect_gt(nrow(AMEDLBatchEffects(joined, "stim101", "ctrl101", reduction = "integrated.amedl", n_samples = 2)), 0)
  expect_gt(nrow(AMEDLBatchEffects(joined, "stim101", "ctrl101", n_samples = 2)), 0)
})

test_that("a counterfactual on a Seurat 5 object is an Assay5, added without warnings", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- SeuratObject::JoinLayers(s5_small())
  obj <- RunAMEDL(obj, batch = "sample_id", features = s5_env$feats, n_latent = 4, epochs = 2, verbose = FALSE)
  # (was: a v3 Assay, and "Layer counts isn't present in the assay object; returning NULL")
  expect_no_warning(cf <- AMEDLCounterfactual(obj, batch = "stim101"))
  a <- cf[["amedl_stim101"]]
  expect_s4_class(a, "Assay5")
  expect_identical(SeuratObject::Layers(a), "data")
  expect_identical(SeuratObject::Key(a), "amedlstim101_")
  expect_identical(SeuratObject::Cells(a), SeuratObject::Cells(obj))
  expect_identical(SeuratObject::Misc(a, slot = "amedl")$counterfactual_batch, "stim101")
  expect_false(any(c("nCount_amedl_stim101", "nFeature_amedl_stim101") %in% colnames(cf@meta.data)))
  # an earlier counterfactual is replaced
  expect_no_warning(cf <- AMEDLCounterfactual(cf, batch = "ctrl101", name = "amedl_stim101"))
  expect_identical(SeuratObject::Misc(cf[["amedl_stim101"]], slot = "amedl")$counterfactual_batch, "ctrl101")
})

test_that("IntegrateLayers with AMEDLIntegration: keys in use, n_top_genes, a saved model, SCTransform", {
  s5_skip()
  s5_skip_if_no_engine()
  obj <- s5_small()
  obj <- RunAMEDL(obj, batch = "sample_id", features = s5_env$feats, n_latent = 4, epochs = 2, verbose = FALSE)
  t0 <- Sys.time()
  # (was: Seurat's "Key 'amedlre_' taken, using '<random>_'")
  expect_error(Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL, re.reduction = "amedl.re",
                                       epochs = 500, verbose = FALSE),
               "the key 'amedlre_' of the new reduction 'amedl.re' is already the key of reduction 'amedl_re'.*re.key = \"amedlre2_\"")
  expect_error(Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL, new.reduction = "a.b",
                                       re.reduction = "ab", epochs = 500, verbose = FALSE),
               "the key 'ab_' of the new reduction 'a.b' is already the key of the new reduction 'ab'")
  expect_error(Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL, features = s5_env$feats,
                                       n_top_genes = 50, epochs = 500, verbose = FALSE),
               "give either `features`.*or `n_top_genes`")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 30)

  # n_top_genes: the engine picks that many genes (was: silently ignored for the variable features)
  dir <- tempfile("amedl-int-")
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  out <- Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL, n_top_genes = 50,
                                 n_latent = 4, epochs = 2, verbose = FALSE, model_dir = dir)
  expect_length(SeuratObject::Misc(out[["integrated.amedl"]])$amedl$genes, 50L)
  # mapping onto the saved model: no warning about features that IntegrateLayers() passed, not the user
  expect_no_warning(m <- Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL,
                                                 verbose = FALSE, model_dir = dir))
  expect_equal(SeuratObject::Embeddings(m[["integrated.amedl"]]), SeuratObject::Embeddings(out[["integrated.amedl"]]),
               tolerance = 1e-5)
  expect_warning(Seurat::IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL, verbose = FALSE,
                                         model_dir = dir, features = s5_env$feats),
                 "features is ignored")

  # SCTransform: aMEDL needs the raw counts (was: "Convert a v3/v4 assay with as(..., 'Assay5')")
  skip_if_not_installed("sctransform")
  small <- subset(obj, cells = SeuratObject::Cells(obj)[seq(1, ncol(obj), by = 2)])
  sct <- suppressWarnings(suppressMessages(Seurat::SCTransform(small, verbose = FALSE, variable.features.n = 100)))
  expect_error(Seurat::IntegrateLayers(sct, method = AMEDLIntegration, orig.reduction = NULL,
                                       normalization.method = "SCT", epochs = 500, verbose = FALSE),
               "SCTransform assay.*raw counts.*assay = \"RNA\"")
  # the message's second route works as written (was: "integrate ... assay = 'RNA'", which Seurat could not run:
  # IntegrateLayers() takes its features from the default assay's variable features)
  SeuratObject::DefaultAssay(sct) <- "RNA"
  sct <- Seurat::FindVariableFeatures(Seurat::NormalizeData(sct, verbose = FALSE), verbose = FALSE)
  via_rna <- Seurat::IntegrateLayers(sct, method = AMEDLIntegration, assay = "RNA", orig.reduction = NULL,
                                     n_latent = 4, epochs = 2, verbose = FALSE)
  expect_equal(dim(SeuratObject::Embeddings(via_rna[["integrated.amedl"]])), c(ncol(sct), 4))
})
