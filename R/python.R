# Finding the Python engine and starting it through reticulate.

# The amedl checkout this package was installed from, recorded at install time:
# this top-level code runs when R CMD INSTALL builds the lazy-load database.
# scripts/setup runs `AMEDL_CHECKOUT=/path/to/checkout R CMD INSTALL .`; a plain
# `R CMD INSTALL .` from a checkout (R runs this code with the source folder as
# the working directory) is recognised by its pyproject.toml and python/amedl.
.amedl_install_checkout <- local({
  p <- Sys.getenv("AMEDL_CHECKOUT", "")
  if (!nzchar(p) && identical(Sys.getenv("R_PACKAGE_NAME"), "amedl")) {
    src <- getwd()
    if (file.exists(file.path(src, "pyproject.toml")) && dir.exists(file.path(src, "python", "amedl"))) p <- src
  }
  if (nzchar(p)) normalizePath(p, mustWork = FALSE) else ""
})

.amedl_state <- new.env(parent = emptyenv())

.python_in <- function(path) {
  # a virtual environment folder or a Python executable -> the executable
  if (dir.exists(path)) {
    for (cand in c(file.path(path, "bin", "python"), file.path(path, "Scripts", "python.exe"))) {
      if (file.exists(cand)) return(cand)
    }
    return(file.path(path, "bin", "python"))
  }
  path
}

#' Default folder of the virtual environment made by `install_amedl_python()`
#' @noRd
.amedl_user_venv <- function() file.path(tools::R_user_dir("amedl", which = "data"), "venv")

#' Where amedl looks for Python
#'
#' Lists, in order, the places `RunAMEDL()` and friends look for the Python
#' that has the amedl engine, and which one would be used. Nothing is
#' started. The order is:
#' 1. `options(amedl.python = ...)` (a Python executable or a virtual environment folder),
#' 2. the environment variable `AMEDL_PYTHON`,
#' 3. the environment variable `RETICULATE_PYTHON`,
#' 4. the `.venv` of the amedl checkout this package was installed from
#'    (recorded at install time from `AMEDL_CHECKOUT`),
#' 5. the virtual environment made by [install_amedl_python()].
#'
#' If Python has already been started in this R session (by reticulate, for
#' any package), that Python is used when it has the engine.
#'
#' @return A data frame with columns `source`, `python` and `exists`, and an
#'   attribute `chosen` (the row used, `NA` when none exists).
#' @examples
#' amedl_python_config()
#' @export
amedl_python_config <- function() {
  checkout_venv <- if (nzchar(.amedl_install_checkout)) file.path(.amedl_install_checkout, ".venv") else ""
  cands <- list(
    c("option amedl.python", as.character(getOption("amedl.python", ""))),
    c("environment variable AMEDL_PYTHON", Sys.getenv("AMEDL_PYTHON", "")),
    c("environment variable RETICULATE_PYTHON", Sys.getenv("RETICULATE_PYTHON", "")),
    c(sprintf("checkout .venv (installed from %s)", if (nzchar(.amedl_install_checkout)) .amedl_install_checkout else "no checkout recorded"), checkout_venv),
    c("install_amedl_python() environment", .amedl_user_venv())
  )
  src <- vapply(cands, `[`, "", 1)
  py <- vapply(cands, function(x) if (nzchar(x[2])) .python_in(path.expand(x[2])) else "", "")
  ok <- nzchar(py) & file.exists(py)
  out <- data.frame(source = src, python = py, exists = ok, stringsAsFactors = FALSE)
  # an explicitly configured Python that does not exist is an error, not a fall-through
  explicit <- which(nzchar(py))[1]
  chosen <- if (!is.na(explicit) && explicit <= 3) explicit else which(ok)[1]
  attr(out, "chosen") <- chosen
  out
}

