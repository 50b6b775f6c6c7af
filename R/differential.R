#' Differential expression between batches, with uncertainty
#'
#' For the cells of an object that [RunAMEDL()] fitted, compares their
#' counterfactual expression as batch `batch_a` with that as batch `batch_b`
#' (or with the average over the training batches): per gene, and per cell group with
#' `group.by`, the log2 fold change of mean expression per 10^4 counts, its
#' credible interval and the probability that its size exceeds `delta`, from
#' Monte Carlo draws of the random-effects posterior. Use it to ask what a
#' donor, a stimulation or a chemistry does to each cell type.
#'
#' The interval is the posterior uncertainty of the batches' random effects,
#' given the fitted network. Cell-to-cell sampling is not in it, so it does not
#' widen for a small group, and `credible` is a per-gene call with no
#' multiple-testing correction. Its ends are Monte Carlo estimates: with the
#' default 100 draws they can move between seeds by a few tenths of a log2
#' unit, so give `n_samples = 1000` for results to report.
#'
#' @param object A Seurat object or SingleCellExperiment after [RunAMEDL()],
#'   or a genes x cells count matrix (then `model` and `batch_of_cells` are needed).
#' @param batch_a The batch whose effects are reported (one of the model's
#'   batches: a query's new batch mapped with `adapt = FALSE` has no random
#'   effects of its own, see [RunAMEDL()]).
#' @param batch_b The batch it is compared with; `NULL` (default) compares with
#'   the average over the batches the model was trained on, `batch_a` included
#'   when it is one of them (batches added later by query mapping do not change it).
#' @param group.by A column of the cell metadata (meta.data or colData) naming
#'   cell groups, or one label per cell (a vector named by cell is matched to
#'   the cells by name; names that are not exactly the cell names are an
#'   error); `NULL` for one result over all cells.
#' @param n_samples Monte Carlo draws of the posterior: a whole number >= 2
#'   (1000 for results to report).
#' @param delta Threshold of `p_effect`, the posterior probability that
#'   |LFC| > delta: a single number >= 0.
#' @param credible Mass of the credible interval, between 0 and 1.
#' @param seed Seed of the draws (and of the subsample): a whole number >= 0.
#' @param max_cells At most this many cells of each group are decoded (a
#'   seeded subsample; smaller groups whole): a whole number >= 1, or `NULL`
#'   for every cell.
#' @param model A model folder or Python model; default the model recorded in `object`.
#'   A Python model lives only in the R session that made it: after
#'   `readRDS()` of a matrix fit, pass its folder (`fit$params$model_dir`).
#' @param ... Arguments passed to methods.
#' @return A data.frame sorted by `lfc` (within `group` with `group.by`):
#'   with `group.by`, first `group` (the cell group of the row), then
#'   `gene`, `lfc`, `lfc_sd`, `ci_low`, `ci_high`, `p_effect`, `credible`
#'   (the interval excludes 0), `mean_a`, `mean_b` and `n_cells` (the cells
#'   of the group, or of the object, that were decoded: at most `max_cells`).
#' @examples
#' \dontrun{
#' seu <- RunAMEDL(seu, batch = "sample_id")
#' de <- AMEDLBatchEffects(seu, "stim101", "ctrl101", group.by = "cluster_id")
#' head(de[de$group == "CD14+ Monocytes", ])
#' }
#' @export
AMEDLBatchEffects <- function(object, batch_a, batch_b = NULL, group.by = NULL, ...) UseMethod("AMEDLBatchEffects")

# The Monte Carlo settings of AMEDLBatchEffects(), checked before anything runs.
.check_mc_args <- function(n_samples, delta, credible, seed, max_cells = NULL) {
  n_samples <- .scalar_int(n_samples, "n_samples", 2L)
  max_cells <- .scalar_int(max_cells, "max_cells", 1L, null_ok = TRUE)
  if (!is.numeric(delta) || length(delta) != 1L || is.na(delta) || !is.finite(delta) || delta < 0) {
    .stop("`delta` must be a single number >= 0 (the |LFC| threshold of p_effect), not %s", paste(deparse(delta), collapse = " "))
  }
  if (!is.numeric(credible) || length(credible) != 1L || is.na(credible) || credible <= 0 || credible >= 1) {
    .stop("`credible` must be a single number between 0 and 1 (the mass of the credible interval, e.g. 0.95), not %s",
          paste(deparse(credible), collapse = " "))
  }
  seed <- .scalar_int(seed, "seed", 0L)
  list(n_samples = n_samples, delta = as.numeric(delta), credible = as.numeric(credible), seed = seed,
       max_cells = max_cells)
}

