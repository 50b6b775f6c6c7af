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
#'   split is the batch, and each cell's batch is recorded by cell
#'   (`Misc(obj[["amedl_fe"]])$amedl$cell_batches`), so that
#'   [AMEDLCounterfactual()] and [AMEDLBatchEffects()] work also after
#'   `JoinLayers()`. The reduction keys must not be those of another
#'   reduction or assay of the object (checked before training). The
#'   reductions' names and keys are made from `reduction.prefix` (Seurat's
#'   `reduction.name` and `reduction.key` are not arguments of
#'   `RunAMEDL()`). An SCTransform assay (the default assay after
#'   `SCTransform()`) is an error: aMEDL fits the raw counts and normalises
#'   them itself; pass `assay = "RNA"`.
#' * The **SingleCellExperiment** method adds the reducedDims `AMEDL_FE` and
#'   `AMEDL_RE` and records the parameters in `metadata(sce)$amedl`. The
#'   cells need names (`colnames(sce)`; `NULL` is an error).
#' * For both, `batch` given as a vector (not a column name) is also stored
#'   in the cell-metadata column `amedl_batch` (meta.data or colData), and
#'   that column is recorded as the fit's batch column, so that
#'   [AMEDLCounterfactual()] and [AMEDLBatchEffects()] use the same batches.
#'   An existing `amedl_batch` column that holds other values is never
#'   overwritten: that is an error, before training.
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
#' and a batch column (a single batch is fine). The saved model fixes the
#' genes, the latent size and the training settings: `features`, `n_latent`,
#' `n_top_genes`, `epochs`, `preset` and `settings` (other than `threads`)
#' are not used, and giving any of them (other than its default) gives a
#' warning that names them (use
#' a new `model_dir`, or `overwrite = TRUE`, to train with them).
#'
#' @param object A Seurat object, a SingleCellExperiment, or a genes x cells
#'   count matrix (base `matrix` or `dgCMatrix`).
#' @param batch The batch of each cell: for Seurat and SingleCellExperiment
#'   the name of a column of the cell metadata, or a vector with one value
#'   per cell (then stored in the cell-metadata column `amedl_batch`, see
#'   Details); for a matrix a vector with one value per cell. A vector named
#'   by cell (e.g. `setNames(donor, colnames(obj))`) is matched to the cells
#'   by name, in any order; names that are not exactly the cell names are an
#'   error; an unnamed vector is taken in the cells' order. At least two
#'   batches are needed (one is enough for query mapping); missing (`NA`) or
#'   empty (`""`) labels are an error.
#' @param features Genes to model. The genes are chosen in this order:
#'   `features` when given; else, when `n_top_genes` is given, the engine
#'   picks that many highly variable genes (batch-aware); else, for Seurat,
#'   the assay's variable features when they are set; else the engine picks
#'   the default `n_top_genes` (2000). With `verbose = TRUE` the Seurat
#'   method says which was used.
#' @param n_latent Size of each latent; `NULL` uses the preset's (10 by
#'   default, 50 for `preset = "paper"`).
#' @param n_top_genes Number of highly variable genes the engine selects when
#'   `features` is not given. Given explicitly, it takes precedence over a
#'   Seurat object's variable features (see `features`).
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
#'   small difference). The adapted model stays in this R session's memory
#'   (`model_dir` is never changed), so that [AMEDLCounterfactual()] and
#'   [AMEDLBatchEffects()] can compare the query's batches with the model's
#'   in this session. In a later R session (the object saved with
#'   `saveRDS()` and read back) only the reference model in `model_dir` is
#'   found, without the adapted batches: [AMEDLModel()],
#'   [AMEDLCounterfactual()] and [AMEDLBatchEffects()] then stop with an
#'   error saying so; rerun the same `RunAMEDL(query, batch = ..., model_dir
#'   = ...)` in that session to adapt them again (it takes seconds), or keep
#'   the adapted model on disk with `adapted_model_dir`.
#' @param adapted_model_dir Query mapping with `adapt = TRUE` only: a new or
#'   empty folder to save the adapted model in (the reference model and the
#'   query's adapted batches). It is recorded as the object's model folder,
#'   so later R sessions find the adapted model; `model_dir` is not changed.
#'   It is checked before anything runs; a folder that already holds
#'   anything (an amedl model included) is never replaced. `NULL` (default):
#'   the adapted model is kept in memory only.
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
#' query <- RunAMEDL(query, batch = "donor", model_dir = "ref_model",
#'                   adapted_model_dir = "query_model")  # keep the adapted model
#' }
#' @export
RunAMEDL <- function(object, ...) UseMethod("RunAMEDL")

#' @rdname RunAMEDL
#' @export
RunAMEDL.default <- function(object, batch, features = NULL, n_latent = NULL, n_top_genes = 2000,
                             epochs = NULL, seed = 0, model_dir = NULL, preset = "default",
                             verbose = TRUE, settings = list(), overwrite = FALSE, adapt = TRUE,
                             adapted_model_dir = NULL, ...) {
  if (!(is.matrix(object) || methods::is(object, "Matrix") || is.data.frame(object))) {
    .stop("RunAMEDL() needs a Seurat object, a SingleCellExperiment or a genes x cells count matrix, not an object of class %s",
          paste(class(object), collapse = "/"))
  }
  .check_dots(...)
  counts <- .check_counts(object)
  if (missing(batch)) batch <- NULL
  b <- .check_batch(batch, ncol(counts), min_batches = if (.maps_query(model_dir, overwrite)) 1L else 2L,
                    cells = colnames(counts), genes = rownames(counts))
  res <- .amedl_fit(counts, b, batch_key = "batch", features = features, n_latent = n_latent,
                    n_top_genes = n_top_genes, epochs = epochs, seed = seed, preset = preset,
                    model_dir = model_dir, verbose = verbose, settings = settings, overwrite = overwrite,
                    adapt = adapt, adapted_model_dir = adapted_model_dir)
  res
}

