# Input checks and the call into the engine shared by all RunAMEDL() methods.

.stop <- function(...) stop(sprintf(...), call. = FALSE)

.scalar_int <- function(x, name, min = 1L, null_ok = FALSE) {
  if (is.null(x) && null_ok) return(NULL)
  if (!is.numeric(x) || length(x) != 1L || is.na(x) || x != round(x) || x < min) {
    .stop("`%s` must be a whole number >= %d%s, not %s", name, min,
          if (null_ok) " (or NULL)" else "", paste(deparse(x), collapse = " "))
  }
  as.integer(x)
}

# Checks a genes x cells count matrix; returns it as a dgCMatrix or a double matrix.
# `drop_hint` says how to drop cells in the user's kind of object.
.check_counts <- function(counts, what = "the count matrix",
                          drop_hint = "counts[, Matrix::colSums(counts) > 0]") {
  if (methods::is(counts, "sparseMatrix")) {
    counts <- methods::as(methods::as(methods::as(counts, "CsparseMatrix"), "generalMatrix"), "dMatrix")
    vals <- counts@x
  } else if (is.matrix(counts) || is.data.frame(counts)) {
    if (is.data.frame(counts)) counts <- as.matrix(counts)
    if (!is.numeric(counts) && !is.logical(counts)) {
      .stop("%s must be numeric (raw counts), but it holds %s values", what, typeof(counts))
    }
    storage.mode(counts) <- "double"
    vals <- counts
  } else {
    .stop("%s must be a matrix or a sparse Matrix (genes x cells), not an object of class %s%s",
          what, paste(class(counts), collapse = "/"),
          if (methods::is(counts, "DelayedArray")) "; read it into memory first, e.g. as(x, \"dgCMatrix\")" else "")
  }
  if (nrow(counts) < 2L || ncol(counts) < 2L) .stop("%s is %d x %d: it needs at least 2 genes (rows) and 2 cells (columns)", what, nrow(counts), ncol(counts))
  if (anyNA(vals)) .stop("%s has missing values (NA or NaN); aMEDL needs raw counts", what)
  if (any(is.infinite(vals))) .stop("%s has infinite values (Inf); aMEDL needs raw counts (finite, non-negative integers)", what)
  if (length(vals) && min(vals) < 0) .stop("%s has negative values; aMEDL needs raw counts (not scaled or centred data)", what)
  frac <- vals != round(vals)
  if (any(frac)) {
    .stop("%s has %d non-integer value(s) (e.g. %s): aMEDL needs raw counts (it normalises them itself), not normalised or log values",
          what, sum(frac), format(vals[which(frac)[1]], digits = 4))
  }
  if (is.null(rownames(counts))) .stop("%s has no row (gene) names; set rownames()", what)
  if (anyDuplicated(rownames(counts))) .stop("%s has duplicated gene names (e.g. '%s'); make them unique (make.unique())", what, rownames(counts)[anyDuplicated(rownames(counts))])
  if (is.null(colnames(counts))) colnames(counts) <- paste0("cell", seq_len(ncol(counts)))
  if (anyDuplicated(colnames(counts))) .stop("%s has duplicated cell names (e.g. '%s')", what, colnames(counts)[anyDuplicated(colnames(counts))])
  empty <- which(Matrix::colSums(counts) == 0)
  if (length(empty)) {
    .stop("%d cell(s) of %s have no counts at all (e.g. %s); remove them first, e.g. %s", length(empty), what,
          .some(colnames(counts)[empty], 3), drop_hint)
  }
  counts
}

# At most `n` values for a message, quoted, with how many more there are.
.some <- function(x, n = 5) {
  x <- as.character(x)
  out <- paste(sQuote(utils::head(x, n), FALSE), collapse = ", ")
  if (length(x) > n) out <- sprintf("%s and %d more", out, length(x) - n)
  out
}

