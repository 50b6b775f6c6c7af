test_that("RunAMEDL on a Seurat object adds amedl_fe and amedl_re, usable by RunUMAP and DimPlot", {
  skip_if_no_engine()
  obj <- muscat_seurat()
  vf <- SeuratObject::VariableFeatures(obj)
  # (no n_top_genes: given, it would win over the variable features)
  out <- do.call(RunAMEDL, c(list(obj, batch = "sample_id"), FAST[names(FAST) != "n_top_genes"]))
  expect_true(all(c("amedl_fe", "amedl_re") %in% SeuratObject::Reductions(out)))
  for (r in c("amedl_fe", "amedl_re")) {
    dr <- out[[r]]
    emb <- SeuratObject::Embeddings(dr)
    expect_identical(rownames(emb), colnames(obj))
    expect_equal(ncol(emb), 8L)
    expect_equal(SeuratObject::DefaultAssay(dr), "RNA")
  }
  expect_equal(SeuratObject::Key(out[["amedl_fe"]]), "amedlfe_")
  expect_equal(SeuratObject::Key(out[["amedl_re"]]), "amedlre_")
  p <- SeuratObject::Misc(out[["amedl_fe"]])$amedl
  expect_equal(p$batch_key, "sample_id")
  expect_equal(p$latent, "fe")
  expect_equal(p$layer, "counts")
  if (length(vf)) expect_setequal(p$genes, vf)   # the variable features are the default genes
  expect_true("RunAMEDL.RNA" %in% names(out@commands))
  expect_equal(out@commands[["RunAMEDL.RNA"]]@params$batch_key, "sample_id")

  skip_if_no_pkg("Seurat")
  out <- suppressWarnings(Seurat::RunUMAP(out, reduction = "amedl_fe", dims = 1:8, verbose = FALSE))
  expect_true("umap" %in% SeuratObject::Reductions(out))
  expect_identical(rownames(SeuratObject::Embeddings(out, "umap")), colnames(obj))
  p1 <- Seurat::DimPlot(out, reduction = "umap", group.by = "sample_id")
  expect_s3_class(p1, "ggplot")
  f <- tempfile(fileext = ".png")
  grDevices::png(f); print(p1); grDevices::dev.off()
  expect_gt(file.size(f), 1000)

  # counterfactual: a new assay with the model genes
  cf <- AMEDLCounterfactual(out, batch = "ctrl107")
  expect_true("amedl_ctrl107" %in% SeuratObject::Assays(cf))
  x <- SeuratLayerCounts(cf, assay = "amedl_ctrl107", layer = "data")
  expect_identical(colnames(x), colnames(obj))
  expect_setequal(rownames(x), p$genes)
  expect_equal(SeuratObject::DefaultAssay(cf), "RNA")

  # batch effects: a tidy data.frame per cell group, intervals around the estimate
  de <- AMEDLBatchEffects(out, "stim101", "ctrl101", group.by = "cluster_id", n_samples = 5)
  expect_s3_class(de, "data.frame")
  expect_true(all(c("group", "gene", "lfc", "ci_low", "ci_high", "p_effect", "credible") %in% names(de)))
  expect_setequal(unique(de$group), unique(as.character(out$cluster_id)))
  expect_equal(nrow(de), length(unique(de$group)) * length(p$genes))
  expect_true(all(de$ci_low <= de$lfc & de$lfc <= de$ci_high))
  expect_true(all(de$p_effect >= 0 & de$p_effect <= 1))
  expect_error(AMEDLBatchEffects(out, "nope"), "unknown batch 'nope'")
  expect_error(AMEDLBatchEffects(out, "stim101", group.by = "no_such_column"), "not in the cell metadata")
})

test_that("SeuratObject's pbmc_small works with its groups as the batch", {
  skip_if_no_engine()
  skip_if_no_pkg("SeuratObject")
  pbmc <- SeuratObject::pbmc_small
  if (.hasSlot(pbmc, "version") && utils::packageVersion("SeuratObject") >= "5.0.0") {
    pbmc <- suppressWarnings(SeuratObject::UpdateSeuratObject(pbmc))
  }
  out <- RunAMEDL(pbmc, batch = "groups", epochs = 2, n_latent = 5, verbose = FALSE, reduction.prefix = "am")
  expect_true(all(c("am_fe", "am_re") %in% SeuratObject::Reductions(out)))
  expect_equal(SeuratObject::Key(out[["am_fe"]]), "amfe_")
  expect_identical(rownames(SeuratObject::Embeddings(out, "am_fe")), colnames(pbmc))
  expect_equal(dim(SeuratObject::Embeddings(out, "am_re")), c(ncol(pbmc), 5L))
})

test_that("counts come from the counts layer, for Seurat 4 slots and Seurat 5 layers", {
  obj <- muscat_seurat()
  m <- SeuratLayerCounts(obj)
  sce <- muscat_sce()
  ref <- SingleCellExperiment::counts(sce)
  rownames(ref) <- gsub("_", "-", rownames(ref))
  expect_equal(as.matrix(m), as.matrix(ref))
  expect_null(attr(m, "split"))
  if (utils::packageVersion("SeuratObject") >= "5.0.0") {
    obj5 <- obj
    obj5[["RNA"]] <- split(obj5[["RNA"]], f = obj5$sample_id)
    m5 <- SeuratLayerCounts(obj5)
    expect_equal(as.matrix(m5[rownames(m), ]), as.matrix(m))
    expect_equal(as.character(attr(m5, "split")), as.character(obj5$sample_id))
  }
})
