#' Engine settings for RunAMEDL()
#'
#' Collects and checks settings of the aMEDL engine (fields of the Python
#' `amedl.AMEDLConfig`) for the `settings` argument of [RunAMEDL()] and
#' [AMEDLIntegration()]. Settings left `NULL` keep the preset's value. The
#' common ones are arguments; any other field of `AMEDLConfig` can be given
#' by name in `...`.
#'
#' What is checked, and when:
#' * Here, in R: the arguments above (type and range as described), `threads`
#'   (a whole number >= 1), that every setting in `...` has a name and is a
#'   number, string or logical without `NA`, and that `n_latent`,
#'   `n_top_genes` and `max_epochs` are not given as settings (they are
#'   the arguments `n_latent`, `n_top_genes` and `epochs` of [RunAMEDL()]).
#' * Here, when the engine can be started (a call that names a
#'   setting in `...` starts it, as [amedl_available()] does): that every name
#'   in `...` is a field of `AMEDLConfig`; an unknown name is an error with
#'   the closest known name ("did you mean ...?") and the list of all of
#'   them. When the engine cannot be started, names are not checked here.
#' * By the engine, when [RunAMEDL()] uses the settings (before training):
#'   the names again, and the type and range of every value of `...`.
#'
#' @param lr Learning rate of Adam (a positive number).
#' @param batch_size Minibatch size (a whole number >= 2).
#' @param hidden Sizes of the hidden layers of the encoders (whole numbers >= 1),
#'   e.g. `c(512, 132)`.
#' @param patience Epochs without a better validation loss before the FE and
#'   AE networks stop (a whole number >= 1, or `Inf`: no early stopping);
#'   `re_patience` in `...` for RE.
#' @param prior_scale Scale of the Normal prior of the random effects (a positive number).
#' @param scaling Per-gene scaling of the model input: `"zscore"` or `"minmax"` (the paper's).
#' @param device `"auto"` (a GPU when PyTorch sees one), `"cpu"`, `"cuda"`, `"cuda:1"`, ...;
#'   a GPU that PyTorch does not see is an error when the fit starts (then
#'   `amedl_options(device = "cpu")` or `"auto"`).
#' @param ... Further engine settings by name: numbers, strings or logicals
#'   (a vector of several numbers for tuple settings such as `adversary_hidden`;
#'   `Inf` for "no limit", the engine's `None`), e.g. `re_patience = 10`,
#'   `fe_adv_weight = 2` or `threads = 4` (the number of CPU threads, a whole
#'   number >= 1; set when the fit starts, it stays for the rest of the R
#'   session, later fits included: see "Threads" in [amedl_engine()]).
#' @return A list of class `amedl_options` with the settings that are set,
#'   typed for the engine (whole numbers as integers).
#' @seealso [RunAMEDL()]
#' @examples
#' amedl_options(lr = 1e-3, batch_size = 512)
#' amedl_options(hidden = c(256, 64), fe_adv_weight = 2, threads = 2)
#' @export
amedl_options <- function(lr = NULL, batch_size = NULL, hidden = NULL, patience = NULL, prior_scale = NULL,
                          scaling = NULL, device = NULL, ...) {
  extra <- list(...)
  if (length(extra) && (is.null(names(extra)) || any(!nzchar(names(extra))))) {
    .stop("every setting in amedl_options(...) needs a name, e.g. amedl_options(re_patience = 10)")
  }
  argument_of <- c(n_latent = "n_latent", n_top_genes = "n_top_genes", max_epochs = "epochs")
  clash <- intersect(names(extra), names(argument_of))
  if (length(clash)) {
    .stop("set %s with RunAMEDL()'s argument%s %s, not as a setting", paste(clash, collapse = ", "),
          if (length(clash) > 1L) "s" else "", paste0("`", argument_of[clash], "`", collapse = ", "))
  }
  .check_setting_names(names(extra))
  th <- extra$threads
  if (!is.null(th) && (!is.numeric(th) || length(th) != 1L || !is.finite(th) || th != round(th) || th < 1)) {
    .stop("`threads` must be a whole number >= 1 (the number of CPU threads), not %s", paste(deparse(th), collapse = " "))
  }
  positive <- function(x, name) {
    if (!is.null(x) && (!is.numeric(x) || length(x) != 1L || is.na(x) || x <= 0)) .stop("`%s` must be a positive number", name)
    x
  }
  whole <- function(x, name, min, scalar = TRUE) {
    if (is.null(x) || identical(x, Inf)) return(x)
    if (!is.numeric(x) || !length(x) || (scalar && length(x) != 1L) || anyNA(x) || any(x != round(x)) || any(x < min)) {
      .stop("`%s` must be %s whole number%s >= %d", name, if (scalar) "a" else "one or more", if (scalar) "" else "s", min)
    }
    as.integer(x)
  }
  choice <- function(x, name, choices = NULL) {
    if (is.null(x)) return(NULL)
    if (!is.character(x) || length(x) != 1L || is.na(x) || (!is.null(choices) && !x %in% choices)) {
      .stop("`%s` must be %s", name, if (is.null(choices)) "a single string" else paste0("one of \"", paste(choices, collapse = "\", \""), "\""))
    }
    x
  }
  known <- list(
    lr = positive(lr, "lr"),
    batch_size = whole(batch_size, "batch_size", 2L),
    hidden = if (!is.null(hidden)) as.list(whole(hidden, "hidden", 1L, scalar = FALSE)),
    patience = whole(patience, "patience", 1L),
    prior_scale = positive(prior_scale, "prior_scale"),
    scaling = choice(scaling, "scaling", c("zscore", "minmax")),
    device = choice(device, "device")
  )
  extra <- lapply(names(extra), function(n) {
    v <- extra[[n]]
    if (is.null(v)) return(NULL)
    if (!is.atomic(v) || !length(v) || anyNA(v) || !(is.numeric(v) || is.character(v) || is.logical(v))) {
      .stop("setting `%s` must be a number, string or logical without NA", n)
    }
    if (identical(v, Inf)) return(Inf)
    if (is.numeric(v) && all(is.finite(v)) && all(v == round(v)) && all(abs(v) < .Machine$integer.max)) v <- as.integer(v)
    if (length(v) > 1L) as.list(v) else v
  })
  names(extra) <- names(list(...))
  out <- c(known, extra)
  out <- out[!vapply(out, is.null, logical(1))]
  out[vapply(out, identical, logical(1), Inf)] <- list(NULL)  # no limit: None in the engine
  structure(out, class = "amedl_options")
}

