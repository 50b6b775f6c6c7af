# Starting the Python engine through reticulate, with reticulate's own choice of Python.

.amedl_state <- new.env(parent = emptyenv())

# The virtual environment install_amedl_python() makes (reticulate's ~/.virtualenvs/<name>, or a path).
.amedl_envname <- function() getOption("amedl.envname", "amedl")

# The pip index of PyTorch's CPU builds (PyPI's torch for Linux is the CUDA build, several GB).
.torch_cpu_index <- "https://download.pytorch.org/whl/cpu"

#' Which Python amedl will use
#'
#' Says which Python the first amedl call in this R session will start, and
#' whether the amedl engine is installed there. Nothing is started.
#'
#' The first of these that applies is used:
#' 1. `RETICULATE_PYTHON` (a Python), or `RETICULATE_PYTHON_ENV` (an environment);
#' 2. a Poetry or Pipenv project in the working directory (reticulate's rule);
#' 3. a Python chosen with `reticulate::use_python()`, `use_virtualenv()` or
#'    `use_condaenv()` before the first amedl call, with `required = TRUE`
#'    (reticulate's default when called in a session or script);
#' 4. a Python chosen that way with `required = FALSE`, when it has the engine;
#' 5. the virtual environment `"amedl"` (reticulate's `~/.virtualenvs/amedl`,
#'    or `$WORKON_HOME/amedl`) that [install_amedl_python()] makes and an amedl
#'    checkout's `scripts/setup install` registers, when it exists;
#'    `options(amedl.envname = )` names another one: a name there, or the
#'    path of a virtual environment;
#' 6. reticulate's search: the first Python it finds that has the engine
#'    (environments named `"amedl"` or `"r-amedl"`, `python3` on the `PATH`,
#'    ...), else its default Python (then without the engine).
#'
#' amedl reads the choice of item 4 from reticulate's internal list of
#' requests; a reticulate version without that list ranks such requests
#' after item 5. An amedl choice under items 5 and 6 is made binding when the
#' engine starts (`reticulate::use_python(required = TRUE)`), so the engine
#' runs in the Python reported here.
#'
#' @return reticulate's configuration of that Python (a `py_config` object:
#'   `$python`, `$numpy`, `$forced` (what chose it, `NULL` for reticulate's
#'   search) and `$required_module_path`, which is `NULL` when the amedl
#'   engine is not installed there), or `NULL` when no Python is found. Once
#'   Python runs in this session, the running one.
#' @seealso [install_amedl_python()] to install the engine.
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
  .choose_python()
}

# The Python amedl starts (see ?amedl_python_config for the order). The result's
# `amedl_pins` is TRUE when amedl, not the user, made the choice: amedl_engine()
# then makes it binding, since reticulate's own start-up ignores the engine.
.choose_python <- function() {
  env <- .amedl_envname()
  cfg <- reticulate::py_discover_config(required_module = "amedl", use_environment = env)
  pinned <- function(x) { if (!is.null(x)) x$amedl_pins <- TRUE; x }
  if (!is.null(cfg$forced) || !is.null(.reticulate_request()$required)) return(cfg)
  if (!is.null(cfg$required_module_path) && .same_python(cfg$python, .reticulate_request()$preferred)) return(pinned(cfg))
  if (reticulate::virtualenv_exists(env)) {
    py <- reticulate::virtualenv_python(env)
    return(pinned(.python_config_of(py, sprintf("amedl's virtual environment \"%s\"%s", env,
                                                 if (identical(env, "amedl")) "" else " (options(amedl.envname))"))))
  }
  pinned(cfg)
}

# What was asked of reticulate before amedl's first call: $required, the Python of
# use_python(required = TRUE) (or use_virtualenv(), use_condaenv()); $preferred, those of
# use_python(required = FALSE). reticulate has no public API for this; its internal list
# is read defensively (NULL when it cannot be read).
.reticulate_request <- function() {
  g <- tryCatch(utils::getFromNamespace(".globals", "reticulate"), error = function(e) NULL)
  if (!is.environment(g)) return(list())
  get1 <- function(name) {
    v <- get0(name, envir = g, inherits = FALSE)
    if (is.character(v) && length(v)) v else NULL
  }
  list(required = get1("required_python_version"), preferred = get1("use_python_versions"))
}

