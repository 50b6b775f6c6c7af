# Seurat support: counts from Seurat 4 (Assay, GetAssayData) and Seurat 5
# (Assay5, LayerData with split layers), reductions out.

.seurat_ns <- function() {
  if (!requireNamespace("SeuratObject", quietly = TRUE)) {
    .stop("the SeuratObject package is needed for Seurat objects; install it (Debian: apt-get install r-cran-seuratobject)")
  }
  asNamespace("SeuratObject")
}

#' Counts (or another layer) of a Seurat assay, for Seurat 4 and 5
#'
#' Returns the genes x cells matrix of `layer` in `assay`, columns in the
#' object's cell order. With SeuratObject 5 (`LayerData()`), split layers
#' (`counts.A`, `counts.B`, ...) are joined, and the layer each cell came
#' from is returned as the attribute `split` (a factor, `NULL` when the layer
#' is not split). With SeuratObject 4 it is `GetAssayData(slot = layer)`.
#'
#' @param object A Seurat object.
#' @param assay Assay name (default: the default assay).
#' @param layer Layer (slot) name, e.g. `"counts"` or `"data"`.
#' @return A matrix (usually a `dgCMatrix`) with attribute `split`.
#' @examples
#' if (requireNamespace("SeuratObject", quietly = TRUE)) {
#'   m <- SeuratLayerCounts(SeuratObject::pbmc_small)
#'   dim(m)
#' }
#' @export
SeuratLayerCounts <- function(object, assay = NULL, layer = "counts") {
  .seurat_ns()
  if (!methods::is(object, "Seurat")) .stop("`object` must be a Seurat object")
  if (is.null(assay)) assay <- SeuratObject::DefaultAssay(object)
  if (!assay %in% names(object@assays)) {
    .stop("the Seurat object has no assay '%s' (assays: %s)", assay, paste(names(object@assays), collapse = ", "))
  }
  m <- .amedl_seurat_layer(object, assay, layer)
  if (is.null(m)) {
    fix <- ""
    if (layer == "counts") {
      # an assay made of normalised data (IntegrateData()'s "integrated", ...): the raw counts are elsewhere
      other <- Filter(function(a) !is.null(tryCatch(.amedl_seurat_layer(object, a, "counts"), error = function(e) NULL)),
                      setdiff(names(object@assays), assay))
      other <- c(intersect("RNA", other), setdiff(other, "RNA"))
      fix <- if (length(other)) {
        sprintf(paste0(" (aMEDL needs raw counts, which assay '%s' does not hold: it is made of normalised data, e.g. ",
                       "IntegrateData()'s \"integrated\" assay).\nFix: use the raw counts of assay '%s': assay = \"%s\" ",
                       "(e.g. RunAMEDL(obj, assay = \"%s\", batch = ...))"), assay, other[1], other[1], other[1])
      } else {
        " (aMEDL needs raw counts; was the object created from normalised data?)"
      }
    }
    .stop("assay '%s' has no layer '%s' covering all cells, or it is empty%s", assay, layer, fix)
  }
  m
}

# aMEDL fits raw counts and normalises them itself: an SCTransform assay (its corrected
# counts or residuals) is an error, in RunAMEDL() and AMEDLIntegration() alike. `fix` says
# how to use the raw counts in the caller's terms.
.check_not_sct <- function(assay_object, assay, caller, fix) {
  if (!inherits(assay_object, "SCTAssay")) return(invisible(TRUE))
  .stop(paste0("%s: assay '%s' is an SCTransform assay, but aMEDL fits the raw counts and normalises them itself ",
               "(it does not use SCTransform's residuals or corrected counts).\nFix: %s"),
        caller, assay, fix)
}

.variable_features <- function(object, assay) {
  vf <- tryCatch(SeuratObject::VariableFeatures(object, assay = assay), error = function(e) character(0))
  if (is.null(vf)) character(0) else vf
}