#' @export
print.amedl_options <- function(x, ...) {
  if (!length(x)) {
    cat("aMEDL engine settings: none (the preset's values)\n")
  } else {
    cat("aMEDL engine settings:\n")
    for (n in names(x)) cat(sprintf("  %s = %s\n", n, if (is.null(x[[n]])) "Inf (no limit)" else paste(unlist(x[[n]]), collapse = ", ")))
  }
  invisible(x)
}

# The names of the engine's settings (the fields of amedl.AMEDLConfig), read once per session
# from the engine; NULL when the engine cannot start (then RunAMEDL() reports that).
.engine_setting_names <- function() {
  if (is.null(.amedl_state$setting_names) && isTRUE(amedl_available())) {
    nm <- tryCatch(
      reticulate::py_eval("[f.name for f in __import__('dataclasses').fields(__import__('amedl').AMEDLConfig)]"),
      error = function(e) NULL)
    if (length(nm)) .amedl_state$setting_names <- as.character(unlist(nm))
  }
  .amedl_state$setting_names
}

# Setting names given in amedl_options(...) that the engine does not know: an error with
# the closest known name and the list of all of them.
.check_setting_names <- function(given) {
  if (!length(given)) return(invisible(TRUE))
  fields <- .engine_setting_names()
  if (is.null(fields)) return(invisible(TRUE))
  unknown <- setdiff(given, fields)
  if (!length(unknown)) return(invisible(TRUE))
  hint <- vapply(unknown, function(u) {
    d <- utils::adist(u, fields)[1, ]
    if (min(d) <= max(2, nchar(u) %/% 4)) sprintf("'%s' (did you mean '%s'?)", u, fields[which.min(d)]) else sprintf("'%s'", u)
  }, character(1))
  .stop("unknown engine setting(s): %s. The settings are the fields of the engine's amedl.AMEDLConfig: %s",
        paste(hint, collapse = ", "), paste(sort(fields), collapse = ", "))
}

# `settings` of RunAMEDL(): amedl_options(), or a named list checked by it.
.check_settings <- function(settings) {
  if (inherits(settings, "amedl_options")) return(settings)
  if (is.null(settings)) return(amedl_options())
  if (!is.list(settings) || (length(settings) && (is.null(names(settings)) || any(!nzchar(names(settings)))))) {
    .stop("`settings` must be amedl_options(...) or a named list of engine settings, e.g. list(lr = 1e-3, batch_size = 512)")
  }
  do.call(amedl_options, settings)
}