# Per-cell values given as a vector (`batch`, `group.by`, `batch_of_cells`, `groups`) in the
# order of `cells`: a vector named by cell is matched by name (as Seurat's AddMetaData() does),
# an unnamed one is taken in the cells' order. Names that are not exactly the cell names (some
# missing, others extra, duplicated) are an error, never a silent mix-up. `genes` (the
# matrix's row names) lets the error say when the names are genes: a cells x genes matrix.
.by_cells <- function(x, cells, what = "`batch`", genes = NULL) {
  nm <- names(x)
  if (is.null(nm) || is.null(cells) || all(is.na(nm) | !nzchar(nm))) return(x)
  if (length(nm) == length(cells) && !anyNA(nm) && all(nm == cells)) return(x)
  if (length(nm) == length(cells) && !anyNA(nm) && !anyDuplicated(nm) && all(nm %in% cells)) return(x[cells])
  if (!is.null(genes) && length(nm) == length(genes) && !anyNA(nm) && setequal(nm, genes)) {
    .stop(paste0("%s is named by the row names of the count matrix, not by its column names (the cells): the matrix ",
                 "seems to be cells x genes.\nFix: aMEDL needs genes in rows and cells in columns: transpose it (Matrix::t(counts))"),
          what)
  }
  miss <- setdiff(cells, nm)
  extra <- setdiff(nm[!is.na(nm)], cells)
  dup <- unique(nm[duplicated(nm) & !is.na(nm)])
  problems <- c(
    if (length(miss)) sprintf("%d cell(s) have no value (e.g. %s)", length(miss), .some(miss, 3)),
    if (length(extra)) sprintf("%d name(s) are not cells (e.g. %s)", length(extra), .some(extra, 3)),
    if (length(dup)) sprintf("%d name(s) are duplicated (e.g. %s)", length(dup), .some(dup, 3)),
    if (anyNA(nm) || !all(nzchar(nm))) sprintf("%d value(s) have no name", sum(is.na(nm) | !nzchar(nm)))
  )
  .stop(paste0("%s is named, but its names are not the cell names (a named vector is matched to the cells by name): %s.\n",
               "Fix: name it by the cells (names(x) <- colnames(obj)), or unname() it to use its values in the cells' order"),
        what, paste(problems, collapse = "; "))
}

# A batch vector (one label per cell) checked and returned as a factor. With `cells` a vector
# named by cell is put in the cells' order (.by_cells()); with `genes` (the count matrix's row
# names) a vector with one value per gene is said to be a sign of a cells x genes matrix.
.check_batch <- function(batch, n_cells, what = "batch", min_batches = 2L, cells = NULL, genes = NULL) {
  if (is.null(batch)) .stop("`batch` is missing: give one batch label per cell (donor, sample, chemistry ...)")
  if (!is.atomic(batch) || !is.null(dim(batch))) .stop("%s must be a vector with one label per cell", what)
  if (!is.null(cells)) batch <- .by_cells(batch, cells, what, genes)
  if (length(batch) != n_cells) {
    .stop("%s has %d values for %d cells%s", what, length(batch), n_cells,
          if (!is.null(genes) && length(batch) == length(genes)) {
            paste0(" (the columns of the count matrix), as many as the matrix has rows: is the matrix cells x genes?\n",
                   "Fix: aMEDL needs genes in rows and cells in columns: transpose it (Matrix::t(counts))")
          } else "")
  }
  if (anyNA(batch)) .stop("%s has %d missing value(s); give every cell a batch (or drop those cells)", what, sum(is.na(batch)))
  blank <- !nzchar(trimws(as.character(batch)))
  if (any(blank)) {
    .stop("%s has %d empty label(s) (\"\"), which is no batch name; give every cell a batch (or drop those cells, e.g. with subset())",
          what, sum(blank))
  }
  b <- droplevels(as.factor(batch))
  if (nlevels(b) < min_batches) {
    .stop("%s has a single batch ('%s'): aMEDL separates batch effects and needs at least 2 batches", what, levels(b)[1])
  }
  sizes <- table(b)
  small <- names(sizes)[sizes < 2L]
  if (length(small) && min_batches >= 2L) {
    .stop("%d batch(es) of %s have fewer than 2 cells (%s); drop those cells (e.g. with subset()) or merge them with another batch",
          length(small), what, .some(small))
  }
  b
}

.check_features <- function(features, genes) {
  if (is.null(features) || !length(features)) return(NULL)
  features <- unique(as.character(features))
  miss <- setdiff(features, genes)
  if (length(miss)) {
    .stop("%d of %d features are not genes of the count matrix (e.g. %s)", length(miss), length(features),
          paste(utils::head(sQuote(miss, FALSE), 3), collapse = ", "))
  }
  if (length(features) < 2L) .stop("`features` must name at least 2 genes")
  features
}

