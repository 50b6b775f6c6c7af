#' Counterfactual expression: every cell as if it came from one batch
#'
#' Decodes every cell's batch-invariant (fixed-effects) latent from the aMEDL
#' model that [RunAMEDL()] fitted with the random effects of batch `batch`:
#' the same cells as if they had been measured in that batch (with
#' `preset = "paper"`, whose FE decoder has no batch input, the random-effects
#' network is used). The result is log1p-normalised expression of the
#' model's genes (the genes it was fitted on).
#'
#' The model is taken from this R session's memory (models fitted by
#' `RunAMEDL()` are kept there), else loaded from the `model_dir` recorded by
#' `RunAMEDL(..., model_dir = )`, or given as `model` (a model folder or a
#' Python model). Nothing is refitted: in a new R session pass `model_dir`
#' when fitting to be able to come back.
#'
#' @param object A Seurat object or SingleCellExperiment after [RunAMEDL()],
#'   or a genes x cells count matrix (then `model` and `batch_of_cells` are needed).
#' @param batch The batch every cell is decoded as (one of the batches of the
#'   fit).
#' @param model A model folder or Python model; default the model recorded in `object`.
#' @param name Name of the new assay (Seurat) or altExp / assay (SingleCellExperiment).
#' @param ... Arguments passed to methods.
#' @return Seurat: the object with a new assay `name` whose `data` holds the
#'   counterfactual expression (model genes x cells). SingleCellExperiment:
#'   the object with the counterfactual as the `logcounts` assay of the
#'   altExp `name` (`sce.as = "altExp"`, default, since the model covers a
#'   subset of the genes) or as an assay `name` of the object itself with
#'   `NA` for genes outside the model (`sce.as = "assay"`). Matrix: a model
#'   genes x cells matrix.
#' @examples
#' \dontrun{
#' sce <- RunAMEDL(sce, batch = "sample_id")
#' sce <- AMEDLCounterfactual(sce, batch = "ctrl101")
#' SingleCellExperiment::altExp(sce, "amedl_ctrl101")
#' }
#' @export
AMEDLCounterfactual <- function(object, batch, ...) UseMethod("AMEDLCounterfactual")

.cf_name <- function(batch) paste0("amedl_", gsub("[^A-Za-z0-9.]", "_", batch))

.run_counterfactual <- function(model, counts, cell_batch, target) {
  info <- tryCatch(amedl_engine()$model_info(model), error = .py_error)
  batches <- unlist(info$batches)
  if (!is.character(target) && !is.factor(target) && !is.numeric(target)) .stop("`batch` must be a batch name")
  target <- as.character(target)
  if (length(target) != 1L) .stop("`batch` must be a single batch name")
  if (!target %in% batches) .stop("unknown batch '%s'; the model knows: %s", target, paste(batches, collapse = ", "))
  res <- tryCatch(
    amedl_engine()$counterfactual(model, counts, colnames(counts), rownames(counts),
                                  as.character(cell_batch), target),
    error = .py_error
  )
  x <- t(as.matrix(res$x))
  storage.mode(x) <- "double"
  dimnames(x) <- list(unlist(res$genes), colnames(counts))
  x
}

#' @rdname AMEDLCounterfactual
#' @param batch_of_cells Matrix method: each cell's own batch.
#' @export
AMEDLCounterfactual.default <- function(object, batch, model = NULL, batch_of_cells = NULL, ...) {
  .check_dots(...)
  if (is.list(object) && !is.null(object$model) && !is.null(object$fe)) {
    .stop("pass the count matrix as `object` and the fit as `model = fit$model`")
  }
  if (is.null(model)) .stop("`model` is needed for a matrix: the `model` element returned by RunAMEDL(), or a model folder")
  counts <- .check_counts(object)
  m <- .find_model(NULL, model)
  if (is.null(batch_of_cells)) .stop("`batch_of_cells` is needed: each cell's own batch")
  if (length(batch_of_cells) != ncol(counts)) .stop("`batch_of_cells` has %d values for %d cells", length(batch_of_cells), ncol(counts))
  .run_counterfactual(m, counts, batch_of_cells, batch)
}

