#' aMEDL integration of split layers (Seurat 5 \code{IntegrateLayers})
#'
#' An integration method for Seurat 5's \code{IntegrateLayers()}: it fits
#' aMEDL on the raw counts of a Seurat 5 assay whose layers are split by batch
#' (\code{obj[["RNA"]] <- split(obj[["RNA"]], f = obj$donor)}), with the split
#' (or \code{groups}) as the batch, and returns the batch-invariant
#' fixed-effects (FE) latent as the integrated reduction. Optionally the
#' batch-specific random-effects (RE) latent is returned as a second
#' reduction.
#'
#' \code{IntegrateLayers()} hands the method the assay, the layers to
#' integrate (by default the \code{data} layers, one per batch), the features
#' (by default the variable features) and the original reduction. aMEDL does
#' its own normalisation, so the counts are read from the matching
#' \code{counts} layers (\code{counts.layer}); the given layers only define the
#' batches. The original reduction is not used: \code{orig.reduction = NULL}
#' works too (no PCA needed). \code{IntegrateLayers()} itself needs the
#' variable features (\code{FindVariableFeatures()}) or \code{features}: it
#' stops with "None of the features provided are found in this assay" before
#' calling the method otherwise. To let the engine pick the genes, pass
#' \code{n_top_genes}.
#'
#' Each cell's batch is recorded with the fit (by cell, in
#' \code{Misc(obj[[new.reduction]])$amedl$cell_batches}), so
#' \code{\link{AMEDLCounterfactual}} and \code{\link{AMEDLBatchEffects}} with
#' \code{reduction = new.reduction} use the fit's batches also after
#' \code{JoinLayers()}, the usual next step. To use them in a later R session,
#' keep the model on disk with \code{model_dir} (passed through
#' \code{IntegrateLayers()}, see \code{...}).
#'
#' An SCTransform assay (\code{normalization.method = "SCT"}) is an error:
#' aMEDL fits the raw counts. After \code{SCTransform()} the simplest route is
#' \code{RunAMEDL(obj, assay = "RNA", batch = NULL)} on the split RNA layers;
#' to integrate through \code{IntegrateLayers()} instead, make RNA the default
#' assay and give it normalised data and variable features first
#' (\code{DefaultAssay(obj) <- "RNA"}, \code{NormalizeData()},
#' \code{FindVariableFeatures()}), since \code{IntegrateLayers()} takes its
#' features from them. When called by \code{IntegrateLayers()}, the keys of
#' the new reductions are checked against those of the object's other
#' reductions and assays before training (Seurat would otherwise replace a
#' key in use by a random one).
#'
#' @param object A Seurat 5 assay (\code{Assay5}/\code{StdAssay}), as passed
#'   by \code{IntegrateLayers()}.
#' @param assay Name of the assay (set by \code{IntegrateLayers()}); recorded
#'   as the reduction's assay. Default \code{"RNA"} when called directly.
#' @param orig The original \code{DimReduc} (set by \code{IntegrateLayers()});
#'   not used by aMEDL, never evaluated.
#' @param layers Names of the layers to integrate, one per batch (set by
#'   \code{IntegrateLayers()}, e.g. \code{"data.donor1"}, \code{"data.donor2"}).
#'   They define the batch of each cell unless \code{groups} is given.
#'   \code{NULL} uses the split \code{counts.layer} layers.
#' @param groups Optional batch per cell instead of the layer split: a vector
#'   (named by cell, or in the order of the assay's cells), or a one-column
#'   data frame with cells as row names (as \code{CreateIntegrationGroups}
#'   makes). Names are matched to the cells by name; names that are not
#'   exactly the assay's cells are an error. Like the layer split, they are recorded by cell with the fit
#'   (\code{Misc(obj[[new.reduction]])$amedl$cell_batches}), so that
#'   \code{\link{AMEDLCounterfactual}} and \code{\link{AMEDLBatchEffects}}
#'   with \code{reduction = new.reduction} use the same batches.
#' @param features Genes to model. \code{IntegrateLayers()} always passes
#'   them: the \code{features} given to it, else the assay's variable
#'   features. Called directly, \code{NULL} uses the assay's variable
#'   features, or the engine's \code{n_top_genes} highly variable genes when
#'   none are set. Library sizes are computed over all genes.
#' @param n_top_genes Let the engine pick this many highly variable genes
#'   (batch-aware) over all genes instead of modelling \code{features}; give
#'   it instead of \code{features} (giving both to \code{IntegrateLayers()}
#'   is an error). \code{NULL} (default): model \code{features}.
#' @param scale.layer Ignored (set by \code{IntegrateLayers()}).
#' @param new.reduction Name of the integrated (FE) reduction.
#' @param reduction.key Key of the FE reduction: a letter, then letters or
#'   digits, then \code{"_"}; default made from \code{new.reduction}
#'   (\code{"integratedamedl_"}). Names and keys are checked before training;
#'   a key that another reduction or assay of the object has is an error.
#' @param re.reduction Name for the RE reduction, or \code{NULL} (default) to
#'   return only the FE one.
#' @param re.key Key of the RE reduction; default made from
#'   \code{re.reduction}.
#' @param counts.layer Layer name (or prefix of the split layers) holding the
#'   raw counts.
#' @param n_latent,epochs,seed Passed to \code{\link{RunAMEDL}}.
#' @param verbose Print what is done and show the engine's progress bars.
#' @param ... Further arguments passed to \code{\link{RunAMEDL}} (matrix
#'   method), e.g. \code{model_dir = "some/folder"} to keep the model on disk
#'   (so that \code{AMEDLModel()}, \code{AMEDLCounterfactual()} and
#'   \code{AMEDLBatchEffects()} work in a later R session; a folder that
#'   already holds a saved model maps the object onto it), \code{overwrite},
#'   \code{preset} or \code{settings}. \code{IntegrateLayers()} passes them
#'   on: \code{IntegrateLayers(obj, method = AMEDLIntegration, model_dir =
#'   "amedl_model")}.
#'
#' @return A named list with the FE \code{DimReduc} (and the RE one when
#'   \code{re.reduction} is set), as \code{IntegrateLayers()} expects; its
#'   cells are the assay's cells. The fit's parameters (batches, genes,
#'   epochs, seed, model id) are in \code{Misc(obj[[new.reduction]])$amedl},
#'   as for \code{RunAMEDL()}, so \code{AMEDLModel(obj, reduction =
#'   new.reduction)} returns the fitted model in the same R session.
#'
#' @examples
#' \dontrun{
#' library(Seurat)
#' obj[["RNA"]] <- split(obj[["RNA"]], f = obj$donor)
#' obj <- NormalizeData(obj)
#' obj <- FindVariableFeatures(obj)
#' obj <- IntegrateLayers(obj, method = AMEDLIntegration, orig.reduction = NULL,
#'                        re.reduction = "integrated.amedl.re", model_dir = "amedl_model")
#' obj <- RunUMAP(obj, reduction = "integrated.amedl", dims = 1:10)  # n_latent: 10 by default
#' obj <- JoinLayers(obj)
#' obj <- AMEDLCounterfactual(obj, batch = "donor1", reduction = "integrated.amedl")
#' }
#' @seealso \code{\link{RunAMEDL}}
#' @export
AMEDLIntegration <- function(object, assay = NULL, orig = NULL, layers = NULL,
                             groups = NULL, features = NULL,
                             scale.layer = "scale.data",
                             new.reduction = "integrated.amedl",
                             reduction.key = NULL, re.reduction = NULL,
                             re.key = NULL, counts.layer = "counts",
                             n_latent = NULL, n_top_genes = NULL, epochs = NULL, seed = 0L,
                             verbose = TRUE, ...) {
  .check_not_sct(object, .amedl_or(assay, "SCT"), "AMEDLIntegration()", paste0(
    "fit the raw counts of the RNA assay, split by batch: RunAMEDL(obj, assay = \"RNA\", batch = NULL); or, to go through ",
    "IntegrateLayers(), give RNA normalised data and variable features first: DefaultAssay(obj) <- \"RNA\"; ",
    "obj <- NormalizeData(obj); obj <- FindVariableFeatures(obj); then IntegrateLayers(obj, method = AMEDLIntegration, ",
    "assay = \"RNA\", orig.reduction = NULL) (no normalization.method = \"SCT\")."))
  if (!inherits(object, "StdAssay")) {
    stop("AMEDLIntegration() needs a Seurat 5 assay (Assay5), as passed by ",
         "Seurat::IntegrateLayers(); got an object of class '",
         class(object)[1], "'. Convert a v3/v4 assay with ",
         "obj[[\"RNA\"]] <- as(obj[[\"RNA\"]], \"Assay5\") (SeuratObject >= 5).",
         call. = FALSE)
  }
  so <- function(name) getExportedValue("SeuratObject", name)
  assay <- .amedl_or(assay, "RNA")
  # called by IntegrateLayers(): its Seurat object and whether the user gave `features` there
  # (IntegrateLayers() always passes features, the variable features by default)
  caller <- NULL
  if (sys.parent() > 0L) {
    caller_frame <- parent.frame()
    caller_fn <- sys.function(sys.parent())
    caller_call <- sys.call(sys.parent())
    caller <- .integratelayers_caller(caller_frame, caller_fn, caller_call)
  }
  user_features <- if (is.null(caller)) !is.null(features) else caller$features_given
  # names and keys of the reductions, checked before training
  fe_key <- .check_reduction_name(new.reduction, reduction.key, "new.reduction", "reduction.key")
  re_key <- if (!is.null(re.reduction)) .check_reduction_name(re.reduction, re.key, "re.reduction", "re.key")
  keys <- stats::setNames(list(fe_key), new.reduction)
  if (!is.null(re.reduction)) keys[[re.reduction]] <- re_key
  .check_keys_free(if (is.null(caller)) NULL else caller$object, keys, function(name, key, free) {
    arg <- if (identical(name, new.reduction)) "reduction.key" else "re.key"
    sprintf("pass %s = \"%s\" (or another key not in use), or choose another name than '%s'", arg, free, name)
  })
  n_top_genes <- .scalar_int(n_top_genes, "n_top_genes", 2L, null_ok = TRUE)
  if (!is.null(n_top_genes)) {
    if (user_features) {
      stop("AMEDLIntegration(): give either `features` (the genes to model) or `n_top_genes` (the engine picks ",
           "that many highly variable genes, batch-aware), not both.", call. = FALSE)
    }
    features <- NULL  # the engine selects n_top_genes genes among all of them
  }
  mapping <- .maps_query(list(...)$model_dir, isTRUE(list(...)$overwrite))
  if (mapping && !user_features) features <- NULL  # a saved model fixes the genes: nothing to warn about
  cells <- so("Cells")(object)

  # --- raw counts, one genes x cells matrix over all split layers ---
  clayers <- suppressWarnings(so("Layers")(object, search = counts.layer))
  if (!length(clayers)) {
    stop("AMEDLIntegration(): no '", counts.layer, "' layer(s) in assay '",
         assay, "'; aMEDL fits on raw counts (layers: ",
         paste(so("Layers")(object), collapse = ", "), ").", call. = FALSE)
  }
  # all genes (library sizes are computed over all of them), the features modelled
  genes <- rownames(object)
  for (l in clayers) genes <- intersect(genes, so("Features")(object, layer = l))
  if (is.null(n_top_genes) && !mapping) features <- .amedl_or(features, so("VariableFeatures")(object))
  features <- if (length(features)) intersect(features, genes) else NULL
  if (!is.null(features) && length(features) < 2L) {
    stop("AMEDLIntegration(): fewer than two of the requested features are ",
         "in every '", counts.layer, "' layer.", call. = FALSE)
  }
  counts <- do.call(cbind, lapply(clayers, function(l) {
    so("LayerData")(object, layer = l, features = genes)
  }))
  counts <- counts[, cells, drop = FALSE]

  # --- the batch of each cell: groups, else the layer split ---
  batch <- .amedl_integration_groups(object, cells, groups, layers, clayers,
                                     counts.layer, so)
  if (length(unique(batch)) < 2L) {
    stop("AMEDLIntegration(): all cells are in one batch. Split the layers ",
         "by batch first (obj[[\"", assay, "\"]] <- split(obj[[\"", assay,
         "\"]], f = obj$donor)) or pass groups = <batch per cell>.",
         call. = FALSE)
  }
  if (verbose) {
    message("aMEDL integration: ", length(cells), " cells, ",
            if (mapping) "the genes of the saved model" else if (is.null(features))
              paste(.amedl_or(n_top_genes, 2000L), "highly variable genes") else
              paste(length(features), "features"), ", ", length(unique(batch)), " batches (",
            paste(unique(batch), collapse = ", "), ")")
  }

  fit <- RunAMEDL(object = counts, batch = batch, features = features,
                  n_latent = n_latent, n_top_genes = .amedl_or(n_top_genes, 2000L), epochs = epochs, seed = seed,
                  verbose = verbose, ...)

  # the parameters as RunAMEDL() records them (so AMEDLModel(obj, reduction =
  # new.reduction) finds the fitted model), plus how the batches were made
  params <- fit$params
  params$batch_key <- if (is.null(groups)) "layer_split" else "groups"
  params <- utils::modifyList(params, list(assay = assay, layer = counts.layer, object_kind = "Seurat",
                                           method = .integration_method))
  # neither `groups` nor the layer split is a column of the object (and JoinLayers() undoes
  # the split): the record keeps the batches by cell, so that AMEDLCounterfactual() and
  # AMEDLBatchEffects() use the fit's batches
  params$cell_batches <- stats::setNames(as.character(batch), cells)
  make_dr <- function(emb, key, kind) {
    emb <- as.matrix(emb)
    if (nrow(emb) != length(cells)) {
      stop("AMEDLIntegration(): the engine returned ", nrow(emb),
           " rows for ", length(cells), " cells.", call. = FALSE)
    }
    rownames(emb) <- cells
    colnames(emb) <- paste0(key, seq_len(ncol(emb)))
    so("CreateDimReducObject")(embeddings = emb, key = key, assay = assay,
                               misc = list(amedl = c(params, list(latent = kind))))
  }
  out <- list()
  out[[new.reduction]] <- make_dr(fit$fe, fe_key, "fe")
  if (!is.null(re.reduction)) out[[re.reduction]] <- make_dr(fit$re, re_key, "re")
  out
}
attr(AMEDLIntegration, "Seurat.method") <- "integration"

