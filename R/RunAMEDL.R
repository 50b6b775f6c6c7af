#' Fit aMEDL: batch-invariant and batch-specific latents
#'
#' Trains aMEDL (autoencoder mixed-effects deep learning) on raw counts and
#' returns two latents per cell: the fixed-effects latent (`fe`,
#' batch-invariant: cell types and states, made batch-blind by an adversary)
#' and the random-effects latent (`re`, batch-specific: donor, chemistry or
#' site effects). The networks are trained by the amedl Python engine,
#' reached through reticulate (see [amedl_python_config()]).
#'
#' * The **Seurat** method adds the reductions `amedl_fe` and `amedl_re`
#'   (keys `amedlfe_` and `amedlre_`, with the cell names and the assay), and
#'   records the parameters in the `misc` slot of both reductions
#'   (`Misc(obj[["amedl_fe"]])$amedl`) and in `obj@commands`. Counts come
#'   from the `counts` layer of `assay`: `GetAssayData()` with Seurat 4,
#'   `LayerData()` with Seurat 5, where split layers (`counts.A`, `counts.B`,
#'   ...) are joined; when `batch` is `NULL` and the counts are split, the
#'   split is the batch.
#' * The **SingleCellExperiment** method adds the reducedDims `AMEDL_FE` and
#'   `AMEDL_RE` and records the parameters in `metadata(sce)$amedl`.
#' * The **matrix** method (genes x cells, base or sparse `Matrix`) returns
#'   `list(fe, re, model, params)`.
#'
#' The fitted model is kept in memory for the rest of the R session (and on
#' disk when `model_dir` is given), so that [AMEDLCounterfactual()] and
#' [AMEDLModel()] can use it.
#'
#' **Query mapping.** When `model_dir` already holds a saved model (and
#' `overwrite = FALSE`), `RunAMEDL()` trains nothing: it embeds the object
#' with that model (see `adapt`). Use it to place new donors or samples in
#' the space of a reference fitted earlier; the query needs the model's genes
#' and a batch column (a single batch is fine).
#'
#' @param object A Seurat object, a SingleCellExperiment, or a genes x cells
#'   count matrix (base `matrix` or `dgCMatrix`).
#' @param batch The batch of each cell: for Seurat and SingleCellExperiment
#'   the name of a column of the cell metadata (or a vector with one value
#'   per cell); for a matrix a vector with one value per cell. At least two
#'   batches are needed.
#' @param features Genes to model. Default: for Seurat the variable features
#'   when they are set, otherwise the engine picks `n_top_genes` highly
#'   variable genes (batch-aware).
#' @param n_latent Size of each latent; `NULL` uses the preset's (10 by
#'   default, 50 for `preset = "paper"`).
#' @param n_top_genes Number of highly variable genes the engine selects when
#'   `features` is not given.
#' @param epochs Maximum number of epochs; `NULL` uses the engine's default
#'   (scaled with the number of cells, with early stopping).
#' @param seed Random seed; the same seed gives the same latents on the CPU.
#' @param model_dir Folder to save the fitted model in (`NULL`: keep it in
#'   memory for this session only): a new or empty folder, or an amedl model
#'   folder when `overwrite = TRUE`. A folder holding anything else is never
#'   replaced. It is checked before training. A folder that already holds a
#'   saved model (with `overwrite = FALSE`) maps the object onto that model
#'   instead of training (see `adapt`).
#' @param overwrite Replace the amedl model already in `model_dir`.
#' @param adapt Used when `model_dir` holds a saved model and `overwrite` is
#'   `FALSE`: then nothing is trained; the object (a *query*) is mapped onto
#'   that model. Its batches that the model has not seen get their own random
#'   effects, learned in seconds with every trained weight frozen
#'   (`adapt = TRUE`, the default), or the mixture of the learned batches'
#'   effects that the model's batch-membership predictor gives each cell
#'   (`adapt = FALSE`). Adaptation also estimates the new batches' latent
#'   intercepts, which are removed from their FE latent as from the
#'   reference's; without it their cells keep the FE encoder's latent (a
#'   small difference). The adapted model stays in this R session's memory (the folder
#'   is not changed), so [AMEDLCounterfactual()] and [AMEDLBatchEffects()]
#'   can compare the query's batches with the model's.
#' @param preset Engine preset: `"default"` or `"paper"` (the published configuration).
#' @param verbose Show the engine's progress bars.
#' @param settings Further engine settings: [amedl_options()] (or a named
#'   list of its arguments), e.g. `amedl_options(lr = 1e-3, batch_size = 512)`;
#'   they override the preset. The number of CPU threads is
#'   `amedl_options(threads = n)` or `options(amedl.threads = n)`; results are
#'   bit-identical for a fixed seed and thread count.
#' @param ... Arguments passed to methods.
#' @return The object with the latents added (see Details), or for a matrix a
#'   list with `fe` and `re` (cells x `n_latent` matrices with cell names),
#'   `model` (the Python model) and `params`.
#' @seealso [AMEDLCounterfactual()], [AMEDLModel()], [install_amedl_python()]
#' @examples
#' \dontrun{
#' library(amedl)
#' obj <- RunAMEDL(seurat_obj, batch = "donor")
#' obj <- Seurat::RunUMAP(obj, reduction = "amedl_fe", dims = 1:10)
#' Seurat::DimPlot(obj, group.by = "donor")
#'
#' sce <- RunAMEDL(sce, batch = "sample_id")
#' SingleCellExperiment::reducedDim(sce, "AMEDL_FE")
#'
#' # a reference saved once, new donors mapped onto it later
#' ref <- RunAMEDL(ref, batch = "donor", model_dir = "ref_model")
#' query <- RunAMEDL(query, batch = "donor", model_dir = "ref_model")
#' }
#' @export
RunAMEDL <- function(object, ...) UseMethod("RunAMEDL")