.py_error <- function(e) {
  msg <- conditionMessage(e)
  # reticulate wraps Python exceptions; keep the Python message, drop the traceback noise
  msg <- sub("^Error in py_call_impl\\(callable, dots\\$args, dots\\$keywords\\) :\\s*", "", msg)
  msg <- sub("\n*Run `reticulate::py_last_error\\(\\)` for details\\.?\\s*$", "", msg)
  msg <- sub("\n*Detailed traceback:.*$", "", msg)
  # the engine's errors for the user (amedl.errors.*) need no Python class name
  msg <- sub("^(amedl\\.errors\\.)?AMEDL[A-Za-z]*Error: ", "", trimws(msg))
  stop(paste0("amedl: ", trimws(msg)), call. = FALSE)
}

# Fit on a genes x cells matrix; returns list(fe, re, model, params).
# `batch_key` is where the object holds the batches (recorded for AMEDLCounterfactual()
# and AMEDLBatchEffects()); with a model_dir holding a saved model, the object is mapped.
.amedl_fit <- function(counts, batch, batch_key = "batch", features = NULL, n_latent = NULL, n_top_genes = 2000,
                       epochs = NULL, seed = 0, preset = "default", model_dir = NULL, verbose = TRUE,
                       settings = list(), overwrite = FALSE, adapt = TRUE, adapted_model_dir = NULL) {
  n_latent <- .scalar_int(n_latent, "n_latent", 1L, null_ok = TRUE)
  n_top_genes <- .scalar_int(n_top_genes, "n_top_genes", 2L)
  epochs <- .scalar_int(epochs, "epochs", 1L, null_ok = TRUE)
  seed <- .scalar_int(seed, "seed", 0L)
  if (!is.character(preset) || length(preset) != 1L) .stop("`preset` must be a single string such as \"default\" or \"paper\"")
  if (!is.null(model_dir) && (!is.character(model_dir) || length(model_dir) != 1L || is.na(model_dir))) .stop("`model_dir` must be a folder path or NULL")
  if (!is.logical(overwrite) || length(overwrite) != 1L || is.na(overwrite)) .stop("`overwrite` must be TRUE or FALSE")
  if (!is.logical(adapt) || length(adapt) != 1L || is.na(adapt)) .stop("`adapt` must be TRUE or FALSE")
  if (!is.null(adapted_model_dir) && (!is.character(adapted_model_dir) || length(adapted_model_dir) != 1L ||
                                      is.na(adapted_model_dir) || !nzchar(adapted_model_dir))) {
    .stop("`adapted_model_dir` must be a folder path or NULL")
  }
  settings <- .check_settings(settings)
  threads <- getOption("amedl.threads", NULL)
  if (is.null(settings$threads) && !is.null(threads)) settings$threads <- .scalar_int(threads, "options(amedl.threads)", 1L)
  bridge <- amedl_engine()
  mapping <- .maps_query(model_dir, overwrite)
  if (!is.null(adapted_model_dir)) .check_adapted_model_dir(bridge, adapted_model_dir, model_dir, mapping, adapt)
  if (mapping) {
    ignored <- .ignored_when_mapping(features, n_latent, n_top_genes, epochs, preset, settings)
    if (length(ignored)) {
      warning(sprintf(paste0(
        "amedl: model_dir '%s' holds a saved model, so RunAMEDL() maps the object onto it and trains nothing: ",
        "%s %s ignored (the saved model fixes the genes, the latent size and every training setting). ",
        "To train a new model with them, use a new model_dir, or overwrite = TRUE to replace the saved model."),
        model_dir, paste(ignored, collapse = ", "), if (length(ignored) > 1L) "are" else "is"), call. = FALSE)
    }
    if (!is.null(settings$threads)) bridge$set_threads(settings$threads)
    res <- .amedl_map(bridge, counts, batch, model_dir, adapt = adapt, seed = seed, verbose = verbose,
                      adapted_model_dir = adapted_model_dir)
    res$params$batch_key <- batch_key  # the record names the model's own batch key; R reads this object's
    return(res)
  }
  features <- .check_features(features, rownames(counts))
  res <- tryCatch(
    bridge$fit(
      counts, colnames(counts), rownames(counts), as.character(batch),
      batch_key = batch_key, batch_levels = levels(batch),
      features = features, n_latent = n_latent, n_top_genes = n_top_genes,
      epochs = epochs, seed = seed, preset = preset,
      model_dir = if (is.null(model_dir)) NULL else path.expand(model_dir),
      progress = isTRUE(verbose),
      settings = if (length(settings)) unclass(settings) else NULL,
      overwrite = overwrite
    ),
    error = .py_error
  )
  .amedl_result(res, colnames(counts))
}

