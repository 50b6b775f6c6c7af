# Starting the Python engine through reticulate, with reticulate's own choice of Python.

.amedl_state <- new.env(parent = emptyenv())

# The virtual environment install_amedl_python() makes (reticulate's ~/.virtualenvs/<name>).
.amedl_envname <- function() getOption("amedl.envname", "amedl")

#' Which Python amedl will use
#'
#' amedl leaves the choice of Python to reticulate: a Python named with
#' `RETICULATE_PYTHON` or chosen with `reticulate::use_python()` /
#' `reticulate::use_virtualenv()` before the first amedl call; else the
#' virtual environment `"amedl"` that [install_amedl_python()] makes (another
#' name with `options(amedl.envname = )`); else reticulate's default.
#' Nothing is started.
#'
#' @return reticulate's configuration of that Python (a `py_config` object:
#'   `$python`, `$numpy`, and `$required_module_path`, which is `NULL` when
#'   the amedl engine is not installed there). Once Python runs in this
#'   session, the running one.
#' @examples
#' \dontrun{
#' amedl_python_config()$python
#' }
#' @export
amedl_python_config <- function() {
  if (reticulate::py_available(initialize = FALSE)) {
    cfg <- reticulate::py_config()
    if (reticulate::py_module_available("amedl")) {
      cfg$required_module_path <- reticulate::py_eval("__import__('amedl').__path__[0]")
    }
    return(cfg)
  }
  reticulate::py_discover_config(required_module = "amedl", use_environment = .amedl_envname())
}

.fix_hint <- function() {
  paste0(
    "Fix it in one of these ways:\n",
    "  * in R: amedl::install_amedl_python()  (makes the virtual environment \"", .amedl_envname(), "\" with the engine)\n",
    "  * choose a Python that has the engine: Sys.setenv(RETICULATE_PYTHON = \"/path/to/venv/bin/python\") ",
    "or reticulate::use_virtualenv(\"/path/to/venv\") before the first amedl call\n",
    "  * from an amedl checkout: bash scripts/setup install  (makes .venv and registers it as \"amedl\")"
  )
}

# Reasons the chosen Python cannot run the engine, found before it starts (a
# NumPy 2 under reticulate < 1.38 would leave reticulate unusable).
.check_python <- function(cfg) {
  where <- if (!is.null(cfg$forced)) sprintf("%s (%s)", cfg$python, cfg$forced) else cfg$python
  if (is.null(cfg$required_module_path)) {
    stop(sprintf(paste0("amedl: the amedl engine is not installed in the Python at %s.\n",
                        "Install it there: %s -m pip install \"torch==2.13.0\" \"numpy<2\" amedl\n%s"),
                 where, cfg$python, .fix_hint()), call. = FALSE)
  }
  np <- cfg$numpy$version
  if (!is.null(np) && np >= "2" && utils::packageVersion("reticulate") < "1.38") {
    stop(sprintf(paste0("amedl: the Python at %s has NumPy %s, but reticulate %s can only use NumPy < 2.\n",
                        "Fix: %s -m pip install \"numpy<2\"   (or install reticulate >= 1.38)"),
                 where, np, utils::packageVersion("reticulate"), cfg$python), call. = FALSE)
  }
  invisible(cfg)
}

