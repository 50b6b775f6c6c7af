# SingleCellExperiment support.

.sce_ns <- function() {
  if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
    .stop("the SingleCellExperiment package is needed; install it (Debian: apt-get install r-bioc-singlecellexperiment)")
  }
}

#' @rdname RunAMEDL
#' @export
RunAMEDL.SingleCellExperiment <- function(object, batch, assay = "counts", features = NULL,
                                          n_latent = NULL, n_top_genes = 2000, epochs = NULL, seed = 0,
                                          model_dir = NULL, preset = "default", verbose = TRUE,
                                          settings = list(), overwrite = FALSE, adapt = TRUE,
                                          adapted_model_dir = NULL, ...) {
  .check_dots(...)
  .sce_ns()
  if (missing(batch)) batch <- NULL
  if (is.null(batch)) {
    .stop("`batch` is missing: name the colData column that holds each cell's batch (columns: %s)",
          paste(colnames(SummarizedExperiment::colData(object)), collapse = ", "))
  }
  .check_sce_cells(object)
  an <- SummarizedExperiment::assayNames(object)
  if (!assay %in% an) {
    .stop("the SingleCellExperiment has no assay '%s' (assays: %s); aMEDL needs the raw counts: name their assay with `assay =`",
          assay, paste(an, collapse = ", "))
  }
  counts <- .check_counts(SummarizedExperiment::assay(object, assay, withDimnames = TRUE),
                          sprintf("assay '%s'", assay),
                          drop_hint = sprintf("sce <- sce[, Matrix::colSums(assay(sce, \"%s\")) > 0]", assay))
  b <- .batch_from_meta(batch, SummarizedExperiment::colData(object), ncol(object), "colData", store = TRUE, obj = "sce")
  bf <- .check_batch(b$values, ncol(counts), b$what, min_batches = if (.maps_query(model_dir, overwrite)) 1L else 2L)
  res <- .amedl_fit(counts, bf, batch_key = b$key, features = features, n_latent = n_latent,
                    n_top_genes = n_top_genes, epochs = epochs, seed = seed, preset = preset,
                    model_dir = model_dir, verbose = verbose, settings = settings, overwrite = overwrite,
                    adapt = adapt, adapted_model_dir = adapted_model_dir)
  object <- .amedl_repair_sce(object)
  if (isTRUE(b$store)) SummarizedExperiment::colData(object)[[b$key]] <- unname(b$values)
  SingleCellExperiment::reducedDim(object, "AMEDL_FE") <- res$fe
  SingleCellExperiment::reducedDim(object, "AMEDL_RE") <- res$re
  md <- S4Vectors::metadata(object)
  md$amedl <- utils::modifyList(res$params, list(layer = assay, assay = assay, object_kind = "SingleCellExperiment"))
  S4Vectors::metadata(object) <- md
  object
}

# Cell names are what ties the latents, the counterfactuals and the recorded batches to the
# cells: a SingleCellExperiment without them (colnames NULL) is an error, as are empty names.
.check_sce_cells <- function(object) {
  cn <- colnames(object)
  if (is.null(cn)) {
    .stop(paste0("the SingleCellExperiment has no cell names (colnames(sce) is NULL); aMEDL names the cells of its ",
                 "latents (reducedDims) and counterfactuals by them.\nFix: set them first, e.g. ",
                 "colnames(sce) <- paste0(\"cell\", seq_len(ncol(sce))) (or the barcodes)"))
  }
  if (anyNA(cn) || !all(nzchar(cn))) {
    .stop("the SingleCellExperiment has %d missing or empty cell name(s) in colnames(sce); give every cell a name (e.g. colnames(sce) <- make.unique(...))",
          sum(is.na(cn) | !nzchar(cn)))
  }
  invisible(TRUE)
}
