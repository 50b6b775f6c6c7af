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
#' when fitting to be able to come back (for a query mapped with
#' `adapt = TRUE`, `adapted_model_dir`; see [RunAMEDL()]). Each cell's own
#' batch is read from where the fit recorded it (the batch column, the
#' `amedl_batch` column for a `batch` vector, or, recorded by cell with the
#' fit, the split of the counts layer or the `groups` of
#' [AMEDLIntegration()], so also after `JoinLayers()`); a column changed
#' since the fit is an error. An object never passed to `RunAMEDL()`, with
#' its model given as `model`, needs the column named as the model's batch
#' key (`model$batch_key`: the batch column it was fitted with, e.g.
#' `"sample_id"`); without it the error names that column.
#'
#' When the model is loaded from the recorded `model_dir`, it must be the
#' model fitted for the object: a folder overwritten since by another fit
#' (its fingerprint differs from the one recorded) is an error; refit, or
#' pass `model` (objects fitted before amedl recorded fingerprints are not
#' checked).
#'
#' @param object A Seurat object or SingleCellExperiment after [RunAMEDL()],
#'   or a genes x cells count matrix (then `model` and `batch_of_cells` are needed).
#' @param batch The batch every cell is decoded as (one of the batches of the
#'   model: a query's new batch mapped with `adapt = FALSE` has no random
#'   effects of its own, see [RunAMEDL()]).
#' @param model A model folder or Python model; default the model recorded in `object`.
#'   A Python model lives only in the R session that made it: after
#'   `readRDS()` of a matrix fit, pass its folder (`fit$params$model_dir`).
#' @param name Name of the new assay (Seurat) or altExp / assay
#'   (SingleCellExperiment); default `"amedl_<batch>"`. An existing assay or
#'   altExp is replaced only when it is an earlier counterfactual (with
#'   `sce.as = "assay"`, any assay but the counts and `logcounts`).
#' @param ... Arguments passed to methods.
#' @return Seurat: the object with a new assay `name` whose `data` holds the
#'   counterfactual expression (model genes x cells), of the kind of the
#'   fit's assay (an `Assay5` with a `data` layer only with Seurat 5, a v3
#'   `Assay` otherwise); its key, made from `name`, must not be the key of
#'   another reduction or assay. SingleCellExperiment:
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

.check_target_batch <- function(target) {
  if ((!is.character(target) && !is.factor(target) && !is.numeric(target)) || length(target) != 1L || is.na(target)) {
    .stop("`batch` must be a single batch name")
  }
  as.character(target)
}

.check_cf_name <- function(name) {
  if (!is.character(name) || length(name) != 1L || is.na(name) || !nzchar(name)) {
    .stop("`name` must be a single non-empty string (the name of the new assay or altExp), or NULL")
  }
}