.fix_hint <- function() {
  paste0(
    "Fix it in one of these ways:\n",
    "  * in a shell, in the amedl checkout: bash scripts/setup install  (makes .venv and reinstalls this R package pointing at it)\n",
    "  * in R: amedl::install_amedl_python()  (makes a virtual environment for amedl; needs Python >= 3.10 and internet access)\n",
    "  * point amedl at a Python that has the engine: options(amedl.python = \"/path/to/venv/bin/python\") or Sys.setenv(AMEDL_PYTHON = ...)"
  )
}

# Runs the candidate Python in a subprocess to check it without starting it in
# this R session (a broken Python or NumPy 2 under an old reticulate would
# otherwise take the session down or leave reticulate unusable).
.check_python <- function(python, source) {
  code <- paste(
    "import importlib.util as u, sys",
    "def v(m):",
    "    if u.find_spec(m) is None: return 'MISSING'",
    "    import importlib.metadata as md",
    "    try: return md.version(m)",
    "    except Exception: return '?'",
    "print('python=' + sys.version.split()[0])",
    "for m in ('numpy', 'scipy', 'torch', 'anndata', 'amedl'): print(m + '=' + v(m))",
    sep = "\n"
  )
  res <- suppressWarnings(tryCatch(
    system2(python, c("-c", shQuote(code)), stdout = TRUE, stderr = TRUE),
    error = function(e) structure(conditionMessage(e), status = 127L)
  ))
  status <- attr(res, "status")
  if (!is.null(status) && status != 0) {
    stop(sprintf("amedl: the Python at %s (from %s) does not run:\n  %s\n%s",
                 python, source, paste(res, collapse = "\n  "), .fix_hint()), call. = FALSE)
  }
  kv <- strsplit(grep("=", res, value = TRUE, fixed = TRUE), "=", fixed = TRUE)
  vers <- stats::setNames(vapply(kv, `[`, "", 2), vapply(kv, `[`, "", 1))
  missing <- names(vers)[vers == "MISSING"]
  if (length(missing)) {
    what <- if ("amedl" %in% missing) "the amedl engine" else paste(missing, collapse = ", ")
    checkout <- if (nzchar(.amedl_install_checkout)) .amedl_install_checkout else "/path/to/amedl-checkout"
    stop(sprintf(paste0(
      "amedl: %s is not installed in the Python at %s (from %s).\n",
      "Install it there:  %s -m pip install \"torch==2.13.0\" \"numpy<2\" -e %s\n%s"),
      what, python, source, python, checkout, .fix_hint()), call. = FALSE)
  }
  np_major <- suppressWarnings(as.integer(sub("\\..*", "", vers[["numpy"]])))
  if (!is.na(np_major) && np_major >= 2 && utils::packageVersion("reticulate") < "1.38") {
    stop(sprintf(paste0(
      "amedl: the Python at %s (from %s) has NumPy %s, but reticulate %s can only use NumPy < 2.\n",
      "Fix: %s -m pip install \"numpy<2\"   (or install reticulate >= 1.38)"),
      python, source, vers[["numpy"]], utils::packageVersion("reticulate"), python), call. = FALSE)
  }
  invisible(vers)
}