.amedl_or <- function(a, b) if (is.null(a)) b else a

# When AMEDLIntegration() is called by Seurat::IntegrateLayers(): its Seurat object (whose
# reductions' keys the new ones must not take) and whether the user gave `features` to it.
# NULL when called otherwise.
.integratelayers_caller <- function(frame, fn, call) {
  il <- if (requireNamespace("Seurat", quietly = TRUE)) tryCatch(getExportedValue("Seurat", "IntegrateLayers"), error = function(e) NULL)
  if (is.null(il) || !is.function(fn) || !identical(fn, il)) return(NULL)
  object <- get0("object", envir = frame, inherits = FALSE)
  if (!methods::is(object, "Seurat")) return(NULL)
  matched <- tryCatch(match.call(fn, call), error = function(e) NULL)
  list(object = object, features_given = !is.null(matched) && "features" %in% names(matched))
}

# A valid Seurat key from a reduction name: "integrated.amedl" -> "integratedamedl_".
.amedl_key <- function(name) {
  k <- gsub("[^[:alnum:]]", "", name)
  if (!grepl("^[[:alpha:]]", k)) k <- paste0("amedl", k)
  paste0(k, "_")
}

# A reduction name and its key (default: made from the name), checked before training;
# returns the key (Seurat's form: a letter, letters or digits, "_").
.check_reduction_name <- function(name, key, name_arg, key_arg) {
  if (!is.character(name) || length(name) != 1L || is.na(name) || !nzchar(name)) {
    .stop("`%s` must be a single non-empty string (the name of the reduction)", name_arg)
  }
  if (is.null(key)) return(.amedl_key(name))
  if (!is.character(key) || length(key) != 1L || is.na(key) || !grepl("^[A-Za-z][A-Za-z0-9]*_?$", key)) {
    .stop("`%s = %s` is not a valid Seurat key: a letter, then letters or digits, then \"_\" (e.g. \"amedl_\"); or leave it NULL to make one from `%s`",
          key_arg, paste(deparse(key), collapse = " "), name_arg)
  }
  if (!endsWith(key, "_")) key <- paste0(key, "_")
  key
}