#' @rdname RunAMEDL
#' @export
RunAMEDL.default <- function(object, batch, features = NULL, n_latent = NULL, n_top_genes = 2000,
                             epochs = NULL, seed = 0, model_dir = NULL, preset = "default",
                             verbose = TRUE, settings = list(), overwrite = FALSE, adapt = TRUE, ...) {
  if (!(is.matrix(object) || methods::is(object, "Matrix") || is.data.frame(object))) {
    .stop("RunAMEDL() needs a Seurat object, a SingleCellExperiment or a genes x cells count matrix, not an object of class %s",
          paste(class(object), collapse = "/"))
  }
  .check_dots(...)
  counts <- .check_counts(object)
  if (missing(batch)) batch <- NULL
  b <- .check_batch(batch, ncol(counts), min_batches = if (.maps_query(model_dir, overwrite)) 1L else 2L)
  res <- .amedl_fit(counts, b, batch_key = "batch", features = features, n_latent = n_latent,
                    n_top_genes = n_top_genes, epochs = epochs, seed = seed, preset = preset,
                    model_dir = model_dir, verbose = verbose, settings = settings, overwrite = overwrite,
                    adapt = adapt)
  res
}

.check_dots <- function(...) {
  dots <- list(...)
  if (length(dots)) {
    nm <- names(dots)
    .stop("unknown argument(s): %s", paste(ifelse(is.null(nm) | nm == "", "<unnamed>", nm), collapse = ", "))
  }
}

# Batch labels from a column name or a per-cell vector.
.batch_from_meta <- function(batch, meta, n_cells, where) {
  if (is.character(batch) && length(batch) == 1L && n_cells != 1L) {
    if (!batch %in% colnames(meta)) {
      .stop("`batch = \"%s\"` is not a column of the %s; columns are: %s", batch, where,
            paste(colnames(meta), collapse = ", "))
    }
    return(list(values = meta[[batch]], key = batch, what = sprintf("column '%s' of the cell metadata", batch)))
  }
  list(values = batch, key = "batch", what = "`batch`")
}