# `adapted_model_dir` (keep the model adapted to a query on disk), checked before anything runs:
# only for query mapping with adapt = TRUE, a new or empty folder, never model_dir itself.
.check_adapted_model_dir <- function(bridge, adapted_model_dir, model_dir, mapping, adapt) {
  if (!mapping) {
    .stop(paste0("`adapted_model_dir` keeps the model adapted to a query's new batches, so it needs query mapping: ",
                 "a `model_dir` that holds a saved model (and overwrite = FALSE); %s. ",
                 "Fix: drop adapted_model_dir when fitting a model (model_dir keeps it)"),
          if (is.null(model_dir)) "model_dir is NULL" else sprintf("model_dir '%s' holds no saved model, or overwrite = TRUE", model_dir))
  }
  if (!isTRUE(adapt)) {
    .stop("`adapted_model_dir` saves the model adapted to the query's new batches: it needs adapt = TRUE (or drop adapted_model_dir)")
  }
  target <- path.expand(adapted_model_dir)
  if (file.exists(target) && !dir.exists(target)) .stop("`adapted_model_dir` '%s' is a file, not a folder", adapted_model_dir)
  if (dir.exists(target)) {
    if (identical(normalizePath(target), normalizePath(path.expand(model_dir)))) {
      .stop("`adapted_model_dir` is model_dir itself ('%s'), which query mapping never changes: choose another folder",
            adapted_model_dir)
    }
    if (length(list.files(target, all.files = TRUE, no.. = TRUE))) {
      if (isTRUE(bridge$is_model_dir(target))) {
        .stop(paste0("`adapted_model_dir` '%s' already holds an amedl model, which RunAMEDL() does not replace.\n",
                     "Fix: to embed with that model, pass model_dir = \"%s\" (without adapted_model_dir); to adapt ",
                     "again, choose a new folder or remove it first (unlink(\"%s\", recursive = TRUE))"),
              adapted_model_dir, adapted_model_dir, adapted_model_dir)
      }
      .stop("`adapted_model_dir` '%s' is not empty and is not an amedl model: give a new or empty folder (a folder holding anything else is never replaced)",
            adapted_model_dir)
    }
  }
  invisible(TRUE)
}

# Whether RunAMEDL() maps the object onto the model saved in `model_dir` instead of training.
.maps_query <- function(model_dir, overwrite = FALSE) {
  !is.null(model_dir) && !isTRUE(overwrite) && dir.exists(path.expand(model_dir)) &&
    isTRUE(amedl_engine()$is_model_dir(path.expand(model_dir)))
}

# Map a query onto a saved model: new batches get their own random effects (adapt = TRUE)
# or the batch-membership predictor's mixture of the learned ones. With `adapted_model_dir`
# the adapted model is saved there and recorded as the object's model_dir.
.amedl_map <- function(bridge, counts, batch, model_dir, adapt = TRUE, seed = 0, verbose = TRUE,
                       adapted_model_dir = NULL) {
  # adaptation takes seconds: a message says what was done, no progress bar
  res <- tryCatch(
    bridge$map_query(path.expand(model_dir), counts, colnames(counts), rownames(counts), as.character(batch),
                     batch_levels = levels(batch), adapt = adapt, seed = seed, progress = FALSE),
    error = .py_error
  )
  new <- unlist(res$new_batches)
  reference <- res$model_dir
  if (!is.null(adapted_model_dir)) {
    res$model_dir <- tryCatch(bridge$save_model(res$model, path.expand(adapted_model_dir), overwrite = FALSE),
                              error = .py_error)
  }
  if (isTRUE(verbose)) {
    how <- switch(res$unseen_batches,
      adapted = "learned their random effects with the model's weights frozen (adapt = TRUE)",
      predict = "gave them the batch-membership predictor's mixture of the learned batches' effects (adapt = FALSE)",
      "gave them zero random effects")
    message(sprintf("amedl: mapped %d cells onto the model in '%s'%s%s", ncol(counts), model_dir,
                    if (length(new)) sprintf("; %d new batch(es) (%s): %s", length(new), .some(new), how) else "",
                    if (!is.null(adapted_model_dir)) sprintf("; the adapted model is saved in '%s'", adapted_model_dir) else ""))
  }
  out <- .amedl_result(res, colnames(counts))
  out$params$query <- list(new_batches = if (length(new)) new else character(0), unseen_batches = res$unseen_batches,
                           reference_model_dir = reference)
  out
}