#' @rdname AMEDLCounterfactual
#' @param reduction Seurat: the aMEDL reduction whose parameters name the model.
#' @export
AMEDLCounterfactual.Seurat <- function(object, batch, model = NULL, name = NULL, reduction = "amedl_fe", ...) {
  .check_dots(...)
  fit <- .seurat_fit_inputs(object, model, reduction)
  params <- fit$params
  x <- .run_counterfactual(fit$model, fit$counts, fit$batch, batch)
  if (is.null(name)) name <- .cf_name(batch)
  a <- SeuratObject::CreateAssayObject(data = x)
  SeuratObject::Key(a) <- paste0(tolower(gsub("[^A-Za-z0-9]", "", name)), "_")
  SeuratObject::Misc(a, slot = "amedl") <- list(counterfactual_batch = as.character(batch), model_id = params$model_id)
  object[[name]] <- a
  object
}

#' @rdname AMEDLCounterfactual
#' @param sce.as SingleCellExperiment: `"altExp"` or `"assay"` (see Value).
#' @export
AMEDLCounterfactual.SingleCellExperiment <- function(object, batch, model = NULL, name = NULL,
                                                     sce.as = c("altExp", "assay"), ...) {
  .check_dots(...)
  sce.as <- match.arg(sce.as)
  fit <- .sce_fit_inputs(object, model)
  params <- fit$params
  counts <- fit$counts
  x <- .run_counterfactual(fit$model, counts, fit$batch, batch)
  if (is.null(name)) name <- .cf_name(batch)
  object <- .amedl_repair_sce(object)
  if (sce.as == "altExp") {
    alt <- SingleCellExperiment::SingleCellExperiment(assays = list(logcounts = x))
    S4Vectors::metadata(alt)$amedl <- list(counterfactual_batch = as.character(batch), model_id = params$model_id)
    SingleCellExperiment::altExp(object, name) <- alt
  } else {
    full <- matrix(NA_real_, nrow(object), ncol(object), dimnames = dimnames(counts))
    full[rownames(x), ] <- x
    SummarizedExperiment::assay(object, name, withDimnames = FALSE) <- full
  }
  object
}

# The model, counts and batches of the cells of an object that RunAMEDL() fitted.
.seurat_fit_inputs <- function(object, model, reduction) {
  .seurat_ns()
  params <- if (reduction %in% names(object@reductions)) object@reductions[[reduction]]@misc$amedl else NULL
  if (is.null(params) && is.null(model)) .stop("the Seurat object has no reduction '%s' from RunAMEDL(): run RunAMEDL() first", reduction)
  m <- .find_model(params, model)
  assay <- if (!is.null(params$assay)) params$assay else SeuratObject::DefaultAssay(object)
  layer <- if (!is.null(params$layer)) params$layer else "counts"
  counts <- SeuratLayerCounts(object, assay = assay, layer = layer)
  split <- attr(counts, "split")
  attr(counts, "split") <- NULL
  counts <- .check_counts(counts)
  key <- if (!is.null(params$batch_key)) params$batch_key else "batch"
  cell_batch <- if (identical(key, "layer_split") && !is.null(split)) split else object@meta.data[[key]]
  if (is.null(cell_batch)) .stop("the batch column '%s' used for the fit is no longer in the meta.data", key)
  list(model = m, counts = counts, batch = cell_batch, params = params, meta = object@meta.data)
}

.sce_fit_inputs <- function(object, model) {
  .sce_ns()
  params <- S4Vectors::metadata(object)$amedl
  if (is.null(params) && is.null(model)) .stop("the SingleCellExperiment has no aMEDL fit recorded (metadata(sce)$amedl): run RunAMEDL() first")
  m <- .find_model(params, model)
  assay <- if (!is.null(params$assay)) params$assay else "counts"
  counts <- .check_counts(SummarizedExperiment::assay(object, assay, withDimnames = TRUE))
  key <- if (!is.null(params$batch_key)) params$batch_key else "batch"
  cell_batch <- SummarizedExperiment::colData(object)[[key]]
  if (is.null(cell_batch)) .stop("the batch column '%s' used for the fit is no longer in colData", key)
  list(model = m, counts = counts, batch = cell_batch, params = params,
       meta = as.data.frame(SummarizedExperiment::colData(object)))
}