.same_python <- function(python, candidates) {
  length(candidates) > 0L &&
    normalizePath(python, mustWork = FALSE) %in% normalizePath(candidates, mustWork = FALSE)
}

# reticulate's configuration of the Python at `python` (with the amedl module looked up),
# through its public API: RETICULATE_PYTHON is set for the look-up only.
.python_config_of <- function(python, forced) {
  old <- Sys.getenv("RETICULATE_PYTHON", NA)
  Sys.setenv(RETICULATE_PYTHON = python)
  on.exit(if (is.na(old)) Sys.unsetenv("RETICULATE_PYTHON") else Sys.setenv(RETICULATE_PYTHON = old), add = TRUE)
  cfg <- reticulate::py_discover_config(required_module = "amedl")
  cfg$forced <- forced
  cfg
}

# How to get a Python with the engine; `python`: the Python found without it, if any.
.fix_hint <- function(python = NULL) {
  env <- .amedl_envname()
  setup_note <- if (identical(env, "amedl")) "" else sprintf(paste0(
    "; you have set options(amedl.envname = \"%s\"), so then set options(amedl.envname = \"amedl\") ",
    "or Sys.setenv(RETICULATE_PYTHON = \"/path/to/amedl/.venv/bin/python\") too"), env)
  paste0(
    "The engine is installed from an amedl checkout (the folder with pyproject.toml; it is not on PyPI). ",
    "Fix it in one of these ways:\n",
    "  * in R: amedl::install_amedl_python(source = \"/path/to/amedl\")  ",
    "(makes the virtual environment \"", env, "\" with PyTorch's CPU build and the engine)\n",
    "  * in a shell, in the checkout: bash scripts/setup install  ",
    "(makes .venv there and registers it as reticulate's virtual environment \"amedl\"", setup_note, ")\n",
    "  * choose a Python that has the engine: Sys.setenv(RETICULATE_PYTHON = \"/path/to/venv/bin/python\") ",
    "or reticulate::use_virtualenv(\"/path/to/venv\") before the first amedl call\n",
    "Then restart R if Python was already started in this session."
  )
}

# pip commands that install the engine into `cfg`'s Python: only into a virtual (or conda)
# environment; a system Python (Debian's refuses pip: PEP 668) gets a new virtual environment.
.pip_hint <- function(cfg) {
  in_env <- (is.character(cfg$virtualenv) && length(cfg$virtualenv) == 1L && nzchar(cfg$virtualenv)) || isTRUE(cfg$conda)
  if (!in_env) {
    return(sprintf(paste0(
      "It is not a virtual environment, and a system Python may refuse pip installs (PEP 668, ",
      "\"externally-managed-environment\"): install the engine into a virtual environment instead, e.g. one made ",
      "from this Python with amedl::install_amedl_python(source = \"/path/to/amedl\", python = \"%s\") ",
      "or %s -m venv /path/to/venv.\n"), cfg$python, cfg$python))
  }
  sprintf(paste0(
    "Install it there (PyTorch's CPU build from PyTorch's index; leave out --index-url for the CUDA build):\n",
    "  %s -m pip install \"torch==2.13.0\" --index-url %s\n",
    "  %s -m pip install \"numpy<2\" /path/to/amedl   (an amedl checkout, the folder with pyproject.toml)\n"),
    cfg$python, .torch_cpu_index, cfg$python)
}