# The R result of a fit or a mapping: latents with cell names and the recorded parameters.
.amedl_result <- function(res, cells) {
  fe <- .latent_matrix(res$fe, cells, "amedlfe_")
  re <- .latent_matrix(res$re, cells, "amedlre_")
  # the engine's record (the same uns['amedl'] that `amedl fit` and amedl.tl.amedl write), and
  # where this R session finds the model again
  # (a Python list becomes a vector; an empty one, e.g. settings_none, character(0), not NULL,
  # which would drop the field from the record)
  record <- lapply(res$record, function(v) {
    if (!is.list(v) || !is.null(names(v))) return(v)
    u <- unlist(v)
    if (is.null(u)) character(0) else u
  })
  params <- c(record, list(model_id = .cache_model(res$model), model_dir = res$model_dir))
  list(fe = fe, re = re, model = res$model, params = params[!vapply(params, is.null, logical(1))])
}

.latent_matrix <- function(x, cells, key) {
  x <- as.matrix(x)
  storage.mode(x) <- "double"
  dimnames(x) <- list(cells, paste0(key, seq_len(ncol(x))))
  x
}

# Fitted models stay in this R session, keyed by an id recorded in the object.
.cache_model <- function(model) {
  if (is.null(.amedl_state$models)) .amedl_state$models <- list()
  .amedl_state$counter <- (if (is.null(.amedl_state$counter)) 0L else .amedl_state$counter) + 1L
  id <- sprintf("amedl-%s-%d-%d", format(Sys.time(), "%Y%m%d%H%M%S"), Sys.getpid(), .amedl_state$counter)
  .amedl_state$models[[id]] <- model
  id
}

# The model behind a set of recorded parameters: this session's cache, else model_dir.
.find_model <- function(params, model = NULL) {
  if (!is.null(model)) {
    if (is.character(model)) return(.load_model(model))
    return(.check_model_object(model))
  }
  if (is.null(params)) {
    .stop("this object has no aMEDL parameters recorded: run RunAMEDL() on it first (or pass model =)")
  }
  id <- params$model_id
  if (!is.null(id) && !is.null(.amedl_state$models[[id]])) return(.amedl_state$models[[id]])
  if (!is.null(params$model_dir) && dir.exists(params$model_dir)) {
    m <- .load_model(params$model_dir)
    .check_adapted_batches(m, params)
    .check_fingerprint(m, params)
    return(m)
  }
  refit <- if (identical(params$method, .integration_method)) {
    "rerun IntegrateLayers(obj, method = AMEDLIntegration, ..., model_dir = \"some/folder\")"
  } else {
    "rerun RunAMEDL(..., model_dir = \"some/folder\")"
  }
  .stop(paste0(
    "the aMEDL model fitted for this object is not available: fitted models are kept in memory only in the R session ",
    "that fitted them%s.\nFix: %s to keep the model on disk, ",
    "or pass model = \"path/to/model_dir\""),
    if (!is.null(params$model_dir)) sprintf(", and model_dir '%s' does not exist", params$model_dir) else " and no model_dir was given",
    refit)
}

# The model loaded from a recorded model_dir must be the one fitted for the object: the folder
# may have been overwritten since (RunAMEDL(..., overwrite = TRUE) of another fit). The record's
# `fingerprint` (a checksum of the model's weights, intercepts, genes and batches) tells; records
# made before amedl recorded it are not checked.
.check_fingerprint <- function(model, params) {
  want <- .recorded(params$fingerprint)
  if (is.null(want)) return(invisible(TRUE))
  have <- tryCatch(as.character(model$fingerprint), error = function(e) NULL)
  if (is.null(have) || identical(have, want)) return(invisible(TRUE))
  refit <- if (identical(params$method, .integration_method)) "IntegrateLayers(obj, method = AMEDLIntegration, ...)" else "RunAMEDL()"
  .stop(paste0(
    "the model in model_dir '%s' is not the model fitted for this object (its fingerprint is %s; the object recorded %s): ",
    "the folder was overwritten by another fit (e.g. with overwrite = TRUE) after this object was fitted, and using it ",
    "would give results of another model.\n",
    "Fix: rerun %s on this object (with a new model_dir to keep the model), or pass model = \"path/to/the/right/model_dir\" ",
    "if the object's model was saved elsewhere"),
    params$model_dir, have, want, refit)
}

