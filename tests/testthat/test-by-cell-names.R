# Per-cell vectors (batch, group.by, batch_of_cells, groups) named by cell are matched to the
# cells by name, as Seurat's AddMetaData() does; unnamed ones are taken in the cells' order;
# names that are not the cell names are an error (was: a named vector used by position,
# silently giving cells another cell's batch).

TINY <- list(epochs = 2, n_latent = 4, verbose = FALSE, seed = 0)

test_that("RunAMEDL() on a Seurat object or a SingleCellExperiment matches a named batch vector by cell name", {
  skip_if_no_engine()
  obj <- sim_seurat()
  truth <- as.character(obj$batch)
  shuffled <- rev(stats::setNames(truth, colnames(obj)))  # the same mapping, in another order
  out <- do.call(RunAMEDL, c(list(obj, batch = shuffled), TINY))
  expect_identical(unname(out$amedl_batch), truth)
  expect_identical(as.character(amedl:::.seurat_fit_inputs(out, NULL, "amedl_fe")$batch), truth)

  # group.by as a named vector: the same result as the meta.data column
  grp <- ifelse(seq_len(ncol(out)) <= 80, "A", "B")
  out$grp <- grp
  by_col <- AMEDLBatchEffects(out, "b1", "b2", group.by = "grp", n_samples = 3)
  by_vec <- AMEDLBatchEffects(out, "b1", "b2", group.by = rev(stats::setNames(grp, colnames(out))), n_samples = 3)
  expect_equal(by_vec, by_col)
  expect_error(AMEDLBatchEffects(out, "b1", "b2", group.by = stats::setNames(grp, paste0("x", seq_along(grp)))),
               "`group.by` is named, but its names are not the cell names.*240 cell\\(s\\) have no value.*unname\\(\\)")

  skip_if_no_pkg("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = SeuratLayerCounts(obj)), colData = S4Vectors::DataFrame(batch = obj$batch, row.names = colnames(obj)))
  out_sce <- do.call(RunAMEDL, c(list(sce, batch = shuffled, n_top_genes = 60), TINY))
  expect_identical(as.character(out_sce$amedl_batch), truth)
})

test_that("the matrix methods match a named batch by cell name and give the fit of the cells' own batches", {
  skip_if_no_engine()
  s <- sim_counts()
  named <- stats::setNames(as.character(s$batch), colnames(s$counts))
  plain <- do.call(RunAMEDL, c(list(s$counts, batch = as.character(s$batch), n_top_genes = 100), TINY))
  by_name <- do.call(RunAMEDL, c(list(s$counts, batch = rev(named), n_top_genes = 100), TINY))
  expect_equal(by_name$fe, plain$fe)
  expect_equal(by_name$re, plain$re)
  cf <- AMEDLCounterfactual(s$counts, batch = "b1", model = plain$model, batch_of_cells = rev(named))
  expect_equal(cf, AMEDLCounterfactual(s$counts, batch = "b1", model = plain$model, batch_of_cells = s$batch))
  expect_error(AMEDLCounterfactual(s$counts, batch = "b1", model = plain$model, batch_of_cells = named[-1]),
               "`batch_of_cells` is named, but its names are not the cell names.*1 cell\\(s\\) have no value \\(e.g. 'cell1'\\)")
  expect_error(AMEDLBatchEffects(s$counts, "b1", model = plain$model, n_samples = 3,
                                 batch_of_cells = stats::setNames(named, sub("cell", "c", names(named)))),
               "`batch_of_cells` is named, but its names are not the cell names.*240 name\\(s\\) are not cells \\(e.g. 'c1'")
})

test_that("named batch vectors whose names are not the cells are an error before training", {
  s <- sim_counts(n_cells = 30, n_genes = 20)
  named <- stats::setNames(as.character(s$batch), colnames(s$counts))
  t0 <- Sys.time()
  expect_error(RunAMEDL(s$counts, batch = stats::setNames(named, paste0("x", 1:30)), epochs = 500),
               "batch is named, but its names are not the cell names.*30 cell\\(s\\) have no value.*30 name\\(s\\) are not cells.*names\\(x\\) <- colnames\\(obj\\).*unname\\(\\)")
  dup <- named
  names(dup)[2] <- names(dup)[1]
  expect_error(RunAMEDL(s$counts, batch = dup, epochs = 500), "1 name\\(s\\) are duplicated \\(e.g. 'cell1'\\)")
  # a cells x genes matrix with a batch named by cell: the names are its row names
  expect_error(RunAMEDL(Matrix::t(s$counts), batch = named, epochs = 500),
               "named by the row names of the count matrix.*cells x genes.*Matrix::t\\(counts\\)")
  # an unnamed vector stays positional (no error); SCE: named by other cells is an error
  skip_if_no_pkg("SingleCellExperiment")
  sce <- SingleCellExperiment::SingleCellExperiment(assays = list(counts = s$counts))
  expect_error(RunAMEDL(sce, batch = stats::setNames(named, paste0("x", 1:30)), epochs = 500),
               "`batch` is named, but its names are not the cell names")
  expect_lt(as.numeric(difftime(Sys.time(), t0, units = "secs")), 20)
})

test_that("AMEDLIntegration()'s groups are matched by cell name; other names are an error", {
  cells <- paste0("cell", 1:6)
  g <- stats::setNames(c("a", "a", "b", "b", "c", "c"), cells)
  pick <- function(groups) amedl:::.amedl_integration_groups(NULL, cells, groups, NULL, NULL, "counts", NULL)
  expect_identical(pick(rev(g)), unname(g))
  expect_identical(pick(unname(g)), unname(g))
  expect_identical(pick(data.frame(group = rev(g), row.names = rev(cells))), unname(g))
  expect_identical(pick(data.frame(group = unname(g))), unname(g))  # automatic row names: in order
  # (was: names that are not the cells' silently used in order)
  expect_error(pick(stats::setNames(g, paste0("x", 1:6))),
               "AMEDLIntegration\\(\\): `groups` is named, but its names are not the cell names")
})