# Reasons the chosen Python cannot run the engine, found before it starts (a
# NumPy 2 under reticulate < 1.38 would leave reticulate unusable).
.check_python <- function(cfg) {
  if (is.null(cfg) || is.null(cfg$python)) {
    stop(paste0("amedl: no Python was found.\n", .fix_hint()), call. = FALSE)
  }
  where <- if (!is.null(cfg$forced)) sprintf("%s (%s)", cfg$python, cfg$forced) else cfg$python
  if (is.null(cfg$required_module_path)) {
    stop(sprintf("amedl: the amedl engine is not installed in the Python at %s.\n%s%s",
                 where, .pip_hint(cfg), .fix_hint()), call. = FALSE)
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
#' turns this off. This works only when amedl is the first to import torch
#' in the R session: a torch imported earlier through reticulate (e.g.
#' `reticulate::import("torch")` to look for a GPU) was loaded without it, and
#' training can then be several times slower. amedl warns once when that
#' happens; the fix is to restart R and call `amedl_engine()` (or any amedl
#' function) first, after which `reticulate::import("torch")` returns the same,
#' fast torch. `options(amedl.deepbind = FALSE)` silences the warning (e.g.
#' when R's BLAS is not the reference BLAS).
#'
#' Threads: `options(amedl.threads = n)` sets the number of CPU threads of
#' torch, numba and BLAS when the engine starts and for every fit;
#' `amedl_options(threads = n)` sets them when that fit starts. The count is
#' one per process, so it stays for the rest of the R session: a later fit
#' without a threads setting runs with the last count set (not the
#' libraries' defaults). On a busy shared machine `1` can be much faster.
#' Results are bit-identical for a fixed seed and the same thread count in
#' use; to reproduce fits, set `options(amedl.threads = n)` once, or give
#' every fit the same `threads`.
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
    cfg <- tryCatch(.choose_python(), error = function(e) {
      stop(paste0("amedl: no usable Python: ", conditionMessage(e), "\n", .fix_hint()), call. = FALSE)
    })
    .check_python(cfg)
    # amedl's own choice (not the user's) made binding: reticulate's start-up would
    # otherwise pick its default Python, which need not have the engine
    if (isTRUE(cfg$amedl_pins)) reticulate::use_python(cfg$python, required = TRUE)
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
#' @return `TRUE` or `FALSE`; on `FALSE` the reason, with how to fix it, is
#'   the attribute `reason`.
#' @examples
#' amedl_available()
#' @export
amedl_available <- function() {
  tryCatch({ amedl_engine(); TRUE }, error = function(e) structure(FALSE, reason = conditionMessage(e)))
}

#' Install the amedl Python engine into a virtual environment
#'
#' Creates (or updates) a reticulate virtual environment and installs
#' PyTorch, `numpy<2` (reticulate before 1.38 cannot load NumPy 2) and the
#' amedl engine from an amedl checkout. The engine is not on PyPI and the R
#' package does not include it, so `source` is needed: the folder of an amedl
#' checkout (the one with `pyproject.toml`). In a shell, the checkout's
#' `bash scripts/setup install` does the same for the checkout's `.venv` and
#' registers it as the virtual environment `"amedl"`.
#'
#' PyTorch comes from `torch_index`, by default PyTorch's index of CPU builds
#' (`torch==2.13.0` resolves there to `2.13.0+cpu` on Linux; pip's default
#' index, PyPI, has the CUDA build for Linux, several GB with its CUDA
#' libraries). For a GPU, give `torch_index = NULL` (pip's index) or one of
#' PyTorch's CUDA indexes, e.g. `"https://download.pytorch.org/whl/cu126"`.
#'
#' A virtual environment made by the call is removed again when the
#' installation fails; one that existed before is left as it is (it may then
#' hold part of the installation), and the error says which.
#'
#' Afterwards amedl finds the environment by its name (see
#' [amedl_python_config()]; for another name than `"amedl"`, set
#' `options(amedl.envname = )` to it); restart R if Python was already
#' started.
#'
#' @param envname Name (or path) of the virtual environment; default
#'   `"amedl"` (`options(amedl.envname = )` changes the default).
#' @param source The engine to install: the path of an amedl checkout (the
#'   folder with `pyproject.toml`), or a pip requirement that is not the bare
#'   name `amedl` (a wheel or source archive of the engine, a `git+` URL).
#' @param python The Python (>= 3.10) to create the environment with;
#'   default: reticulate's choice.
#' @param torch The pip requirement for PyTorch; `NULL` installs no PyTorch
#'   here (the engine's requirements then pull one from pip's index).
#' @param torch_index The pip index PyTorch is installed from (pip's
#'   `--index-url`); default PyTorch's CPU builds; `NULL` for pip's own index.
#' @return The path of the environment's Python, invisibly.
#' @examples
#' \dontrun{
#' install_amedl_python(source = "~/src/amedl")
#' }
#' @export
install_amedl_python <- function(envname = .amedl_envname(), source = NULL, python = NULL, torch = "torch==2.13.0",
                                 torch_index = "https://download.pytorch.org/whl/cpu") {
  source <- .engine_source(source)
  if (!is.character(envname) || length(envname) != 1L || is.na(envname) || !nzchar(envname)) {
    stop("amedl: `envname` must be the name or path of a virtual environment", call. = FALSE)
  }
  # a name lives under reticulate's virtualenv_root(); a path is used as it is (reticulate's rule)
  path <- if (grepl("[/\\\\]", envname) || startsWith(envname, "~")) normalizePath(envname, mustWork = FALSE)
          else file.path(reticulate::virtualenv_root(), envname)
  if (file.exists(path) && !reticulate::virtualenv_exists(envname)) {
    stop(sprintf("amedl: %s exists and is not a virtual environment; give another `envname`", path), call. = FALSE)
  }
  created <- !file.exists(path)
  finished <- FALSE
  on.exit(if (!finished && created && file.exists(path)) {
    unlink(path, recursive = TRUE)
    message("amedl: the installation did not finish; removed the virtual environment it had started, ", path)
  }, add = TRUE)
  step <- "creating the virtual environment"
  tryCatch({
    if (created) {
      args <- list(envname = envname, packages = "numpy<2")
      if (!is.null(python)) args$python <- python
      do.call(reticulate::virtualenv_create, args)
    }
    if (!is.null(torch)) {
      step <- sprintf("installing PyTorch (%s%s)", torch, if (is.null(torch_index)) "" else paste(" from", torch_index))
      reticulate::virtualenv_install(envname, torch, ignore_installed = FALSE,
                                     pip_options = if (!is.null(torch_index)) c("--index-url", torch_index) else character())
    }
    step <- sprintf("installing the engine (%s)", source)
    reticulate::virtualenv_install(envname, c(source, "numpy<2"), ignore_installed = FALSE)
  }, error = function(e) {
    left <- if (created) {
      finished <<- TRUE  # cleaned up here, with the message below
      unlink(path, recursive = TRUE)
      sprintf("The virtual environment %s, made by this call, was removed.", path)
    } else {
      sprintf(paste0("The virtual environment %s existed before this call and was left as it is; it may hold part ",
                     "of the installation (reticulate::virtualenv_remove(\"%s\") removes it)."), path, envname)
    }
    stop(sprintf("amedl: the installation failed while %s: %s\n(pip's output above says why.) %s",
                 step, conditionMessage(e), left), call. = FALSE)
  })
  finished <- TRUE
  py <- reticulate::virtualenv_python(envname)
  if (reticulate::py_available(initialize = FALSE) && is.null(.amedl_state$bridge)) {
    message("amedl: Python is already running in this R session; restart R to use the new environment.")
  }
  message("amedl: engine installed in ", dirname(dirname(py)))
  if (!identical(envname, .amedl_envname())) {
    message(sprintf("amedl: to use it, set options(amedl.envname = \"%s\") before the first amedl call", envname))
  }
  invisible(py)
}

# `source` of install_amedl_python(): an amedl checkout (normalised path) or another pip requirement.
.engine_source <- function(source) {
  how <- paste0(
    "The amedl engine is not on PyPI and the R package does not include it: it is installed from an amedl ",
    "checkout (the folder with pyproject.toml).\n",
    "  * in R: install_amedl_python(source = \"/path/to/amedl\")\n",
    "  * in a shell, in the checkout: bash scripts/setup install  ",
    "(makes .venv there and registers it as reticulate's virtual environment \"amedl\")")
  if (is.null(source)) stop("amedl: install_amedl_python() needs `source`. ", how, call. = FALSE)
  if (!is.character(source) || length(source) != 1L || is.na(source) || !nzchar(source)) {
    stop("amedl: `source` must be the path of an amedl checkout (or a pip requirement)", call. = FALSE)
  }
  if (dir.exists(path.expand(source))) {
    if (!file.exists(file.path(path.expand(source), "pyproject.toml"))) {
      stop(sprintf("amedl: %s has no pyproject.toml, so it is not an amedl checkout. %s", source, how), call. = FALSE)
    }
    return(normalizePath(source))
  }
  if (grepl("^amedl\\s*($|[\\[<>=!~;])", source)) {
    stop(sprintf("amedl: source = \"%s\" would ask PyPI for the engine. %s", source, how), call. = FALSE)
  }
  local <- !grepl("://|^[A-Za-z0-9_.-]+\\s*($|[\\[<>=!~;@])", source)
  if (local && !file.exists(path.expand(source))) {
    stop(sprintf("amedl: source: %s does not exist. %s", source, how), call. = FALSE)
  }
  if (local) normalizePath(source) else source
}

# R has its own BLAS loaded with global symbols (on Debian the slow reference
# BLAS). A torch imported into R's process then sends its matrix products to
# R's BLAS instead of its own and runs about ten times slower. Importing torch
# with RTLD_DEEPBIND makes its libraries use their own symbols first; a torch
# imported before (by reticulate::import("torch")) cannot be changed: warned once.
.import_torch_deepbind <- function() {
  linux <- identical(Sys.info()[["sysname"]], "Linux")
  if (!isTRUE(getOption("amedl.deepbind", linux))) return(invisible(FALSE))
  code <- paste(
    "import os, sys",
    "_amedl_status = 'unsupported'",
    "if 'torch' in sys.modules:",
    "    _amedl_status = 'imported before'",
    "elif hasattr(os, 'RTLD_DEEPBIND'):",
    "    _amedl_flags = sys.getdlopenflags()",
    "    sys.setdlopenflags(os.RTLD_NOW | os.RTLD_DEEPBIND)",
    "    try:",
    "        import torch",
    "        _amedl_status = 'deepbind'",
    "    except Exception:",
    "        _amedl_status = 'failed'",
    "    finally:",
    "        sys.setdlopenflags(_amedl_flags)",
    sep = "\n")
  status <- tryCatch(reticulate::py_run_string(code, local = TRUE)[["_amedl_status"]], error = function(e) "failed")
  if (identical(status, "deepbind")) .amedl_state$torch_deepbind <- TRUE
  if (identical(status, "imported before") && !isTRUE(.amedl_state$torch_deepbind) && !isTRUE(.amedl_state$deepbind_warned)) {
    .amedl_state$deepbind_warned <- TRUE
    warning(paste0(
      "amedl: torch was imported in this R session before amedl started its engine (e.g. by reticulate::import(\"torch\")), ",
      "so it was loaded without RTLD_DEEPBIND: its matrix products may go through R's BLAS, and training can be several ",
      "times slower (see ?amedl_engine).\n",
      "Fix: restart R and call amedl_engine() (or any amedl function) before anything imports torch; ",
      "reticulate::import(\"torch\") afterwards gets the same, fast torch. ",
      "options(amedl.deepbind = FALSE) turns this warning off (e.g. when R's BLAS is not the reference BLAS)."),
      call. = FALSE)
  }
  invisible(identical(status, "deepbind"))
}
