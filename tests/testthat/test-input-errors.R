# Bad input gives clear R errors before any Python is started.

test_that("matrix method rejects bad counts and batches", {
  s <- sim_counts(n_cells = 30, n_genes = 20)
  expect_error(RunAMEDL(s$counts), "`batch` is missing")
  expect_error(RunAMEDL(s$counts, batch = rep("a", 30)), "single batch \\('a'\\).*at least 2 batches")
  expect_error(RunAMEDL(s$counts, batch = s$batch[1:10]), "has 10 values for 30 cells")
  b <- as.character(s$batch); b[3] <- NA
  expect_error(RunAMEDL(s$counts, batch = b), "1 missing value")
  b <- as.character(s$batch); b[3:4] <- c("", " ")
  expect_error(RunAMEDL(s$counts, batch = b), "2 empty label\\(s\\) \\(\"\"\\), which is no batch name")
  chr <- matrix(as.character(as.matrix(s$counts)), 20, 30, dimnames = dimnames(s$counts))
  expect_error(RunAMEDL(chr, batch = s$batch), "must be numeric \\(raw counts\\).*character")
  neg <- as.matrix(s$counts); neg[1, 1] <- -1
  expect_error(RunAMEDL(neg, batch = s$batch), "negative values")
  na <- as.matrix(s$counts); na[2, 2] <- NA
  expect_error(RunAMEDL(na, batch = s$batch), "missing values \\(NA or NaN\\)")
  inf <- as.matrix(s$counts); inf[2, 3] <- Inf
  expect_error(RunAMEDL(inf, batch = s$batch), "infinite values \\(Inf\\)")
  noname <- unname(as.matrix(s$counts))
  expect_error(RunAMEDL(noname, batch = s$batch), "no row \\(gene\\) names")
  expect_error(RunAMEDL(s$counts, batch = s$batch, features = c("gene1", "nope")), "1 of 2 features are not genes.*nope")
  expect_error(RunAMEDL(s$counts, batch = s$batch, n_latent = 0), "`n_latent` must be a whole number >= 1")
  expect_error(RunAMEDL(s$counts, batch = s$batch, epochs = 2.5), "`epochs` must be a whole number")
  expect_error(RunAMEDL(s$counts, batch = s$batch, bogus = 1), "unknown argument\\(s\\): bogus")
  expect_error(RunAMEDL(list(1, 2), batch = s$batch), "needs a Seurat object, a SingleCellExperiment or a genes x cells count matrix")
})

test_that("SingleCellExperiment method rejects a missing batch column, one batch and a non-numeric assay", {
  sce <- amedl:::.amedl_repair_sce(muscat_sce())  # (subsetting needs the Seqinfo repair)
  expect_error(RunAMEDL(sce, batch = "donor"),
               "`batch = \"donor\"` is not a column of the colData; columns are: cluster_id, sample_id, group_id")
  expect_error(RunAMEDL(sce), "`batch` is missing.*sample_id")
  one <- sce[, sce$sample_id == "ctrl101"]
  expect_error(RunAMEDL(one, batch = "sample_id"), "single batch \\('ctrl101'\\)")
  expect_error(RunAMEDL(sce, batch = "sample_id", assay = "raw"), "no assay 'raw' \\(assays: counts, logcounts\\)")
  small <- sce[1:50, 1:60]
  SummarizedExperiment::assay(small, "chr", withDimnames = FALSE) <-
    matrix(as.character(as.matrix(SingleCellExperiment::counts(small))), 50, 60)
  expect_error(RunAMEDL(small, batch = "sample_id", assay = "chr"), "assay 'chr' must be numeric \\(raw counts\\)")
})

test_that("a SingleCellExperiment without cell names or with empty batch labels is an error before training", {
  sce <- amedl:::.amedl_repair_sce(muscat_sce())[, 1:200]
  t0 <- Sys.time()
  nonames <- sce
  colnames(nonames) <- NULL
  # (was: reducedDims with rows named cell1, cell2, ... and Bioconductor warnings)
  expect_error(RunAMEDL(nonames, batch = "sample_id", epochs = 500, verbose = FALSE),
               "no cell names \\(colnames\\(sce\\) is NULL\\).*colnames\\(sce\\) <- paste0")
  expect_error(AMEDLCounterfactual(nonames, batch = "ctrl101", model = tempfile()), "no cell names")
  blank <- sce
  blank$b <- as.character(blank$sample_id)
  blank$b[1:10] <- ""
  # (was: "" accepted as a batch of its own)
  expect_error(RunAMEDL(blank, batch = "b", epochs = 500, verbose = FALSE),
               "column 'b' of the cell metadata has 10 empty label\\(s\\)")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)
  if (requireNamespace("DelayedArray", quietly = TRUE)) {
    delayed <- sce
    SingleCellExperiment::counts(delayed) <- DelayedArray::DelayedArray(SingleCellExperiment::counts(sce))
    expect_error(RunAMEDL(delayed, batch = "sample_id", epochs = 500, verbose = FALSE),
                 "DelayedMatrix; read it into memory first, e.g. as\\(x, \"dgCMatrix\"\\)")
  }
})

test_that("Seurat method rejects a missing batch column, one batch and empty counts", {
  obj <- muscat_seurat()
  expect_error(RunAMEDL(obj, batch = "donor"), "not a column of the Seurat object's meta.data; columns are: orig.ident")
  expect_error(RunAMEDL(obj), "`batch` is missing: name the column of the cell metadata")
  expect_error(RunAMEDL(obj, batch = "orig.ident"), "single batch \\('SeuratProject'\\)")
  expect_error(RunAMEDL(obj, batch = "sample_id", assay = "ADT"), "no assay 'ADT'")
})