#' @rdname RunAMEDL
#' @param assay Seurat: the assay holding the counts (default: the default
#'   assay). SingleCellExperiment: the assay with the counts (default `"counts"`).
#' @param layer Seurat: the layer (slot) with raw counts.
#' @param reduction.prefix Seurat: prefix of the reduction names
#'   (`<prefix>_fe`, `<prefix>_re`); the keys are the prefix without
#'   non-alphanumeric characters followed by `fe_` / `re_`, so it must start
#'   with a letter once those are dropped, and the keys must not be those of
#'   another reduction or assay of the object (e.g. `"amedl.s"` and
#'   `"amedl_s"` both give `amedlsfe_`); both are checked before training.
#'   Reductions of the same names are replaced.
#' @export
RunAMEDL.Seurat <- function(object, batch = NULL, assay = NULL, layer = "counts", features = NULL,
                            n_latent = NULL, n_top_genes = 2000, epochs = NULL, seed = 0, model_dir = NULL,
                            preset = "default", reduction.prefix = "amedl", verbose = TRUE,
                            settings = list(), overwrite = FALSE, adapt = TRUE, adapted_model_dir = NULL, ...) {
  .check_dots(..., hints = .seurat_dots_hints())
  .seurat_ns()
  top_given <- !missing(n_top_genes)
  keyroot <- .check_prefix(reduction.prefix)
  new_keys <- stats::setNames(as.list(paste0(keyroot, c("fe_", "re_"))), paste0(reduction.prefix, c("_fe", "_re")))
  .check_keys_free(object, new_keys, function(name, key, free) {
    sprintf(paste0("choose another `reduction.prefix` (its letters and digits make the keys: \"%s\" gives %s), ",
                   "or remove what holds the key first (e.g. obj[[\"name\"]] <- NULL)"),
            reduction.prefix, paste(unlist(new_keys), collapse = " and "))
  })
  if (!is.character(layer) || length(layer) != 1L || is.na(layer) || !nzchar(layer)) .stop("`layer` must be a layer name such as \"counts\"")
  mapping <- .maps_query(model_dir, overwrite)
  if (is.null(assay)) assay <- SeuratObject::DefaultAssay(object)
  if (assay %in% names(object@assays)) {
    raw <- if ("RNA" %in% names(object@assays) && !identical(assay, "RNA")) "RNA" else "<the assay with the raw counts>"
    .check_not_sct(object[[assay]], assay, "RunAMEDL()",
                   sprintf("fit the raw counts of the %s assay: RunAMEDL(obj, assay = \"%s\", batch = ...) (after SCTransform() the default assay is \"SCT\")",
                           if (raw == "RNA") "RNA" else "original", raw))
  }
  counts <- SeuratLayerCounts(object, assay = assay, layer = layer)
  split <- attr(counts, "split")
  attr(counts, "split") <- NULL
  counts <- .check_counts(counts, sprintf("the '%s' layer of assay '%s'", layer, assay),
                          drop_hint = sprintf("obj <- subset(obj, nCount_%s > 0)", assay))
  if (is.null(batch)) {
    if (is.null(split)) {
      .stop("`batch` is missing: name the column of the cell metadata that holds each cell's batch (columns: %s)",
            paste(colnames(object@meta.data), collapse = ", "))
    }
    if (isTRUE(verbose)) message("amedl: no batch given; using the split of the '", layer, "' layer (", nlevels(split), " parts) as the batch")
    b <- list(values = split, key = "layer_split", what = sprintf("the split of the '%s' layer", layer), store = FALSE)
  } else {
    b <- .batch_from_meta(batch, object@meta.data, ncol(object), "Seurat object's meta.data", store = TRUE, obj = "obj")
  }
  bf <- .check_batch(b$values, ncol(counts), b$what, min_batches = if (mapping) 1L else 2L)
  # the genes: `features`, else an explicit n_top_genes (the engine picks them), else the
  # assay's variable features, else the default n_top_genes
  if (!mapping) {
    vf <- if (is.null(features)) intersect(.variable_features(object, assay), rownames(counts)) else character(0)
    genes_msg <- if (!is.null(features)) {
      sprintf("modelling the %d genes given as `features`", length(unique(features)))
    } else if (top_given) {
      sprintf("the engine picks %s highly variable genes (batch-aware), as `n_top_genes` is given%s",
              format(n_top_genes), if (length(vf) >= 2L) sprintf(" (the %d variable features of assay '%s' are not used)", length(vf), assay) else "")
    } else if (length(vf) >= 2L) {
      features <- vf
      sprintf("using the %d variable features of assay '%s' (give `n_top_genes` or `features` to choose other genes)", length(vf), assay)
    } else {
      sprintf("assay '%s' has no variable features: the engine picks %s highly variable genes (batch-aware; `n_top_genes`)",
              assay, format(n_top_genes))
    }
    if (isTRUE(verbose)) message("amedl: ", genes_msg)
  }
  res <- .amedl_fit(counts, bf, batch_key = b$key, features = features, n_latent = n_latent,
                    n_top_genes = n_top_genes, epochs = epochs, seed = seed, preset = preset,
                    model_dir = model_dir, verbose = verbose, settings = settings, overwrite = overwrite,
                    adapt = adapt, adapted_model_dir = adapted_model_dir)
  params <- utils::modifyList(res$params, list(assay = assay, layer = layer, object_kind = "Seurat"))
  # the split of the counts layer is the batch: kept by cell in the record, so that
  # AMEDLCounterfactual() and AMEDLBatchEffects() still find each cell's batch after
  # JoinLayers() (the usual next step in Seurat 5)
  if (identical(b$key, "layer_split")) params$cell_batches <- stats::setNames(as.character(bf), colnames(counts))
  if (isTRUE(b$store)) object@meta.data[[b$key]] <- unname(b$values)
  for (kind in c("fe", "re")) {
    key <- paste0(keyroot, kind, "_")
    emb <- res[[kind]]
    colnames(emb) <- paste0(key, seq_len(ncol(emb)))
    dr <- SeuratObject::CreateDimReducObject(embeddings = emb, key = key, assay = assay,
                                             misc = list(amedl = c(params, list(latent = kind))))
    object[[paste0(reduction.prefix, "_", kind)]] <- dr
  }
  object <- .log_command(object, params)
  object
}

