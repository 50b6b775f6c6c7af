# Shared helpers for the amedl tests. Tests fit the real engine on small data
# with few epochs; they skip (with the reason) when the engine is not available.

# Tiny models train fastest on one CPU thread (and CI machines are shared).
options(amedl.threads = getOption("amedl.threads", 1L))

skip_if_no_engine <- function() {
  ok <- amedl_available()
  if (!isTRUE(ok)) skip(paste("the amedl Python engine is not available:", attr(ok, "reason")))
}

# The shared test datasets: $AMEDL_DATA_DIR, else ../shared/data beside the checkout (CI has it).
shared_data_dir <- function() {
  d <- Sys.getenv("AMEDL_DATA_DIR", "")
  if (!nzchar(d)) d <- file.path(testthat::test_path(), "..", "..", "..", "shared", "data")
  if (file.exists(file.path(d, "muscat_example_sce.rda"))) normalizePath(d) else ""
}

skip_if_no_shared_data <- function() {
  if (!nzchar(shared_data_dir())) skip("the shared datasets are not found: set AMEDL_DATA_DIR (default ../shared/data beside the checkout)")
}

skip_if_no_pkg <- function(pkg) {
  if (!requireNamespace(pkg, quietly = TRUE)) skip(paste("R package", pkg, "is not installed"))
}

# The muscat SingleCellExperiment (1556 cells x 1267 genes, batch `sample_id`).
muscat_sce <- function() {
  skip_if_no_shared_data()
  skip_if_no_pkg("SingleCellExperiment")
  suppressPackageStartupMessages(requireNamespace("SingleCellExperiment"))
  env <- new.env()
  suppressMessages(load(file.path(shared_data_dir(), "muscat_example_sce.rda"), envir = env))
  env$example_sce
}

# A Seurat object built from the muscat counts and cell metadata, with
# variable features (v3/v4 Assay with SeuratObject 4, Assay5 with SeuratObject 5).
muscat_seurat <- function(nfeatures = 300) {
  sce <- muscat_sce()
  skip_if_no_pkg("SeuratObject")
  counts <- SingleCellExperiment::counts(sce)
  meta <- as.data.frame(SummarizedExperiment::colData(sce))
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = counts, meta.data = meta))
  if (requireNamespace("Seurat", quietly = TRUE)) {
    obj <- Seurat::NormalizeData(obj, verbose = FALSE)
    obj <- Seurat::FindVariableFeatures(obj, nfeatures = nfeatures, verbose = FALSE)
  }
  obj
}

# Small simulated counts with a batch effect: genes x cells dgCMatrix + batch.
sim_counts <- function(n_cells = 240, n_genes = 150, n_batches = 3, seed = 1) {
  set.seed(seed)
  batch <- factor(sample(paste0("b", seq_len(n_batches)), n_cells, replace = TRUE))
  type <- sample(1:3, n_cells, replace = TRUE)
  base <- matrix(stats::rgamma(n_genes * 3, 2, 1), n_genes, 3)
  bfx <- matrix(exp(stats::rnorm(n_genes * n_batches, 0, 0.5)), n_genes, n_batches)
  mu <- base[, type] * bfx[, as.integer(batch)] * 2
  x <- matrix(stats::rpois(length(mu), mu), n_genes, n_cells)
  dimnames(x) <- list(paste0("gene", seq_len(n_genes)), paste0("cell", seq_len(n_cells)))
  list(counts = methods::as(x, "CsparseMatrix"), batch = batch)
}

# Python of the engine (for the conversion tests that run amedl.io in a subprocess).
engine_python <- function() {
  cfg <- tryCatch(amedl_python_config(), error = function(e) NULL)
  if (is.null(cfg) || is.null(cfg$required_module_path)) "" else cfg$python
}

# Settings that keep test fits small.
FAST <- list(epochs = 2, n_latent = 8, n_top_genes = 150, verbose = FALSE)

# A small Seurat object from sim_counts(): raw counts, meta.data column `batch`, normalised,
# `nfeatures` variable features.
sim_seurat <- function(n_cells = 240, nfeatures = 60, seed = 1) {
  skip_if_no_pkg("SeuratObject")
  skip_if_no_pkg("Seurat")
  s <- sim_counts(n_cells = n_cells, seed = seed)
  meta <- data.frame(batch = s$batch, row.names = colnames(s$counts))
  obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = s$counts, meta.data = meta))
  obj <- Seurat::NormalizeData(obj, verbose = FALSE)
  Seurat::FindVariableFeatures(obj, nfeatures = nfeatures, verbose = FALSE)
}