.run_counterfactual <- function(model, counts, cell_batch, target, params = NULL) {
  info <- tryCatch(amedl_engine()$model_info(model), error = .py_error)
  batches <- unlist(info$batches)
  target <- .check_target_batch(target)
  if (!target %in% batches) .unknown_batch(target, batches, params)
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
#' @param batch_of_cells Matrix method: each cell's own batch (a vector named
#'   by cell is matched to the matrix's columns by name).
#' @export
AMEDLCounterfactual.default <- function(object, batch, model = NULL, batch_of_cells = NULL, ...) {
  .check_dots(...)
  .check_not_fit_list(object, "AMEDLCounterfactual")
  if (is.null(model)) .stop("`model` is needed for a matrix: the `model` element returned by RunAMEDL(), or a model folder")
  counts <- .check_counts(object)
  m <- .find_model(NULL, model)
  batch_of_cells <- .check_batch_of_cells(batch_of_cells, counts)
  .run_counterfactual(m, counts, batch_of_cells, batch)
}

# The matrix methods of AMEDLCounterfactual() and AMEDLBatchEffects() take the counts as
# `object`; the list that RunAMEDL() returns for a matrix (fe, re, model, params) is not them.
.check_not_fit_list <- function(object, fn) {
  if (is.list(object) && !is.data.frame(object) && !is.null(object$model) && !is.null(object$fe)) {
    .stop(paste0("`object` is the list that RunAMEDL() returned for a count matrix (the fit), but %s() needs the count ",
                 "matrix itself.\nFix: pass the count matrix as `object` and the fit as `model = fit$model` (in a later R ",
                 "session the model folder: `model = \"path/to/model_dir\"`), with each cell's batch: ",
                 "%s(counts, %s, model = fit$model, batch_of_cells = <each cell's batch>)"),
          fn, fn, if (fn == "AMEDLBatchEffects") "\"batch_a\", \"batch_b\"" else "batch = \"batch_a\"")
  }
  invisible(TRUE)
}

# `batch_of_cells` of the matrix methods: one batch per cell, matched by name when named by cell.
.check_batch_of_cells <- function(batch_of_cells, counts) {
  if (is.null(batch_of_cells)) .stop("`batch_of_cells` is needed: each cell's own batch")
  batch_of_cells <- .by_cells(batch_of_cells, colnames(counts), "`batch_of_cells`", rownames(counts))
  if (length(batch_of_cells) != ncol(counts)) .stop("`batch_of_cells` has %d values for %d cells", length(batch_of_cells), ncol(counts))
  batch_of_cells
}

# A batch the model does not know. A query's own new batch, mapped with adapt = FALSE, has no
# random effects of its own in the model (its cells got the mixture of the learned batches'
# effects): that is said, with the fix (map with adapt = TRUE).
.unknown_batch <- function(b, batches, params = NULL) {
  q <- params$query
  new <- as.character(unlist(q$new_batches))
  if (!is.null(q) && b %in% new && !identical(q$unseen_batches, "adapted")) {
    ref <- .amedl_or(.recorded(q$reference_model_dir), .amedl_or(.recorded(params$model_dir), "path/to/model_dir"))
    key <- .recorded(params$batch_key)
    batch_arg <- if (is.null(key) || key %in% c("layer_split", "groups")) "batch = <each cell's batch>" else sprintf("batch = \"%s\"", key)
    .stop(paste0("batch '%s' is one of this query's new batches, which RunAMEDL() mapped onto the model in '%s' with ",
                 "adapt = FALSE: they have no random effects of their own in the model (their cells got the mixture of the ",
                 "learned batches' effects), so nothing can be decoded as '%s'. The model knows: %s.\n",
                 "Fix: map the query with adapt = TRUE (the default), which learns the new batches' random effects in ",
                 "seconds: RunAMEDL(query, %s, model_dir = \"%s\") (add adapted_model_dir = \"some/folder\" to keep them on ",
                 "disk); or compare with one of the model's batches"),
          b, ref, b, paste(batches, collapse = ", "), batch_arg, ref)
  }
  .stop("unknown batch '%s'; the model knows: %s", b, paste(batches, collapse = ", "))
}

#' @rdname AMEDLCounterfactual
#' @param reduction Seurat: the aMEDL reduction whose parameters name the model.
#' @export
AMEDLCounterfactual.Seurat <- function(object, batch, model = NULL, name = NULL, reduction = "amedl_fe", ...) {
  .check_dots(...)
  batch <- .check_target_batch(batch)
  if (is.null(name)) name <- .cf_name(batch)
  .check_cf_name(name)
  if (!identical(make.names(name), name)) {
    .stop("`name = \"%s\"` is not a syntactic R name, which Seurat would change to '%s'; give a name such as \"%s\"",
          name, make.names(name), make.names(name))
  }
  if (name %in% names(object@reductions)) .stop("`name = \"%s\"` is the name of a reduction of the object; choose another name for the counterfactual assay", name)
  if (name %in% names(object@assays) &&
      is.null(tryCatch(SeuratObject::Misc(object[[name]], slot = "amedl")$counterfactual_batch, error = function(e) NULL))) {
    .stop("`name = \"%s\"` is an assay of the object that is not an aMEDL counterfactual, and it is never replaced; choose another name",
          name)
  }
  key <- tolower(.amedl_key(name))
  .check_keys_free(object, stats::setNames(list(key), name), function(name, key, free) {
    sprintf("choose another `name` (its letters and digits make the assay's key)")
  }, what = "assay")
  fit <- .seurat_fit_inputs(object, model, reduction)
  params <- fit$params
  x <- .run_counterfactual(fit$model, fit$counts, fit$batch, batch, params)
  a <- .cf_assay(x, object[[fit$assay]])
  SeuratObject::Key(a) <- key
  SeuratObject::Misc(a, slot = "amedl") <- list(counterfactual_batch = as.character(batch), model_id = params$model_id)
  # Seurat computes nCount_/nFeature_ of a new assay from its counts, which a counterfactual
  # has not, and warns that they are missing ("No layers found matching search pattern
  # provided" with Seurat 5, "Layer counts isn't present in the assay object" with a v3
  # Assay): only that warning is muffled
  withCallingHandlers(
    object[[name]] <- a,
    warning = function(w) {
      if (grepl("^(No layers found matching search pattern|Layer counts isn't present)", conditionMessage(w))) {
        invokeRestart("muffleWarning")
      }
    })
  object
}

# The counterfactual (log1p-normalised expression) as an assay of the same kind as the fit's
# assay: an Assay5 (a "data" layer only) beside an Assay5 (Seurat 5), a v3 Assay otherwise.
.cf_assay <- function(x, source) {
  if (inherits(source, "StdAssay")) {
    # (an Assay5 keeps its layers as dgCMatrix; converting first avoids the warning that it did)
    return(getExportedValue("SeuratObject", "CreateAssay5Object")(data = methods::as(x, "CsparseMatrix")))
  }
  # a v3 Assay with only `data`: its `counts` stay empty
  SeuratObject::CreateAssayObject(data = x)
}

#' @rdname AMEDLCounterfactual
#' @param sce.as SingleCellExperiment: `"altExp"` or `"assay"` (see Value).
#' @export
AMEDLCounterfactual.SingleCellExperiment <- function(object, batch, model = NULL, name = NULL,
                                                     sce.as = c("altExp", "assay"), ...) {
  .check_dots(...)
  sce.as <- match.arg(sce.as)
  batch <- .check_target_batch(batch)
  if (is.null(name)) name <- .cf_name(batch)
  .check_cf_name(name)
  fit_assay <- .amedl_or(.recorded(S4Vectors::metadata(object)$amedl$assay), "counts")
  if (sce.as == "assay" && name %in% c(fit_assay, "counts", "logcounts")) {
    .stop("`name = \"%s\"` would replace the assay '%s' of the object; choose another name for the counterfactual assay", name, name)
  }
  if (sce.as == "altExp" && name %in% SingleCellExperiment::altExpNames(object) &&
      is.null(S4Vectors::metadata(SingleCellExperiment::altExp(object, name))$amedl$counterfactual_batch)) {
    .stop("`name = \"%s\"` is an altExp of the object that is not an aMEDL counterfactual, and it is never replaced; choose another name",
          name)
  }
  fit <- .sce_fit_inputs(object, model)
  params <- fit$params
  counts <- fit$counts
  x <- .run_counterfactual(fit$model, counts, fit$batch, batch, params)
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
  model_key <- if (is.null(params)) .model_batch_key(m)
  assay <- .amedl_or(.recorded(params$assay), SeuratObject::DefaultAssay(object))
  layer <- .amedl_or(.recorded(params$layer), "counts")
  counts <- SeuratLayerCounts(object, assay = assay, layer = layer)
  split <- attr(counts, "split")
  attr(counts, "split") <- NULL
  counts <- .check_counts(counts)
  cell_batch <- .recorded_batches(params, object@meta.data, colnames(counts), split, layer,
                                  "Seurat object's meta.data", "obj", model_key)
  list(model = m, counts = counts, batch = cell_batch, params = params, meta = object@meta.data, assay = assay)
}

.sce_fit_inputs <- function(object, model) {
  .sce_ns()
  .check_sce_cells(object)
  params <- S4Vectors::metadata(object)$amedl
  if (is.null(params) && is.null(model)) .stop("the SingleCellExperiment has no aMEDL fit recorded (metadata(sce)$amedl): run RunAMEDL() first")
  m <- .find_model(params, model)
  model_key <- if (is.null(params)) .model_batch_key(m)
  assay <- .amedl_or(.recorded(params$assay), "counts")
  counts <- .check_counts(SummarizedExperiment::assay(object, assay, withDimnames = TRUE))
  meta <- SummarizedExperiment::colData(object)
  cell_batch <- .recorded_batches(params, meta, colnames(counts), NULL, assay, "colData", "sce", model_key)
  list(model = m, counts = counts, batch = cell_batch, params = params, meta = as.data.frame(meta))
}

# A name recorded with a fit (layer, assay, batch key); NULL when it is not recorded or is
# "" or NA (the command line records layer "" when it read the counts the input holds).
.recorded <- function(x) {
  if (is.null(x) || length(x) != 1L || is.na(x) || !nzchar(x)) NULL else as.character(x)
}

# Each cell's batch, from where the fit recorded it: a cell-metadata column (a `batch` vector
# given to RunAMEDL() is kept in the column "amedl_batch"), or, kept in the record by cell
# (`cell_batches`), the split of the counts layer (Seurat 5; so also after JoinLayers()) or
# the groups given to AMEDLIntegration(). (Fits by an older amedl recorded no split: the
# layer must still be split.) The batches must be the fit's: a column changed since the fit
# is an error, never a silent mix-up. An object with no fit recorded (its model given as
# `model =`) needs the column named as the model's batch key (`model_key`).
.recorded_batches <- function(params, meta, cells, split, layer, where, obj, model_key = NULL) {
  if (is.null(params)) {
    key <- .amedl_or(.recorded(model_key), "batch")
    if (!key %in% colnames(meta)) {
      .stop(paste0("no aMEDL fit is recorded in this object, so each cell's own batch is read from the %s column named as ",
                   "the model's batch key, '%s', which it does not have (columns: %s).\n",
                   "Fix: add that column (%s$%s <- <each cell's batch>), or run RunAMEDL() on this object (with model_dir = ",
                   "the model's folder it maps the object onto that model and records where its batches are)"),
            where, key, .some(colnames(meta), 10), obj, key)
    }
    return(meta[[key]])
  }
  key <- .amedl_or(.recorded(params$batch_key), "batch")
  cb <- params$cell_batches
  if (key %in% c("layer_split", "groups") && !is.null(cb) && !is.null(names(cb))) {
    # recorded by cell with the fit: the layer split (also after JoinLayers()) or the groups
    what <- if (identical(key, "groups")) "the `groups` given to AMEDLIntegration()" else
      sprintf("the split of the '%s' layer at the fit", layer)
    miss <- setdiff(cells, names(cb))
    if (length(miss)) {
      .stop("%d cell(s) have no batch in the record of the fit, which used %s as the batches (e.g. %s); were they added after the fit? Rerun %s on the object as it is now",
            length(miss), what, .some(miss, 3), .refit_call(params))
    }
    cell_batch <- unname(cb[cells])
  } else if (identical(key, "layer_split")) {
    # a fit recorded by an older amedl, which kept only the split itself
    if (is.null(split)) {
      a <- .amedl_or(.recorded(params$assay), "RNA")
      .stop(paste0("the fit used the split of the '%s' layer as the batch, but that layer is no longer split ",
                   "(JoinLayers()), and this fit, made by an older amedl, did not record each cell's batch.\n",
                   "Fix: split it again by the same batches (%s[[\"%s\"]] <- split(%s[[\"%s\"]], f = <each cell's batch>)), or rerun %s"),
            layer, obj, a, obj, a, .refit_call(params, batch_hint = TRUE))
    }
    cell_batch <- split
    what <- sprintf("the split of the '%s' layer", layer)
  } else if (identical(key, "groups") && identical(params$method, .integration_method)) {
    .stop("this AMEDLIntegration() fit used `groups` as the batches but did not record them (an older amedl); rerun IntegrateLayers(method = AMEDLIntegration, groups = ...)")
  } else {
    cell_batch <- meta[[key]]
    if (is.null(cell_batch)) {
      .stop("the batch column '%s' used for the fit is no longer in the %s; put it back (each cell's batch as given to RunAMEDL()) or rerun RunAMEDL()",
            key, where)
    }
    what <- sprintf("the batch column '%s' of the %s", key, where)
  }
  # the fit's batches, and a query's own batches (not added to the model when adapt = FALSE)
  known <- unique(as.character(c(unlist(params$batches), unlist(params$query$new_batches))))
  if (length(known)) {
    if (anyNA(cell_batch)) .stop("%s has missing values; the fit gave every cell a batch (put them back or rerun %s)", what, .refit_call(params))
    bad <- setdiff(unique(as.character(cell_batch)), known)
    if (length(bad)) {
      .stop("%s holds batches that the fit did not have (%s; the fit's batches: %s): it was changed after the fit. Put the fit's batches back, or rerun %s",
            what, .some(bad, 3), .some(known, 8), .refit_call(params))
    }
  }
  cell_batch
}

# The batch key a model was fitted with (the name of its batch column).
.model_batch_key <- function(model) {
  tryCatch(as.character(amedl_engine()$model_info(model)$batch_key), error = .py_error)
}

.integration_method <- "IntegrateLayers(method = AMEDLIntegration)"

# How to refit an object like the recorded fit: IntegrateLayers() for an AMEDLIntegration()
# fit, else RunAMEDL() (with `batch =` when `batch_hint`).
.refit_call <- function(params, batch_hint = FALSE) {
  if (identical(params$method, .integration_method)) return("IntegrateLayers(obj, method = AMEDLIntegration, ...)")
  if (batch_hint) "RunAMEDL(obj, batch = <a meta.data column with each cell's batch>)" else "RunAMEDL()"
}