# Record the call in obj@commands like Seurat's own functions do.
.log_command <- function(object, params) {
  cmd <- tryCatch({
    methods::new("SeuratCommand",
      name = "RunAMEDL", time.stamp = Sys.time(), assay.used = params$assay,
      call.string = "RunAMEDL", params = params[intersect(c("batch_key", "assay", "layer", "n_latent", "epochs", "seed", "preset", "model_dir", "model_id"), names(params))])
  }, error = function(e) NULL)
  if (!is.null(cmd)) object@commands[[paste0("RunAMEDL.", params$assay)]] <- cmd
  object
}

# Keys of the object's assays and reductions, named "assay 'RNA'" / "reduction 'pca'"; those
# named in `except` (about to be replaced) are left out.
.taken_keys <- function(object, except = character(0)) {
  out <- character(0)
  for (what in c("assay", "reduction")) {
    items <- methods::slot(object, paste0(what, "s"))
    for (n in setdiff(names(items), except)) {
      k <- tryCatch(SeuratObject::Key(items[[n]]), error = function(e) NULL)
      if (length(k) == 1L && !is.na(k) && nzchar(k)) out[sprintf("%s '%s'", what, n)] <- k
    }
  }
  out
}

# New reductions or assays (named `keys`, by their names) must not take a key that another
# reduction or assay of the object has (Seurat would replace it with a random one, e.g.
# "Key 'amedlre_' taken, using 'qximn_'"), nor share one. Checked before training; `fix(name,
# key, free)` says how to choose another key (`free`: a key not in use).
.check_keys_free <- function(object, keys, fix, what = "reduction") {
  taken <- if (is.null(object)) character(0) else .taken_keys(object, except = names(keys))
  for (i in seq_along(keys)) {
    k <- keys[[i]]
    n <- names(keys)[i]
    hit <- names(taken)[tolower(taken) == tolower(k)]
    other <- setdiff(names(keys)[tolower(unlist(keys)) == tolower(k)], n)
    if (length(hit) || length(other)) {
      used <- tolower(c(taken, unlist(keys)))
      root <- sub("_$", "", k)
      j <- 2L
      while (tolower(paste0(root, j, "_")) %in% used) j <- j + 1L
      .stop(paste0("the key '%s' of the new %s '%s' is already the key of %s; Seurat would give '%s' a random key instead.\n",
                   "Fix: %s"),
            k, what, n, if (length(hit)) paste(hit, collapse = " and ") else sprintf("the new %s '%s'", what, other[1]), n,
            fix(n, k, paste0(root, j, "_")))
    }
  }
  invisible(TRUE)
}