#' The Python side of amedl (the engine's R bridge module)
#'
#' Finds and starts the Python that has the amedl engine (see
#' [amedl_python_config()] for where it looks), checks it, and returns the
#' module `amedl._rbridge`. Called by every function that needs the engine;
#' the first call in a session starts Python.
#'
#' On Linux, torch is imported with `RTLD_DEEPBIND` so that its matrix
#' products use its own BLAS rather than R's (Debian's R loads the slow
#' reference BLAS, which would otherwise make training about ten times
#' slower inside R); set `options(amedl.deepbind = FALSE)` before the first
#' call to turn this off. `options(amedl.threads = n)` sets the number of
#' CPU threads torch uses (default: torch's own choice, or `OMP_NUM_THREADS`);
#' on a busy shared machine `1` can be much faster.
#'
#' @return The Python module (a reticulate object), invisibly.
#' @examples
#' \dontrun{
#' amedl_engine()
#' }
#' @export
amedl_engine <- function() {
  if (!is.null(.amedl_state$bridge)) return(invisible(.amedl_state$bridge))
  cfg <- amedl_python_config()
  chosen <- attr(cfg, "chosen")
  running <- reticulate::py_available(initialize = FALSE)
  if (running) {
    # Python already started in this session (possibly by another package):
    # it cannot be swapped, so use it if it has the engine.
    current <- reticulate::py_config()$python
    if (!reticulate::py_module_available("amedl")) {
      stop(sprintf(paste0(
        "amedl: Python was already started in this R session (%s) and it has no amedl engine; ",
        "a session cannot switch Python.\nRestart R and call an amedl function before anything else uses reticulate",
        "%s.\n%s"), current,
        if (!is.na(chosen)) sprintf(" (amedl would use %s, from %s)", cfg$python[chosen], cfg$source[chosen]) else "",
        .fix_hint()), call. = FALSE)
    }
  } else {
    if (is.na(chosen)) {
      looked <- paste(sprintf("  - %s: %s", cfg$source, ifelse(nzchar(cfg$python), cfg$python, "(not set)")), collapse = "\n")
      stop(paste0("amedl: no Python with the amedl engine was found. Looked at:\n", looked, "\n", .fix_hint()), call. = FALSE)
    }
    python <- cfg$python[chosen]
    if (!file.exists(python)) {
      stop(sprintf("amedl: %s points to %s, which does not exist.\n%s", cfg$source[chosen], python, .fix_hint()), call. = FALSE)
    }
    .check_python(python, cfg$source[chosen])
    # RETICULATE_PYTHON overrides use_python(); point it at our choice while starting
    old <- Sys.getenv("RETICULATE_PYTHON", unset = NA)
    Sys.setenv(RETICULATE_PYTHON = python)
    on.exit(if (is.na(old)) Sys.unsetenv("RETICULATE_PYTHON") else Sys.setenv(RETICULATE_PYTHON = old), add = TRUE)
    reticulate::use_python(python, required = TRUE)
  }
  .import_torch_deepbind()
  bridge <- tryCatch(
    reticulate::import("amedl._rbridge", convert = TRUE),
    error = function(e) stop(sprintf(
      "amedl: could not import the amedl engine in Python (%s):\n  %s\n%s",
      tryCatch(reticulate::py_config()$python, error = function(e) "?"),
      conditionMessage(e), .fix_hint()), call. = FALSE)
  )
  threads <- getOption("amedl.threads", NULL)
  if (!is.null(threads)) {
    tryCatch(reticulate::import("torch")$set_num_threads(as.integer(threads)),
             error = function(e) warning("amedl: could not set the number of torch threads: ", conditionMessage(e), call. = FALSE))
  }
  .amedl_state$bridge <- bridge
  invisible(bridge)
}

#' Is the amedl Python engine available?
#'
#' `TRUE` when [amedl_engine()] can start and import the engine (it is
#' started as a side effect). Useful to skip examples and tests.
#'
#' @return `TRUE` or `FALSE`; on `FALSE` the reason is the attribute `reason`.
#' @examples
#' amedl_available()
#' @export
amedl_available <- function() {
  res <- tryCatch({ amedl_engine(); TRUE }, error = function(e) structure(FALSE, reason = conditionMessage(e)))
  res
}

