# Shared helpers for the amedl tests. Tests fit the real engine on small data
# with few epochs; they skip (with the reason) when the engine is not available.

# Tiny models train fastest on one CPU thread (and CI machines are shared).
options(amedl.threads = getOption("amedl.threads", 1L))

skip_if_no_engine <- function() {
  ok <- amedl_available()
  if (!isTRUE(ok)) skip(paste("the amedl Python engine is not available:", attr(ok, "reason")))
}

# ../shared/data next to the repository root (CI has it), or $AMEDL_SHARED_DATA.
shared_data_dir <- function() {
  cands <- c(
    Sys.getenv("AMEDL_SHARED_DATA", ""),
    file.path(getwd(), "..", "..", "..", "shared", "data"),             # tests/testthat in the checkout
    if (nzchar(amedl:::.amedl_install_checkout)) file.path(amedl:::.amedl_install_checkout, "..", "shared", "data") else ""
  )
  for (d in cands) {
    if (nzchar(d) && file.exists(file.path(d, "muscat_example_sce.rda"))) return(normalizePath(d))
  }
  ""
}

skip_if_no_shared_data <- function() {
  if (!nzchar(shared_data_dir())) skip("../shared/data (the shared datasets) is not present; set AMEDL_SHARED_DATA")
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
  cfg <- amedl_python_config()
  ch <- attr(cfg, "chosen")
  if (is.na(ch)) "" else cfg$python[ch]
}

# Settings that keep test fits small.
FAST <- list(epochs = 2, n_latent = 8, n_top_genes = 150, verbose = FALSE)