# Arguments no method takes are an error; `hints` (named by argument) say what to use instead.
.check_dots <- function(..., hints = NULL) {
  dots <- list(...)
  if (length(dots)) {
    nm <- names(dots)
    nm <- if (is.null(nm)) rep("<unnamed>", length(dots)) else ifelse(is.na(nm) | nm == "", "<unnamed>", nm)
    hint <- unique(hints[intersect(nm, names(hints))])
    .stop("unknown argument(s): %s%s", paste(nm, collapse = ", "),
          if (length(hint)) paste0("\n", paste(hint, collapse = "\n")) else "")
  }
}

# Seurat's reduction.name / reduction.key (RunPCA(), RunUMAP() ...): RunAMEDL() makes two
# reductions, named and keyed from `reduction.prefix`.
.seurat_dots_hints <- function() {
  h <- paste0("Fix: RunAMEDL() adds two reductions, whose names and keys are made from `reduction.prefix`: ",
              "reduction.prefix = \"amedl\" (the default) gives the reductions amedl_fe and amedl_re with the keys ",
              "amedlfe_ and amedlre_; e.g. reduction.prefix = \"amedl2\" gives amedl2_fe and amedl2_re")
  c(reduction.name = h, reduction.key = h)
}

# Batch labels from a column name or a per-cell vector. For a Seurat object or a
# SingleCellExperiment (`store = TRUE`) a vector is kept in the cell-metadata column
# "amedl_batch" and that column is recorded as the batch key, so that
# AMEDLCounterfactual() and AMEDLBatchEffects() read the fit's batches again; an
# "amedl_batch" column that holds other values is never overwritten.
.amedl_batch_col <- "amedl_batch"

.batch_from_meta <- function(batch, meta, n_cells, where, store = FALSE, obj = "obj") {
  if (is.character(batch) && length(batch) == 1L && n_cells != 1L) {
    if (is.na(batch) || !batch %in% colnames(meta)) {
      .stop("`batch = \"%s\"` is not a column of the %s; columns are: %s", batch, where,
            paste(colnames(meta), collapse = ", "))
    }
    return(list(values = meta[[batch]], key = batch, what = sprintf("column '%s' of the cell metadata", batch),
                store = FALSE))
  }
  # a vector named by cell is matched to the cells by name (as AddMetaData() does)
  if (is.atomic(batch) && is.null(dim(batch))) batch <- .by_cells(batch, rownames(meta), "`batch`")
  if (!store) return(list(values = batch, key = "batch", what = "`batch`", store = FALSE))
  col <- .amedl_batch_col
  if (col %in% colnames(meta) && is.atomic(batch) && is.null(dim(batch)) && length(batch) == n_cells &&
      !identical(as.character(meta[[col]]), as.character(batch))) {
    .stop(paste0(
      "`batch` is a vector, which RunAMEDL() keeps in the %s column '%s' (so that AMEDLCounterfactual() and ",
      "AMEDLBatchEffects() use the fit's batches), but that column already holds other values and is not overwritten.\n",
      "Fix: put the batches in a column of their own and name it (%s$donor <- my_batches; RunAMEDL(%s, batch = \"donor\")), ",
      "or remove the old column first (%s$%s <- NULL)"), where, col, obj, obj, obj, col)
  }
  list(values = batch, key = col, what = "`batch`", store = TRUE)
}

# A reduction-name prefix (Seurat): checked before training. Returns the key root.
.check_prefix <- function(prefix, arg = "reduction.prefix") {
  if (!is.character(prefix) || length(prefix) != 1L || is.na(prefix) || !nzchar(prefix)) {
    .stop("`%s` must be a single non-empty string, e.g. \"amedl\"", arg)
  }
  keyroot <- gsub("[^A-Za-z0-9]", "", prefix)
  if (!grepl("^[A-Za-z]", keyroot)) {
    .stop("`%s = \"%s\"` must start with a letter (after dropping characters other than letters and digits, it makes the reduction keys, e.g. \"amedl\" gives amedlfe_ and amedlre_)",
          arg, prefix)
  }
  keyroot
}

# Training arguments that query mapping (model_dir holding a saved model) does not use,
# named when they differ from their defaults: the saved model fixes them.
.ignored_when_mapping <- function(features, n_latent, n_top_genes, epochs, preset, settings) {
  extra <- setdiff(names(settings), "threads")
  given <- c(
    features = !is.null(features) && length(features) > 0L,
    n_latent = !is.null(n_latent),
    n_top_genes = !identical(as.numeric(n_top_genes), 2000),
    epochs = !is.null(epochs),
    preset = !identical(preset, "default"),
    settings = length(extra) > 0L
  )
  out <- names(given)[given]
  out[out == "settings"] <- sprintf("settings (%s)", paste(extra, collapse = ", "))
  out
}