#' Install the amedl Python engine into a virtual environment
#'
#' Creates a Python virtual environment and installs PyTorch (the CPU build,
#' `torch==2.13.0`), `numpy<2` (reticulate before 1.38 cannot load NumPy 2)
#' and the amedl engine from an amedl checkout. Afterwards amedl finds this
#' environment by itself (see [amedl_python_config()]); restart R if Python
#' was already started in this session.
#'
#' @param envdir Folder of the virtual environment to create. Default: the
#'   checkout's `.venv` when this package was installed from a checkout, else
#'   a folder under `tools::R_user_dir("amedl", "data")`.
#' @param source The amedl checkout (folder with `pyproject.toml`) to install
#'   the engine from; default the checkout recorded at install time.
#' @param python The Python (>= 3.10) used to create the environment; default
#'   the first of `python3.11`, `python3.12`, `python3.10`, `python3` on the `PATH`.
#' @param torch The pip requirement for PyTorch.
#' @param editable Install the engine in editable mode (`pip install -e`), so
#'   that changes in the checkout take effect without reinstalling.
#' @param quiet Pass `-q` to pip.
#' @return The path of the environment's Python, invisibly.
#' @examples
#' \dontrun{
#' install_amedl_python()
#' }
#' @export
install_amedl_python <- function(envdir = NULL, source = NULL, python = NULL,
                                 torch = "torch==2.13.0", editable = TRUE, quiet = TRUE) {
  if (is.null(source)) source <- .amedl_install_checkout
  if (!nzchar(source) || !file.exists(file.path(source, "pyproject.toml"))) {
    stop(paste0("amedl: install_amedl_python() needs an amedl checkout (a folder with pyproject.toml) to install ",
                "the engine from; none was recorded when this package was installed.\n",
                "Fix: install_amedl_python(source = \"/path/to/amedl\")"), call. = FALSE)
  }
  source <- normalizePath(source)
  if (is.null(envdir)) {
    envdir <- if (identical(source, .amedl_install_checkout)) file.path(source, ".venv") else .amedl_user_venv()
  }
  if (is.null(python)) {
    for (p in c("python3.11", "python3.12", "python3.10", "python3")) {
      hit <- Sys.which(p)
      if (nzchar(hit)) { python <- unname(hit); break }
    }
    if (is.null(python)) stop("amedl: no python3 on the PATH; install Python >= 3.10 or pass python = \"/path/to/python3\"", call. = FALSE)
  }
  run <- function(cmd, args) {
    message("amedl: ", cmd, " ", paste(args, collapse = " "))
    status <- system2(cmd, args)
    if (status != 0) stop(sprintf("amedl: command failed (exit %d): %s %s", status, cmd, paste(args, collapse = " ")), call. = FALSE)
  }
  venv_py <- .python_in(envdir)
  if (!file.exists(venv_py)) {
    dir.create(dirname(envdir), recursive = TRUE, showWarnings = FALSE)
    run(python, c("-m", "venv", shQuote(envdir)))
  }
  q <- if (quiet) "-q" else character(0)
  run(venv_py, c("-m", "pip", "install", q, "--upgrade", "pip"))
  run(venv_py, c("-m", "pip", "install", q, shQuote(torch), shQuote("numpy<2")))
  run(venv_py, c("-m", "pip", "install", q, shQuote("numpy<2"), if (editable) "-e", shQuote(source)))
  .check_python(venv_py, "the new environment")
  if (reticulate::py_available(initialize = FALSE) && is.null(.amedl_state$bridge)) {
    message("amedl: Python is already running in this R session; restart R to use the new environment.")
  }
  message("amedl: engine installed in ", envdir)
  invisible(venv_py)
}

# R has its own BLAS loaded with global symbols (on Debian the slow reference
# BLAS). A torch imported into R's process then sends its matrix products to
# R's BLAS instead of its own and runs about ten times slower. Importing torch
# with RTLD_DEEPBIND makes its libraries use their own symbols first.
# options(amedl.deepbind = FALSE) turns this off.
.import_torch_deepbind <- function() {
  linux <- identical(Sys.info()[["sysname"]], "Linux")
  if (!isTRUE(getOption("amedl.deepbind", linux))) return(invisible(FALSE))
  code <- paste(
    "import os, sys",
    "if 'torch' not in sys.modules and hasattr(os, 'RTLD_DEEPBIND'):",
    "    _amedl_flags = sys.getdlopenflags()",
    "    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)",
    "    try:",
    "        import torch",
    "    except Exception:",
    "        pass",
    "    finally:",
    "        sys.setdlopenflags(_amedl_flags)",
    sep = "\n")
  ok <- tryCatch({ reticulate::py_run_string(code, local = TRUE); TRUE }, error = function(e) FALSE)
  invisible(ok)
}