# The batch per cell (character vector in the order of `cells`).
.amedl_integration_groups <- function(object, cells, groups, layers, clayers,
                                      counts.layer, so) {
  if (!is.null(groups)) {
    if (is.data.frame(groups)) {
      g <- as.character(groups[[1]])
      # (a data frame's automatic row names, 1, 2, ..., name no cells)
      if (.row_names_info(groups) > 0L) names(g) <- rownames(groups)
    } else {
      g <- as.character(groups)
      names(g) <- names(groups)
    }
    # named by cell: matched by name (names that are not the cells' are an error); else in order
    g <- .by_cells(g, cells, "AMEDLIntegration(): `groups`")
    if (length(g) != length(cells)) {
      stop("AMEDLIntegration(): 'groups' must give one batch per cell (",
           length(cells), " cells), named by cell or in the assay's order.",
           call. = FALSE)
    }
    if (anyNA(g)) stop("AMEDLIntegration(): 'groups' has missing values.",
                       call. = FALSE)
    return(unname(g))
  }
  # the layers IntegrateLayers passed (e.g. data.A, data.B), else counts.A, counts.B
  split_layers <- if (length(layers) > 1L) layers else clayers
  g <- rep(NA_character_, length(cells))
  names(g) <- cells
  for (l in split_layers) {
    lc <- so("Cells")(object, layer = l)
    g[lc] <- sub("^[^.]*\\.", "", l)  # "data.donor1" -> "donor1"
  }
  if (anyNA(g)) {
    stop("AMEDLIntegration(): ", sum(is.na(g)), " cells are in none of the ",
         "layers ", paste(split_layers, collapse = ", "), ".", call. = FALSE)
  }
  unname(g)
}
