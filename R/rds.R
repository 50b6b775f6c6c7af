# R objects <-> the amedl engine's AnnData: the R half of the conversion.
#
# One file with two users. The R package uses the helpers below (repairing
# SingleCellExperiments from newer Bioconductor, reading Seurat 4/5 layers).
# The Python package evaluates this same file (python/amedl/io/rds.R links
# here) in a private environment through rpy2, and calls .amedl_rds_read()
# and .amedl_rds_write(): they turn a Seurat object or SingleCellExperiment
# into a plain SingleCellExperiment, which anndata2ri converts to AnnData,
# and back. Needs base R and Matrix, and per object kind SeuratObject or
# SingleCellExperiment; nothing else of the R package.

# AnnData obsm key <-> SingleCellExperiment reducedDim <-> Seurat reduction and key.
.amedl_reductions <- data.frame(
  obsm = c("X_amedl_fe", "X_amedl_re", "X_pca", "X_umap", "X_tsne"),
  sce = c("AMEDL_FE", "AMEDL_RE", "PCA", "UMAP", "TSNE"),
  seurat = c("amedl_fe", "amedl_re", "pca", "umap", "tsne"),
  key = c("amedlfe_", "amedlre_", "PC_", "UMAP_", "tSNE_"),
  stringsAsFactors = FALSE
)

# An R reducedDim / reduction name -> obsm key (scanpy's "X_" prefix: harmony -> X_harmony,
# which .amedl_r_name takes off again), and an obsm key -> the name for `kind`.
.amedl_obsm_key <- function(name) {
  hit <- which(.amedl_reductions$sce == name | .amedl_reductions$seurat == name)
  if (length(hit)) return(.amedl_reductions$obsm[hit[1]])
  if (startsWith(name, "X_")) name else paste0("X_", name)
}
.amedl_r_name <- function(key, kind) {
  hit <- match(key, .amedl_reductions$obsm)
  if (!is.na(hit)) return(.amedl_reductions[[kind]][hit])
  if (startsWith(key, "X_") && nchar(key) > 2L) substring(key, 3L) else key
}
.amedl_seurat_key <- function(name) {
  hit <- match(name, .amedl_reductions$seurat)
  if (!is.na(hit)) return(.amedl_reductions$key[hit])
  k <- gsub("[^[:alnum:]]", "", name)
  if (!grepl("^[[:alpha:]]", k)) k <- paste0("d", k)
  paste0(k, "_")
}