#' The Python side of amedl (the engine's R bridge module)
#'
#' Starts the Python that [amedl_python_config()] names, checks it, and
#' returns the module `amedl._rbridge`. Called by every function that needs
#' the engine; the first call in a session starts Python.
#'
#' On Linux, torch is imported with `RTLD_DEEPBIND` so that its matrix
#' products use its own BLAS rather than R's (Debian's R loads the slow
#' reference BLAS, which would otherwise make training about ten times
#' slower inside R); `options(amedl.deepbind = FALSE)` before the first call
#' turns this off. `options(amedl.threads = n)` sets the number of CPU
#' threads of torch, numba and BLAS (also `amedl_options(threads = n)` for one
#' fit); on a busy shared machine `1` can be much faster. Results are
#' bit-identical for a fixed seed and thread count.
#'
#' @return The Python module (a reticulate object), invisibly.
#' @examples
#' \dontrun{
#' amedl_engine()$engine_info()
#' }
#' @export
amedl_engine <- function() {
  if (!is.null(.amedl_state$bridge)) return(invisible(.amedl_state$bridge))
  if (!reticulate::py_available(initialize = FALSE)) {
    env <- .amedl_envname()
    if (!nzchar(Sys.getenv("RETICULATE_PYTHON")) && reticulate::virtualenv_exists(env)) {
      reticulate::use_virtualenv(env, required = TRUE)
    }
    cfg <- tryCatch(amedl_python_config(), error = function(e) {
      stop(paste0("amedl: no usable Python: ", conditionMessage(e), "\n", .fix_hint()), call. = FALSE)
    })
    .check_python(cfg)
  } else if (!reticulate::py_module_available("amedl")) {
    stop(sprintf(paste0("amedl: Python was already started in this R session (%s) and it has no amedl engine; ",
                        "a session cannot switch Python.\nRestart R and call an amedl function before anything ",
                        "else uses reticulate.\n%s"), reticulate::py_config()$python, .fix_hint()), call. = FALSE)
  }
  .import_torch_deepbind()
  bridge <- tryCatch(
    reticulate::import("amedl._rbridge", convert = TRUE),
    error = function(e) stop(sprintf("amedl: could not import the amedl engine in Python (%s):\n  %s\n%s",
                                     reticulate::py_config()$python, conditionMessage(e), .fix_hint()), call. = FALSE)
  )
  threads <- getOption("amedl.threads", NULL)
  if (!is.null(threads)) {
    tryCatch(bridge$set_threads(as.integer(threads)),
             error = function(e) warning("amedl: could not set the number of threads: ", conditionMessage(e), call. = FALSE))
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
  tryCatch({ amedl_engine(); TRUE }, error = function(e) structure(FALSE, reason = conditionMessage(e)))
}

#' Install the amedl Python engine into a virtual environment
#'
#' Creates (or updates) a reticulate virtual environment and installs
#' PyTorch (`torch==2.13.0`, the CPU build; a plain `torch` pulls several GB of
#' CUDA libraries), `numpy<2` (reticulate before 1.38 cannot load NumPy 2)
#' and the amedl engine. Afterwards amedl finds the environment by its name
#' (see [amedl_python_config()]); restart R if Python was already started.
#'
#' @param envname Name (or path) of the virtual environment; default
#'   `"amedl"` (`options(amedl.envname = )` changes the default).
#' @param source The engine to install: a pip requirement or the path of an
#'   amedl checkout (the folder with `pyproject.toml`).
#' @param python The Python (>= 3.10) to create the environment with;
#'   default: reticulate's choice.
#' @param torch The pip requirement for PyTorch.
#' @return The path of the environment's Python, invisibly.
#' @examples
#' \dontrun{
#' install_amedl_python(source = "~/src/amedl")
#' }
#' @export
install_amedl_python <- function(envname = .amedl_envname(), source = "amedl", python = NULL, torch = "torch==2.13.0") {
  if (dir.exists(source)) source <- normalizePath(source)
  if (!reticulate::virtualenv_exists(envname)) {
    args <- list(envname = envname)
    if (!is.null(python)) args$python <- python
    do.call(reticulate::virtualenv_create, args)
  }
  reticulate::virtualenv_install(envname, c(torch, "numpy<2"), ignore_installed = FALSE)
  reticulate::virtualenv_install(envname, c(source, "numpy<2"), ignore_installed = FALSE)
  py <- reticulate::virtualenv_python(envname)
  if (reticulate::py_available(initialize = FALSE) && is.null(.amedl_state$bridge)) {
    message("amedl: Python is already running in this R session; restart R to use the new environment.")
  }
  message("amedl: engine installed in ", dirname(dirname(py)))
  invisible(py)
}

# R has its own BLAS loaded with global symbols (on Debian the slow reference
# BLAS). A torch imported into R's process then sends its matrix products to
# R's BLAS instead of its own and runs about ten times slower. Importing torch
# with RTLD_DEEPBIND makes its libraries use their own symbols first.
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
  invisible(tryCatch({ reticulate::py_run_string(code, local = TRUE); TRUE }, error = function(e) FALSE))
}