.run_differential <- function(model, counts, cell_batch, batch_a, batch_b, groups, n_samples, delta, credible, seed,
                              max_cells, params = NULL) {
  mc <- .check_mc_args(n_samples, delta, credible, seed, max_cells)
  info <- tryCatch(amedl_engine()$model_info(model), error = .py_error)
  batches <- unlist(info$batches)
  for (b in list(batch_a, batch_b)) {
    if (is.null(b)) next
    if (length(b) != 1L) .stop("`batch_a` and `batch_b` must be single batch names")
    if (!as.character(b) %in% batches) .unknown_batch(as.character(b), batches, params)
  }
  if (!is.null(batch_b) && identical(as.character(batch_a), as.character(batch_b))) {
    .stop("`batch_a` and `batch_b` are the same batch ('%s'): name two batches, or leave `batch_b` out to compare with the average over the training batches",
          as.character(batch_a))
  }
  if (!is.null(groups) && anyNA(groups)) .stop("`group.by` has missing values; give every cell a group or subset() the object")
  res <- tryCatch(
    amedl_engine()$differential(model, counts, colnames(counts), rownames(counts), as.character(cell_batch),
                                as.character(batch_a), if (is.null(batch_b)) NULL else as.character(batch_b),
                                if (is.null(groups)) NULL else as.character(groups),
                                n_samples = mc$n_samples, delta = mc$delta, credible = mc$credible,
                                seed = mc$seed, max_cells = mc$max_cells),
    error = .py_error
  )
  out <- as.data.frame(lapply(res, unlist), stringsAsFactors = FALSE)
  rownames(out) <- NULL
  out
}

.groups_of <- function(group.by, meta, n) {
  if (is.null(group.by)) return(NULL)
  if (length(group.by) == 1L && is.character(group.by) && n != 1L) {
    if (!group.by %in% colnames(meta)) .stop("group.by column '%s' is not in the cell metadata", group.by)
    return(meta[[group.by]])
  }
  # a vector named by cell is matched to the cells by name
  group.by <- .by_cells(group.by, rownames(meta), "`group.by`")
  if (length(group.by) != n) .stop("`group.by` has %d values for %d cells", length(group.by), n)
  group.by
}

#' @rdname AMEDLBatchEffects
#' @param batch_of_cells Matrix method: each cell's own batch (a vector named
#'   by cell is matched to the matrix's columns by name).
#' @export
AMEDLBatchEffects.default <- function(object, batch_a, batch_b = NULL, group.by = NULL, model = NULL,
                                      batch_of_cells = NULL, n_samples = 100, delta = 0.5, credible = 0.95,
                                      seed = 0, max_cells = 20000, ...) {
  .check_dots(...)
  .check_not_fit_list(object, "AMEDLBatchEffects")
  if (is.null(model)) .stop("`model` is needed for a matrix: the `model` element returned by RunAMEDL(), or a model folder")
  counts <- .check_counts(object)
  .check_mc_args(n_samples, delta, credible, seed, max_cells)  # (before the model is loaded)
  m <- .find_model(NULL, model)
  batch_of_cells <- .check_batch_of_cells(batch_of_cells, counts)
  groups <- if (is.null(group.by)) NULL else .groups_of(group.by, data.frame(row.names = colnames(counts)), ncol(counts))
  .run_differential(m, counts, batch_of_cells, batch_a, batch_b, groups,
                    n_samples, delta, credible, seed, max_cells)
}

#' @rdname AMEDLBatchEffects
#' @param reduction Seurat: the aMEDL reduction whose parameters name the model.
#' @export
AMEDLBatchEffects.Seurat <- function(object, batch_a, batch_b = NULL, group.by = NULL, model = NULL,
                                     n_samples = 100, delta = 0.5, credible = 0.95, seed = 0,
                                     max_cells = 20000, reduction = "amedl_fe", ...) {
  .check_dots(...)
  fit <- .seurat_fit_inputs(object, model, reduction)
  .run_differential(fit$model, fit$counts, fit$batch, batch_a, batch_b,
                    .groups_of(group.by, fit$meta, ncol(fit$counts)), n_samples, delta, credible, seed,
                    max_cells, params = fit$params)
}

#' @rdname AMEDLBatchEffects
#' @export
AMEDLBatchEffects.SingleCellExperiment <- function(object, batch_a, batch_b = NULL, group.by = NULL, model = NULL,
                                                   n_samples = 100, delta = 0.5, credible = 0.95, seed = 0,
                                                   max_cells = 20000, ...) {
  .check_dots(...)
  fit <- .sce_fit_inputs(object, model)
  .run_differential(fit$model, fit$counts, fit$batch, batch_a, batch_b,
                    .groups_of(group.by, fit$meta, ncol(fit$counts)), n_samples, delta, credible, seed,
                    max_cells, params = fit$params)
}
