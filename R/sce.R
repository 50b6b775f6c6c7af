# SingleCellExperiment support.

.sce_ns <- function() {
  if (!requireNamespace("SingleCellExperiment", quietly = TRUE)) {
    .stop("the SingleCellExperiment package is needed; install it (Debian: apt-get install r-bioc-singlecellexperiment)")
  }
}

# SingleCellExperiments saved by Bioconductor >= 3.22 keep their Seqinfo in the
# 'Seqinfo' package and their reducedDims/altExps tables in bare 'DataFrame's;
# older Bioconductor cannot modify them ("unable to find required package
# 'Seqinfo'", "unable to find an inherited method for 'replaceCOLS'"). Rebuild
# those parts with this R's classes; the data are unchanged.
.repair_sce <- function(x) {
  if (!methods::is(x, "SummarizedExperiment") || !methods::.hasSlot(x, "rowRanges")) return(x)
  fix <- function(si) {
    pkg <- attr(class(si), "package")
    if (is.null(pkg) || requireNamespace(pkg, quietly = TRUE)) return(NULL)
    if (!requireNamespace("GenomeInfoDb", quietly = TRUE)) return(NULL)
    GenomeInfoDb::Seqinfo(seqnames = si@seqnames, seqlengths = si@seqlengths,
                          isCircular = si@is_circular, genome = si@genome)
  }
  rr <- x@rowRanges
  if (methods::.hasSlot(rr, "unlistData") && methods::.hasSlot(rr@unlistData, "seqinfo")) {
    new <- fix(rr@unlistData@seqinfo)
    if (!is.null(new)) {
      ul <- rr@unlistData
      ul@seqinfo <- new
      rr@unlistData <- ul
      x@rowRanges <- rr
    }
  } else if (methods::.hasSlot(rr, "seqinfo")) {
    new <- fix(rr@seqinfo)
    if (!is.null(new)) {
      rr@seqinfo <- new
      x@rowRanges <- rr
    }
  }
  if (methods::is(x, "SingleCellExperiment")) {
    bare <- function(d) identical(as.character(class(d)), "DataFrame")
    ic <- SingleCellExperiment::int_colData(x)
    if ("reducedDims" %in% names(ic) && bare(ic$reducedDims)) {
      SingleCellExperiment::reducedDims(x) <- SingleCellExperiment::reducedDims(x)
    }
    if ("altExps" %in% names(ic) && bare(ic$altExps)) {
      SingleCellExperiment::altExps(x) <- SingleCellExperiment::altExps(x)
    }
  }
  x
}

#' @rdname RunAMEDL
#' @export
RunAMEDL.SingleCellExperiment <- function(object, batch, assay = "counts", features = NULL,
                                          n_latent = 50, n_top_genes = 2000, epochs = NULL, seed = 0,
                                          model_dir = NULL, preset = "default", verbose = TRUE,
                                          settings = list(), ...) {
  .check_dots(...)
  .sce_ns()
  if (missing(batch)) batch <- NULL
  if (is.null(batch)) {
    .stop("`batch` is missing: name the colData column that holds each cell's batch (columns: %s)",
          paste(colnames(SummarizedExperiment::colData(object)), collapse = ", "))
  }
  an <- SummarizedExperiment::assayNames(object)
  if (!assay %in% an) .stop("the SingleCellExperiment has no assay '%s' (assays: %s)", assay, paste(an, collapse = ", "))
  counts <- .check_counts(SummarizedExperiment::assay(object, assay, withDimnames = TRUE),
                          sprintf("assay '%s'", assay))
  b <- .batch_from_meta(batch, SummarizedExperiment::colData(object), ncol(object), "colData")
  bf <- .check_batch(b$values, ncol(counts), sprintf("the batch ('%s')", b$key))
  res <- .amedl_fit(counts, bf, batch_key = b$key, features = features, n_latent = n_latent,
                    n_top_genes = n_top_genes, epochs = epochs, seed = seed, preset = preset,
                    model_dir = model_dir, verbose = verbose, settings = settings)
  object <- .repair_sce(object)
  SingleCellExperiment::reducedDim(object, "AMEDL_FE") <- res$fe
  SingleCellExperiment::reducedDim(object, "AMEDL_RE") <- res$re
  md <- S4Vectors::metadata(object)
  md$amedl <- c(res$params, list(assay = assay, object_kind = "SingleCellExperiment"))
  S4Vectors::metadata(object) <- md
  object
}