# SingleCellExperiments saved by Bioconductor >= 3.22 keep their Seqinfo in the
# 'Seqinfo' package and their reducedDims/altExps tables in bare 'DataFrame's;
# older Bioconductor cannot modify them ("unable to find required package
# 'Seqinfo'", "unable to find an inherited method for 'replaceCOLS'"). Rebuild
# those parts with this R's classes; the data are unchanged.
.amedl_repair_sce <- function(x) {
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

# A layer of a Seurat assay (genes x cells, in the object's cell order), for
# SeuratObject 4 (slots, GetAssayData) and 5 (LayerData; split layers such as
# counts.A, counts.B are joined and the part each cell came from is the
# attribute "split"). NULL when the assay has no such layer.
.amedl_seurat_layer <- function(object, assay, layer) {
  ns <- asNamespace("SeuratObject")
  a <- object[[assay]]
  cells <- colnames(object)
  split <- NULL
  if (exists("LayerData", envir = ns, inherits = FALSE) && exists("Layers", envir = ns, inherits = FALSE)) {
    LayerData <- get("LayerData", envir = ns)
    lyrs <- get("Layers", envir = ns)(a)
    if (layer %in% lyrs) {
      m <- LayerData(a, layer = layer)
    } else {
      parts_names <- lyrs[startsWith(lyrs, paste0(layer, "."))]
      if (!length(parts_names)) return(NULL)
      parts <- lapply(parts_names, function(l) LayerData(a, layer = l))
      genes <- unique(unlist(lapply(parts, rownames)))
      parts <- lapply(parts, function(p) {
        if (identical(rownames(p), genes)) return(methods::as(p, "CsparseMatrix"))
        full <- Matrix::sparseMatrix(i = integer(0), j = integer(0), x = numeric(0),
                                     dims = c(length(genes), ncol(p)), dimnames = list(genes, colnames(p)))
        full[rownames(p), ] <- p
        full
      })
      part <- substring(parts_names, nchar(layer) + 2L)
      split <- factor(rep(part, vapply(parts, ncol, 1L)), levels = part)
      m <- do.call(cbind, parts)
      names(split) <- colnames(m)
    }
  } else {
    if (!layer %in% c("counts", "data", "scale.data")) return(NULL)
    m <- SeuratObject::GetAssayData(a, slot = layer)
  }
  if (!length(m) || ncol(m) == 0L) return(NULL)
  if (is.null(colnames(m))) colnames(m) <- cells
  if (!all(cells %in% colnames(m))) return(NULL)
  if (!identical(colnames(m), cells)) m <- m[, cells, drop = FALSE]
  if (!is.null(split)) split <- droplevels(split[cells])
  attr(m, "split") <- split
  m
}

# ---- used by the Python package (amedl.io) --------------------------------

# Where raw counts are looked for, in this order: assays of a SingleCellExperiment,
# layers (slots) of a Seurat assay.
.amedl_count_slots <- c("counts", "raw", "raw_counts")

# TRUE when a matrix holds raw counts: finite, non-negative whole numbers.
.amedl_whole <- function(m) {
  v <- if (methods::is(m, "sparseMatrix")) methods::as(methods::as(m, "CsparseMatrix"), "dMatrix")@x else tryCatch(as.vector(as.matrix(m)), error = function(e) NULL)
  is.numeric(v) && length(v) > 0L && !anyNA(v) && all(is.finite(v)) && all(v >= 0) && all(v == round(v))
}

# Runs `fun(...)` with package start-up messages dropped and R warnings
# collected (the caller turns them into Python warnings).
.amedl_call <- function(fun, ...) {
  msgs <- character(0)
  value <- withCallingHandlers(
    suppressPackageStartupMessages(fun(...)),
    warning = function(w) {
      msgs <<- c(msgs, conditionMessage(w))
      invokeRestart("muffleWarning")
    })
  list(value = value, warnings = msgs)
}

.amedl_kind <- function(obj) {
  if (methods::is(obj, "Seurat")) return("seurat")
  if (methods::is(obj, "SummarizedExperiment")) return("sce")
  ""
}

# The Seurat object or SingleCellExperiment in an .rds (readRDS) or .rda/.RData (load) file.
.amedl_load <- function(path, object_name = NULL) {
  if (tolower(tools::file_ext(path)) == "rds") return(list(object = readRDS(path), name = NULL))
  env <- new.env(parent = emptyenv())
  nms <- load(path, envir = env)
  if (!is.null(object_name)) {
    if (!object_name %in% nms) {
      stop(sprintf("%s holds no object named '%s' (it holds: %s)", path, object_name, paste(nms, collapse = ", ")),
           call. = FALSE)
    }
    return(list(object = get(object_name, envir = env), name = object_name))
  }
  ok <- vapply(nms, function(n) .amedl_kind(get(n, envir = env)) != "", logical(1))
  if (!any(ok)) {
    stop(sprintf("%s holds no Seurat object or SingleCellExperiment (it holds: %s)", path,
                 if (length(nms)) paste(nms, collapse = ", ") else "nothing"), call. = FALSE)
  }
  if (sum(ok) > 1L) {
    stop(sprintf("%s holds %d Seurat objects / SingleCellExperiments (%s); name the one to read (object_name=, command line --object-name)",
                 path, sum(ok), paste(nms[ok], collapse = ", ")), call. = FALSE)
  }
  list(object = get(nms[ok], envir = env), name = nms[ok])
}

# A numeric matrix anndata2ri can take: dgCMatrix or a double base matrix (NULL otherwise).
.amedl_as_matrix <- function(m) {
  if (methods::is(m, "dgCMatrix")) return(m)
  if (methods::is(m, "sparseMatrix")) {
    m <- tryCatch(methods::as(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"), "dMatrix"),
                  error = function(e) NULL)
    return(if (methods::is(m, "dgCMatrix")) m else NULL)
  }
  m <- tryCatch(as.matrix(m), error = function(e) NULL)
  if (is.null(m) || !(is.numeric(m) || is.logical(m))) return(NULL)
  storage.mode(m) <- "double"
  m
}

# Whether a metadata column converts exactly (numbers, strings, logicals, factors).
.amedl_convertible <- function(v) {
  is.atomic(v) && is.null(dim(v)) && (is.numeric(v) || is.character(v) || is.logical(v) || is.factor(v))
}

# Columns that convert exactly, others left out with a warning.
.amedl_columns <- function(df, what) {
  df <- as.list(as.data.frame(df, optional = TRUE, stringsAsFactors = FALSE))
  keep <- vapply(names(df), function(n) {
    v <- df[[n]]
    ok <- .amedl_convertible(v)
    if (!ok) warning(sprintf("%s column '%s' (class %s) cannot be converted: left out", what, n,
                             paste(class(v), collapse = "/")), call. = FALSE)
    ok
  }, logical(1))
  lapply(df[keep], function(v) {
    if (!is.factor(v)) attributes(v) <- NULL
    v
  })
}

# metadata()/misc as far as it converts (lists, data frames, atomic vectors).
.amedl_uns <- function(x, what) {
  if (is.data.frame(x) || (is.atomic(x) && !is.null(x))) return(x)
  if (is.list(x) && !is.object(x)) {
    out <- lapply(seq_along(x), function(i) .amedl_uns(x[[i]], sprintf("%s[[%d]]", what, i)))
    names(out) <- names(x)
    return(out[!vapply(out, is.null, logical(1))])
  }
  if (!is.null(x)) warning(sprintf("%s (class %s) cannot be converted to Python: left out", what,
                                   paste(class(x), collapse = "/")), call. = FALSE)
  NULL
}

# Data frames whose row names are "1".."n" (automatic row names after a trip
# through pandas) get automatic row names again, at any depth of a list.
.amedl_row_names <- function(x) {
  if (is.data.frame(x)) {
    if (identical(rownames(x), as.character(seq_len(nrow(x))))) rownames(x) <- NULL
    return(x)
  }
  if (is.list(x) && !is.object(x)) x[] <- lapply(x, .amedl_row_names)
  x
}

.amedl_sce <- function(assays, obs, var, rd, cells, genes) {
  obs <- S4Vectors::DataFrame(obs, row.names = cells, check.names = FALSE)
  var <- S4Vectors::DataFrame(var, row.names = genes, check.names = FALSE)
  sce <- SingleCellExperiment::SingleCellExperiment(assays = assays, colData = obs, rowData = var)
  if (length(rd)) SingleCellExperiment::reducedDims(sce) <- rd
  sce
}

# Read `path` into a plain SingleCellExperiment for anndata2ri: the assay that
# becomes X first, reducedDims named by their obsm keys, no metadata; `uns`
# (metadata/misc) and `info` (what the Python side records in
# uns['amedl_io']) come beside it.
.amedl_rds_read <- function(path, object_name = NULL, assay = NULL) {
  ld <- .amedl_load(path, object_name)
  obj <- ld$object
  kind <- .amedl_kind(obj)
  if (kind == "") {
    stop(sprintf("%s holds an object of class '%s', not a Seurat object or a SingleCellExperiment",
                 path, paste(class(obj), collapse = "/")))
  }
  info <- list(kind = kind, object_name = ld$name, x_name = "counts")
  rd <- list()
  keys <- list()
  colnms <- list()
  if (kind == "sce") {
    if (!is.null(assay)) {
      stop(sprintf(paste("assay = '%s' names an assay of a Seurat object, but %s holds a SingleCellExperiment,",
                         "whose assays all become layers (pick the counts with layer=, command line --layer)"),
                   assay, path), call. = FALSE)
    }
    requireNamespace("SingleCellExperiment", quietly = TRUE)
    obj <- .amedl_repair_sce(obj)
    an <- SummarizedExperiment::assayNames(obj)
    if (!length(an)) stop(sprintf("the SingleCellExperiment in %s has no assays", path))
    if (any(!nzchar(an))) stop("the SingleCellExperiment has unnamed assays; name them first")
    looked <- intersect(.amedl_count_slots, an)
    whole <- looked[vapply(looked, function(n) .amedl_whole(SummarizedExperiment::assay(obj, n, withDimnames = FALSE)), NA)]
    info$x_name <- if (length(whole)) whole[1] else if (length(looked)) looked[1] else an[1]
    info$counts_found <- length(whole) > 0L
    info$counts_looked <- sprintf("assay '%s'", .amedl_count_slots)
    assays <- list()
    for (n in c(info$x_name, setdiff(an, info$x_name))) {
      m <- .amedl_as_matrix(SummarizedExperiment::assay(obj, n, withDimnames = TRUE))
      if (is.null(m)) warning(sprintf("assay '%s' is not a numeric matrix: left out", n), call. = FALSE)
      assays[[n]] <- m
    }
    if (is.null(assays[[info$x_name]])) stop(sprintf("assay '%s' is not a numeric matrix", info$x_name))
    obs <- .amedl_columns(SummarizedExperiment::colData(obj), "colData")
    var <- .amedl_columns(SummarizedExperiment::rowData(obj), "rowData")
    if (methods::is(obj, "SingleCellExperiment")) {
      for (n in SingleCellExperiment::reducedDimNames(obj)) {
        m <- .amedl_as_matrix(SingleCellExperiment::reducedDim(obj, n))
        if (is.null(m)) { warning(sprintf("reducedDim '%s' is not a numeric matrix: left out", n), call. = FALSE); next }
        key <- .amedl_obsm_key(n)
        if (!is.null(colnames(m))) colnms[[key]] <- colnames(m)
        rd[[key]] <- as.matrix(m)
      }
      alt <- SingleCellExperiment::altExpNames(obj)
      if (length(alt)) warning(sprintf("altExps (%s) are not converted", paste(alt, collapse = ", ")), call. = FALSE)
    }
    uns <- .amedl_uns(S4Vectors::metadata(obj), "metadata")
    genes <- rownames(obj)
  } else {
    requireNamespace("SeuratObject", quietly = TRUE)
    if (is.null(assay)) assay <- SeuratObject::DefaultAssay(obj)
    if (!assay %in% SeuratObject::Assays(obj)) {
      stop(sprintf("the Seurat object has no assay '%s' (assays: %s)", assay, paste(SeuratObject::Assays(obj), collapse = ", ")))
    }
    info$assay <- assay
    others <- setdiff(SeuratObject::Assays(obj), assay)
    if (length(others)) {
      warning(sprintf("only assay '%s' is converted; left out: %s (read another with assay=, command line --assay)", assay,
                      paste(others, collapse = ", ")), call. = FALSE)
    }
    present <- list()
    for (slot in .amedl_count_slots) present[[slot]] <- .amedl_seurat_layer(obj, assay, slot)
    whole <- names(present)[vapply(present, .amedl_whole, NA)]
    cnt <- if (length(whole)) present[[whole[1]]] else if (length(present)) present[[1]] else NULL
    info$counts_found <- length(whole) > 0L
    info$counts_looked <- sprintf("layer '%s' of assay '%s'", .amedl_count_slots, assay)
    dat <- .amedl_seurat_layer(obj, assay, "data")
    attr(cnt, "split") <- NULL
    attr(dat, "split") <- NULL
    if (is.null(cnt) && is.null(dat)) stop(sprintf("assay '%s' has neither counts nor data", assay))
    assays <- if (is.null(cnt)) list(data = dat) else list(counts = cnt)
    if (is.null(cnt)) info$x_name <- "data"
    if (!is.null(cnt) && !is.null(dat) && !identical(dat, cnt)) assays$data <- dat
    assays <- lapply(assays, .amedl_as_matrix)
    genes <- rownames(assays[[1]])
    obs <- .amedl_columns(obj@meta.data, "meta.data")
    fm <- obj[[assay]][[]]
    fm <- if (is.null(fm) || !ncol(fm)) data.frame(row.names = genes) else fm[genes, , drop = FALSE]
    var <- .amedl_columns(fm, "feature metadata")
    vf <- SeuratObject::VariableFeatures(obj[[assay]])
    if (length(vf)) {
      col <- if ("highly_variable" %in% names(var)) "amedl_variable_feature" else "highly_variable"
      var[[col]] <- genes %in% vf
      info$variable_features_column <- col
      info$variable_features <- as.character(vf)
    }
    for (n in SeuratObject::Reductions(obj)) {
      m <- SeuratObject::Embeddings(obj[[n]])
      if (!all(colnames(obj) %in% rownames(m))) {
        warning(sprintf("reduction '%s' does not cover all cells: left out", n), call. = FALSE)
        next
      }
      key <- .amedl_obsm_key(n)
      rd[[key]] <- m[colnames(obj), , drop = FALSE]
      keys[[key]] <- SeuratObject::Key(obj[[n]])
    }
    uns <- .amedl_uns(obj@misc, "misc")
  }
  info$reduction_keys <- keys
  info$reduction_colnames <- colnms
  info$logical_obs <- names(obs)[vapply(obs, is.logical, logical(1))]
  info$logical_var <- names(var)[vapply(var, is.logical, logical(1))]
  sce <- .amedl_sce(assays[!vapply(assays, is.null, logical(1))], obs, var, rd, colnames(obj), genes)
  list(sce = sce, uns = if (is.null(uns)) list() else uns, info = info)
}

# Unwrap what anndata2ri made of an AnnData: the matrices under their names,
# plain columns, reducedDims named by obsm keys (with the colnames recorded at reading).
.amedl_parts <- function(sce, info) {
  assays <- as.list(SummarizedExperiment::assays(sce, withDimnames = TRUE))
  names(assays)[names(assays) == "X"] <- info$x_name
  plain <- function(df) lapply(as.list(df), function(v) { names(v) <- NULL; v })
  rd <- as.list(SingleCellExperiment::reducedDims(sce))
  names(rd) <- vapply(names(rd), function(n) {
    hit <- match(n, c("PCA", "UMAP", "TSNE"))
    if (is.na(hit)) n else c("X_pca", "X_umap", "X_tsne")[hit]
  }, "")
  for (n in names(rd)) {
    m <- rd[[n]]
    storage.mode(m) <- "double"
    rownames(m) <- colnames(sce)
    cn <- info$reduction_colnames[[n]]
    colnames(m) <- if (length(cn) == ncol(m)) cn else NULL
    rd[[n]] <- m
  }
  list(assays = assays, obs = plain(SummarizedExperiment::colData(sce)),
       var = plain(SummarizedExperiment::rowData(sce)), rd = rd, cells = colnames(sce), genes = rownames(sce))
}

.amedl_dimreduc <- function(m, key, assay, misc = NULL) {
  colnames(m) <- paste0(key, seq_len(ncol(m)))
  args <- list(embeddings = m, key = key, assay = assay)
  if (!is.null(misc)) args$misc <- misc
  do.call(SeuratObject::CreateDimReducObject, args)
}

.amedl_build_seurat <- function(p, uns, info, assay) {
  requireNamespace("SeuratObject", quietly = TRUE)
  genes <- p$genes
  bad <- grepl("_", genes, fixed = TRUE)
  if (any(bad)) {
    warning(sprintf("Seurat does not allow '_' in feature names: %d names (e.g. '%s') get '-' instead",
                    sum(bad), genes[bad][1]), call. = FALSE)
    genes <- gsub("_", "-", genes, fixed = TRUE)
    p$assays <- lapply(p$assays, function(m) { rownames(m) <- genes; m })
  }
  x_name <- info$x_name
  X <- p$assays[[x_name]]
  if (x_name == "data") {
    obj <- SeuratObject::CreateSeuratObject(SeuratObject::CreateAssayObject(data = X), assay = assay)
  } else {
    if (x_name != "counts") warning(sprintf("X was the '%s' assay; it is written as the Seurat counts", x_name), call. = FALSE)
    obj <- suppressWarnings(SeuratObject::CreateSeuratObject(counts = X, assay = assay, min.cells = 0, min.features = 0))
  }
  layers <- p$assays[setdiff(names(p$assays), x_name)]
  dl <- intersect(c("data", if (x_name != "data") "logcounts"), names(layers))[1]
  if (!is.na(dl)) {
    ns <- asNamespace("SeuratObject")
    obj <- if (exists("LayerData<-", envir = ns, inherits = FALSE)) {
      get("LayerData<-", envir = ns)(obj, assay = assay, layer = "data", value = layers[[dl]])
    } else {
      SeuratObject::SetAssayData(obj, slot = "data", new.data = layers[[dl]], assay = assay)
    }
  }
  left <- setdiff(names(layers), dl)
  if (length(left)) warning(sprintf("a Seurat assay has no place for layers %s: left out", paste(left, collapse = ", ")), call. = FALSE)
  obj@meta.data <- as.data.frame(p$obs, row.names = p$cells, optional = TRUE, stringsAsFactors = FALSE)
  var <- p$var
  vf_col <- info$variable_features_column
  if (is.null(vf_col)) vf_col <- "highly_variable"
  if (vf_col %in% names(var) && is.logical(var[[vf_col]])) {
    vf <- genes[var[[vf_col]] %in% TRUE]
    if (setequal(info$variable_features, vf)) vf <- info$variable_features
    SeuratObject::VariableFeatures(obj, assay = assay) <- vf
    var[[vf_col]] <- NULL
  }
  if (length(var)) {
    fm <- as.data.frame(var, row.names = genes, optional = TRUE, stringsAsFactors = FALSE)
    obj[[assay]] <- SeuratObject::AddMetaData(obj[[assay]], metadata = fm)
  }
  for (n in names(p$rd)) obj[[.amedl_r_name(n, "seurat")]] <- .amedl_dimreduc(p$rd[[n]], .amedl_key_for(n, info), assay)
  obj@misc <- uns
  obj
}

.amedl_key_for <- function(obsm_key, info) {
  rec <- info$reduction_keys[[obsm_key]]
  if (is.character(rec) && endsWith(rec, "_") && !obsm_key %in% c("X_amedl_fe", "X_amedl_re")) return(rec)
  .amedl_seurat_key(.amedl_r_name(obsm_key, "seurat"))
}

# Nearly equal embeddings (an unchanged reduction is kept with its loadings, stdev, ...).
.amedl_same <- function(old, new) {
  old <- tryCatch(as.matrix(old), error = function(e) NULL)
  if (is.null(old) || !identical(dim(old), dim(new))) return(FALSE)
  isTRUE(all.equal(unname(old[rownames(new), , drop = FALSE]), unname(new), check.attributes = FALSE, tolerance = 1e-6))
}

# The source object with the AnnData's cell metadata, reductions and uns$amedl
# written into it (everything else kept); NULL with a reason when it cannot be used.
.amedl_update <- function(template, object_name, kind, p, uns, info) {
  ld <- tryCatch(.amedl_load(template, object_name), error = function(e) NULL)
  if (is.null(ld)) return("it cannot be loaded")
  obj <- ld$object
  if (.amedl_kind(obj) != kind) return(sprintf("it is not a %s object", kind))
  if (length(p$cells) != ncol(obj) || !setequal(p$cells, colnames(obj))) return("its cells differ from the AnnData's")
  ord <- match(colnames(obj), p$cells)
  obs <- as.data.frame(lapply(p$obs, `[`, ord), optional = TRUE, stringsAsFactors = FALSE)
  rownames(obs) <- colnames(obj)
  rd <- lapply(p$rd, function(m) { m <- m[ord, , drop = FALSE]; rownames(m) <- colnames(obj); m })
  amedl <- uns$amedl
  # the object's metadata columns that were left out on reading (dates, lists ...) are kept as they were
  old <- if (kind == "sce") SummarizedExperiment::colData(obj) else obj@meta.data
  kept <- Filter(function(n) !n %in% names(obs) && !.amedl_convertible(old[[n]]), names(old))
  if (kind == "sce") {
    requireNamespace("SingleCellExperiment", quietly = TRUE)
    obj <- .amedl_repair_sce(obj)
    cd <- S4Vectors::DataFrame(obs, check.names = FALSE)
    for (n in kept) cd[[n]] <- old[[n]]
    SummarizedExperiment::colData(obj) <- cd
    for (n in names(rd)) {
      r <- .amedl_r_name(n, "sce")
      if (r %in% SingleCellExperiment::reducedDimNames(obj) && .amedl_same(SingleCellExperiment::reducedDim(obj, r), rd[[n]])) next
      SingleCellExperiment::reducedDim(obj, r) <- rd[[n]]
    }
    if (!is.null(amedl)) S4Vectors::metadata(obj)$amedl <- amedl
    return(obj)
  }
  requireNamespace("SeuratObject", quietly = TRUE)
  assay <- info$assay
  if (is.null(assay) || !assay %in% SeuratObject::Assays(obj)) assay <- SeuratObject::DefaultAssay(obj)
  for (n in kept) obs[[n]] <- old[[n]]
  obj@meta.data <- obs
  for (n in names(rd)) {
    r <- .amedl_r_name(n, "seurat")
    if (r %in% SeuratObject::Reductions(obj) && .amedl_same(SeuratObject::Embeddings(obj[[r]]), rd[[n]])) next
    misc <- if (startsWith(r, "amedl_") && !is.null(amedl)) list(amedl = amedl) else NULL
    obj[[r]] <- .amedl_dimreduc(rd[[n]], .amedl_key_for(n, info), assay, misc)
  }
  if (!is.null(amedl)) obj@misc$amedl <- amedl
  obj
}

# Write what anndata2ri made of an AnnData (`sce`, without uns) to `path` as
# a `kind` object: into `template` (the file it was read from) when it still
# fits, else built anew. `uns` is the converted AnnData.uns.
.amedl_rds_write <- function(sce, uns, info, kind, path, object_name, template = NULL, template_name = NULL,
                             assay = "RNA", strict = FALSE, keep_from = NULL) {
  uns <- .amedl_row_names(if (is.null(uns)) list() else uns)
  p <- .amedl_parts(sce, info)
  obj <- NULL
  if (!is.null(template)) {
    obj <- .amedl_update(template, template_name, kind, p, uns, info)
    if (is.character(obj)) {
      if (strict) stop(sprintf("cannot use template %s: %s", template, obj))
      warning(sprintf(paste0("the %s object of %s is not updated (%s): a new one is written, without that object's ",
                             "other assays, loadings, graphs and commands"), kind, template, obj), call. = FALSE)
      obj <- NULL
    }
  }
  if (is.null(obj) && kind == "sce") {
    requireNamespace("SingleCellExperiment", quietly = TRUE)
    rd <- p$rd
    names(rd) <- vapply(names(rd), .amedl_r_name, "", kind = "sce")
    obj <- .amedl_sce(p$assays, p$obs, p$var, rd, p$cells, p$genes)
    S4Vectors::metadata(obj) <- uns
  } else if (is.null(obj)) {
    obj <- .amedl_build_seurat(p, uns, info, assay)
  }
  if (tolower(tools::file_ext(path)) == "rds") {
    saveRDS(obj, file = path)
  } else {
    env <- new.env(parent = emptyenv())
    # writing into an existing .rda replaces one object: the file's other objects stay
    if (!is.null(keep_from) && file.exists(keep_from)) load(keep_from, envir = env)
    assign(object_name, obj, envir = env)
    save(list = ls(env, all.names = TRUE, sorted = TRUE), envir = env, file = path)
  }
  invisible(TRUE)
}