# A query mapped with adapt = TRUE: its new batches were adapted onto the model in memory. A
# model loaded from model_dir in a later session lacks them unless adapted_model_dir kept them.
.check_adapted_batches <- function(model, params) {
  q <- params$query
  if (is.null(q) || !identical(q$unseen_batches, "adapted")) return(invisible(TRUE))
  new <- as.character(unlist(q$new_batches))
  known <- unlist(tryCatch(amedl_engine()$model_info(model)$batches, error = .py_error))
  miss <- setdiff(new, known)
  if (!length(miss)) return(invisible(TRUE))
  key <- params$batch_key
  batch_arg <- if (identical(key, "layer_split")) "" else if (is.null(key) || is.null(params$object_kind) || identical(key, "groups"))
    "batch = <each cell's batch>, " else sprintf("batch = \"%s\", ", key)
  .stop(paste0(
    "the batch(es) %s of this object were adapted onto the model in '%s' by RunAMEDL() in an earlier R session; ",
    "adapted batches are kept in that session's memory only, and model_dir holds the reference model without them.\n",
    "Fix: in this session, rerun RunAMEDL(object, %smodel_dir = \"%s\") to adapt them again (it takes ",
    "seconds and trains nothing else); add adapted_model_dir = \"some/folder\" to keep the adapted model on disk ",
    "for later sessions"),
    .some(miss), params$model_dir, batch_arg, params$model_dir)
}

# A model given as `model =` that is not a folder: the Python model of this R session. A
# Python object read back with readRDS() (e.g. `fit$model` of a saved matrix fit) points to
# a Python session that is gone; the list RunAMEDL() returns for a matrix is not the model.
.check_model_object <- function(model) {
  if (is.list(model) && !inherits(model, "python.builtin.object") && !is.null(model$model) && !is.null(model$params)) {
    .stop("`model` is the list that RunAMEDL() returned for a count matrix; pass its model: model = fit$model (or the model folder, model = \"path/to/model_dir\")")
  }
  if (!inherits(model, "python.builtin.object")) {
    .stop("`model` must be a model folder (a path) or the Python model of this R session (the `model` element returned by RunAMEDL() for a matrix, or AMEDLModel(obj)), not an object of class %s",
          paste(class(model), collapse = "/"))
  }
  if (reticulate::py_is_null_xptr(model)) {
    .stop(paste0("`model` is a Python model from an earlier R session (e.g. `fit$model` of a fit saved with saveRDS() and ",
                 "read back with readRDS()): Python objects do not outlive the R session that made them.\n",
                 "Fix: pass the model's folder instead, model = \"path/to/model_dir\" (for a fit made with model_dir, ",
                 "fit$params$model_dir); a fit made without model_dir kept its model in memory only: rerun ",
                 "RunAMEDL(..., model_dir = \"some/folder\") to keep it on disk"))
  }
  model
}

.load_model <- function(path) {
  if (!dir.exists(path)) .stop("no aMEDL model folder at '%s'", path)
  tryCatch(amedl_engine()$load_model(normalizePath(path)), error = .py_error)
}

#' The fitted aMEDL model of an object
#'
#' Returns the Python model (an `amedl.AMEDL` object, through reticulate)
#' that [RunAMEDL()] fitted for `object`: from this R session's memory, or
#' loaded from the `model_dir` recorded when it was fitted. For a query
#' mapped with `adapt = TRUE` in an earlier R session, the model in
#' `model_dir` lacks the query's adapted batches: that is an error that says
#' how to adapt them again (see `adapt` and `adapted_model_dir` in
#' [RunAMEDL()]).
#'
#' @param object A Seurat object or SingleCellExperiment after [RunAMEDL()],
#'   or the list returned by the matrix method.
#' @param reduction Seurat: the reduction holding the parameters.
#' @return The Python model object.
#' @examples
#' \dontrun{
#' m <- AMEDLModel(sce)
#' m$genes
#' }
#' @export
AMEDLModel <- function(object, reduction = "amedl_fe") {
  .find_model(.amedl_params(object, reduction))
}

.amedl_params <- function(object, reduction = "amedl_fe") {
  if (methods::is(object, "Seurat")) {
    if (!reduction %in% names(object@reductions)) .stop("the Seurat object has no reduction '%s': run RunAMEDL() first", reduction)
    return(object@reductions[[reduction]]@misc$amedl)
  }
  if (methods::is(object, "SingleCellExperiment")) return(S4Vectors::metadata(object)$amedl)
  if (is.list(object) && !is.null(object$params)) return(object$params)
  .stop("cannot find aMEDL parameters in an object of class %s", paste(class(object), collapse = "/"))
}
