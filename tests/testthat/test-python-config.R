# Finding Python is reticulate's job; amedl checks what it found and says how to fix it.
# Each check runs in a fresh R session (Python can be started only once per session).

# In a fresh R session: the package under test (the source tree when it was loaded with
# pkgload, as on a developer's machine; else the installed package, as in R CMD check).
rscript <- function(code, env = character(0)) {
  f <- tempfile(fileext = ".R")
  src <- getNamespaceInfo(asNamespace("amedl"), "path")
  if (file.exists(file.path(src, "R", "python.R"))) {
    code <- c(sprintf("suppressMessages(pkgload::load_all(%s, quiet = TRUE, helpers = FALSE))", deparse(src)), code)
  }
  # RETICULATE_PYTHON= in `env` means: not set (reticulate takes an empty value for a Python);
  # run outside the checkout, whose pyproject.toml reticulate would look at
  unset <- if ("RETICULATE_PYTHON=" %in% env) "Sys.unsetenv('RETICULATE_PYTHON')"
  code <- c(unset, sprintf("setwd(%s)", deparse(tempdir())), code)
  writeLines(code, f)
  out <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), c("--vanilla", shQuote(f)),
                                  stdout = TRUE, stderr = TRUE, env = env))
  paste(out, collapse = "\n")
}

fit_tiny <- c(
  "m <- matrix(rpois(200, 3), 10, 20, dimnames = list(paste0('g', 1:10), paste0('c', 1:20)))",
  "r <- tryCatch(amedl::RunAMEDL(m, batch = rep(c('a', 'b'), 10)), error = function(e) conditionMessage(e))",
  "cat(r)")

test_that("amedl_python_config follows RETICULATE_PYTHON and sees the engine there", {
  py <- engine_python()
  skip_if(!nzchar(py), "no Python with the amedl engine configured")
  out <- rscript("cfg <- amedl::amedl_python_config(); cat(cfg$python, '|', !is.null(cfg$required_module_path), '|', cfg$forced)",
                 env = paste0("RETICULATE_PYTHON=", py))
  expect_identical(out, paste(py, "| TRUE | RETICULATE_PYTHON"))
})

test_that("a Python that does not exist gives an error naming it and the fix", {
  out <- rscript(fit_tiny, env = "RETICULATE_PYTHON=/no/such/python")
  expect_match(out, "amedl: no usable Python", fixed = TRUE)
  expect_match(out, "/no/such/python", fixed = TRUE)
  expect_match(out, "install_amedl_python(source = \"/path/to/amedl\")", fixed = TRUE)
  expect_match(out, "scripts/setup install", fixed = TRUE)
})

test_that("a Python without the engine gives an error saying how to install it", {
  py <- Sys.which("python3")
  skip_if(!nzchar(py), "no python3 on the PATH")
  venv <- tempfile("bare-venv-")
  st <- suppressWarnings(system2(py, c("-m", "venv", "--without-pip", shQuote(venv)), stdout = FALSE, stderr = FALSE))
  skip_if(st != 0, "python3 -m venv is not available")
  on.exit(unlink(venv, recursive = TRUE), add = TRUE)
  out <- rscript(fit_tiny, env = paste0("RETICULATE_PYTHON=", file.path(venv, "bin", "python")))
  expect_match(out, "the amedl engine is not installed in the Python at", fixed = TRUE)
  expect_match(out, file.path(venv, "bin", "python"), fixed = TRUE)
  # a virtual environment: pip there, PyTorch's CPU build from PyTorch's index, the engine from a checkout
  expect_match(out, "-m pip install \"torch==2.13.0\" --index-url https://download.pytorch.org/whl/cpu", fixed = TRUE)
  expect_match(out, "-m pip install \"numpy<2\" /path/to/amedl", fixed = TRUE)
  expect_match(out, "install_amedl_python(source = \"/path/to/amedl\")", fixed = TRUE)
  expect_false(grepl("install_amedl_python()", out, fixed = TRUE))  # its default installed nothing
})

test_that("a system Python without the engine gets a virtual environment suggested, not pip (PEP 668)", {
  py <- "/usr/bin/python3"
  skip_if(!file.exists(py), "no /usr/bin/python3")
  has <- suppressWarnings(system2(py, c("-c", shQuote("import sys; sys.exit(sys.prefix != sys.base_prefix)")), stdout = FALSE, stderr = FALSE))
  skip_if(has != 0, "/usr/bin/python3 is a virtual environment")
  out <- rscript(fit_tiny, env = paste0("RETICULATE_PYTHON=", py))
  skip_if(!grepl("the amedl engine is not installed", out, fixed = TRUE), "/usr/bin/python3 has the engine")
  expect_match(out, "It is not a virtual environment", fixed = TRUE)
  expect_match(out, sprintf("install_amedl_python(source = \"/path/to/amedl\", python = \"%s\")", py), fixed = TRUE)
  expect_match(out, sprintf("%s -m venv", py), fixed = TRUE)
  expect_false(grepl(sprintf("%s -m pip install", py), out, fixed = TRUE))
})

test_that("the hints name the environment amedl looks for", {
  withr_opt <- options(amedl.envname = "myenv")
  on.exit(options(withr_opt), add = TRUE)
  h <- amedl:::.fix_hint()
  expect_match(h, "makes the virtual environment \"myenv\"", fixed = TRUE)
  expect_match(h, "options(amedl.envname = \"myenv\"), so then set options(amedl.envname = \"amedl\")", fixed = TRUE)
  options(amedl.envname = NULL)
  expect_false(grepl("options(amedl.envname", amedl:::.fix_hint(), fixed = TRUE))
})

# The virtual environment of the engine's Python (skips where there is none).
engine_venv <- function() {
  py <- engine_python()
  skip_if(!nzchar(py), "no Python with the amedl engine configured")
  venv <- dirname(dirname(py))
  skip_if(!file.exists(file.path(venv, "pyvenv.cfg")), "the engine's Python is not in a virtual environment")
  venv
}

# A folder that holds a virtual environment "amedl" pointing at the engine's (as scripts/setup registers it).
workon_home_with_engine <- function() {
  venv <- engine_venv()
  home <- tempfile("workon-")
  dir.create(home)
  file.symlink(venv, file.path(home, "amedl"))
  list(home = home, venv = venv)
}

bare_venv <- function() {
  py <- Sys.which("python3")
  skip_if(!nzchar(py), "no python3 on the PATH")
  venv <- tempfile("bare-venv-")
  st <- suppressWarnings(system2(py, c("-m", "venv", "--without-pip", shQuote(venv)), stdout = FALSE, stderr = FALSE))
  skip_if(st != 0, "python3 -m venv is not available")
  venv
}

report <- c(
  "cfg <- amedl::amedl_python_config()",
  "a <- amedl::amedl_available()",
  "cat('config:', cfg$python, '\\n')",
  "cat('available:', isTRUE(a), '\\n')",
  "if (!isTRUE(a)) cat(attr(a, 'reason'), '\\n') else cat('running:', reticulate::py_config()$python, '\\n')")

test_that("without a choice, the virtual environment \"amedl\" is used, and the engine runs where the config says", {
  w <- workon_home_with_engine()
  on.exit(unlink(w$home, recursive = TRUE), add = TRUE)
  out <- rscript(report, env = c("RETICULATE_PYTHON=", paste0("WORKON_HOME=", w$home)))
  config <- sub("^config: (\\S+).*", "\\1", out)
  expect_true(config %in% file.path(c(file.path(w$home, "amedl"), normalizePath(w$venv)), "bin", "python"))
  expect_match(out, "available: TRUE", fixed = TRUE)
  expect_match(out, paste("running:", config), fixed = TRUE)
})

test_that("reticulate::use_python() / use_virtualenv() before the first call wins over the environment \"amedl\"", {
  w <- workon_home_with_engine()
  on.exit(unlink(w$home, recursive = TRUE), add = TRUE)
  venv <- bare_venv()  # the user's choice, without the engine: amedl must say so, not switch to "amedl"
  on.exit(unlink(venv, recursive = TRUE), add = TRUE)
  py <- file.path(venv, "bin", "python")
  for (choose in c(sprintf("reticulate::use_python('%s', required = TRUE)", py),
                   sprintf("reticulate::use_virtualenv('%s', required = TRUE)", venv))) {
    out <- rscript(c(choose, report), env = c("RETICULATE_PYTHON=", paste0("WORKON_HOME=", w$home)))
    expect_match(out, paste("config:", py), fixed = TRUE)
    expect_match(out, "available: FALSE", fixed = TRUE)
    expect_match(out, sprintf("the amedl engine is not installed in the Python at %s (use_python", py), fixed = TRUE)
    expect_false(grepl("superseded", out, fixed = TRUE))  # reticulate's warning when amedl overrode the choice
  }
})

test_that("options(amedl.envname = <path>) is the Python the config reports and the engine runs in", {
  venv <- engine_venv()
  home <- tempfile("workon-empty-")
  dir.create(home)
  on.exit(unlink(home, recursive = TRUE), add = TRUE)
  out <- rscript(c(sprintf("options(amedl.envname = '%s')", venv), report),
                 env = c("RETICULATE_PYTHON=", paste0("WORKON_HOME=", home)))
  expect_match(out, paste("config:", file.path(venv, "bin", "python")), fixed = TRUE)
  expect_match(out, paste("running:", file.path(venv, "bin", "python")), fixed = TRUE)
})

test_that("a torch imported through reticulate before the engine is warned about, once", {
  skip_if(!identical(Sys.info()[["sysname"]], "Linux"), "RTLD_DEEPBIND is Linux's")
  py <- engine_python()
  skip_if(!nzchar(py), "no Python with the amedl engine configured")
  code <- c("invisible(reticulate::import('torch'))",
            "w <- character(0)",
            "withCallingHandlers({ amedl::amedl_engine(); assign('bridge', NULL, envir = amedl:::.amedl_state); amedl::amedl_engine() },",
            "  warning = function(c) { w <<- c(w, conditionMessage(c)); invokeRestart('muffleWarning') })",
            "cat('warnings:', length(w), '\\n'); cat(w, sep = '\\n')")
  out <- rscript(code, env = paste0("RETICULATE_PYTHON=", py))
  expect_match(out, "warnings: 1", fixed = TRUE)
  expect_match(out, "torch was imported in this R session before amedl started its engine", fixed = TRUE)
  expect_match(out, "restart R and call amedl_engine()", fixed = TRUE)
  # amedl first: no warning, and torch imported afterwards is the same module
  out <- rscript(c("w <- 0", "withCallingHandlers(amedl::amedl_engine(), warning = function(c) w <<- w + 1)",
                   "invisible(reticulate::import('torch'))", "cat('warnings:', w, '\\n')"),
                 env = paste0("RETICULATE_PYTHON=", py))
  expect_match(out, "warnings: 0", fixed = TRUE)
})

test_that("install_amedl_python() needs an amedl checkout: the engine is not on PyPI", {
  home <- tempfile("workon-")
  dir.create(home)
  on.exit(unlink(home, recursive = TRUE), add = TRUE)
  old <- Sys.getenv("WORKON_HOME", NA)
  Sys.setenv(WORKON_HOME = home)
  on.exit(if (is.na(old)) Sys.unsetenv("WORKON_HOME") else Sys.setenv(WORKON_HOME = old), add = TRUE)
  for (src in list(NULL, "amedl", "amedl==0.1")) {
    err <- tryCatch(install_amedl_python(source = src), error = conditionMessage)
    expect_match(err, "not on PyPI", fixed = TRUE)
    expect_match(err, "install_amedl_python(source = \"/path/to/amedl\")", fixed = TRUE)
    expect_match(err, "bash scripts/setup install", fixed = TRUE)
  }
  expect_error(install_amedl_python(source = tempdir()), "has no pyproject.toml")
  expect_error(install_amedl_python(source = file.path(home, "no-such-checkout")), "does not exist")
  expect_identical(list.files(home), character(0))  # nothing was made
  expect_identical(formals(install_amedl_python)$torch_index, "https://download.pytorch.org/whl/cpu")
})

test_that("install_amedl_python() removes a virtual environment it made when the installation fails", {
  py <- Sys.which("python3")
  skip_if(!nzchar(py), "no python3 on the PATH")
  home <- tempfile("workon-")
  dir.create(home)
  links <- tempfile("no-wheels-")
  dir.create(links)
  checkout <- tempfile("checkout-")
  dir.create(checkout)
  writeLines("this is [not toml", file.path(checkout, "pyproject.toml"))
  on.exit(unlink(c(home, links, checkout), recursive = TRUE), add = TRUE)
  # offline: pip reads no configuration and has no index, so nothing can be installed
  vars <- c(WORKON_HOME = home, PIP_CONFIG_FILE = "/dev/null", PIP_NO_INDEX = "1", PIP_FIND_LINKS = links)
  old <- Sys.getenv(names(vars), NA, names = TRUE)
  do.call(Sys.setenv, as.list(vars))
  on.exit(for (n in names(old)) if (is.na(old[[n]])) Sys.unsetenv(n) else do.call(Sys.setenv, as.list(old[n])), add = TRUE)
  err <- NULL
  capture.output(err <- tryCatch(install_amedl_python(source = checkout, python = py, torch = NULL), error = conditionMessage),
                 type = "output")
  skip_if(is.null(err), "the installation did not fail")
  expect_match(err, "amedl: the installation failed while", fixed = TRUE)
  expect_match(err, "made by this call, was removed", fixed = TRUE)
  expect_false(file.exists(file.path(home, "amedl")))
  # an environment that existed before is left, and the error says so
  st <- suppressWarnings(system2(py, c("-m", "venv", "--without-pip", shQuote(file.path(home, "mine"))), stdout = FALSE, stderr = FALSE))
  skip_if(st != 0, "python3 -m venv is not available")
  capture.output(err <- suppressWarnings(tryCatch(install_amedl_python("mine", source = checkout, torch = NULL),
                                                   error = conditionMessage)), type = "output")
  expect_match(err, "existed before this call and was left as it is", fixed = TRUE)
  expect_true(file.exists(file.path(home, "mine", "pyvenv.cfg")))
})

test_that("the engine runs in the configured Python, with a NumPy reticulate can load", {
  skip_if_no_engine()
  info <- amedl_engine()$engine_info()
  py <- engine_python()
  np <- system2(py, c("-c", shQuote("import numpy; print(numpy.__version__)")), stdout = TRUE)
  expect_identical(info$numpy, np)  # the version of the Python reticulate chose, not just any
  expect_identical(normalizePath(info$executable), normalizePath(py))
  expect_true(all(vapply(info, is.character, NA)))  # was: torch's version a Python TorchVersion object
  if (utils::packageVersion("reticulate") < "1.38") expect_true(numeric_version(info$numpy) < "2")
})

test_that("amedl_options checks and types the engine settings", {
  o <- amedl_options(lr = 1e-3, batch_size = 512, hidden = c(64, 32), patience = Inf, re_patience = 10, fe_decoder = "tied")
  expect_s3_class(o, "amedl_options")
  expect_identical(o$batch_size, 512L)
  expect_identical(o$hidden, list(64L, 32L))
  expect_true("patience" %in% names(o) && is.null(o$patience))  # Inf: no early stopping (None)
  expect_identical(o$re_patience, 10L)
  expect_identical(o$fe_decoder, "tied")
  expect_identical(length(amedl_options()), 0L)
  expect_error(amedl_options(lr = -1), "`lr` must be a positive number")
  expect_error(amedl_options(batch_size = 2.5), "`batch_size` must be a whole number >= 2")
  expect_error(amedl_options(scaling = "log"), "`scaling` must be one of \"zscore\", \"minmax\"")
  expect_error(amedl_options(hidden = c(64, 0)), "`hidden` must be one or more whole numbers >= 1")
  expect_error(amedl_options(1e-3, 2, 3, 4, 5, "zscore", "cpu", 7), "needs a name")
  expect_error(amedl_options(n_latent = 4), "set n_latent with RunAMEDL\\(\\)'s argument `n_latent`, not as a setting")
  expect_error(amedl_options(max_epochs = 4), "set max_epochs with RunAMEDL\\(\\)'s argument `epochs`")
  expect_error(amedl_options(fe_adv_weight = NA), "`fe_adv_weight` must be a number")
  expect_output(print(o), "batch_size = 512")
  expect_identical(amedl_options(threads = 2)$threads, 2L)
  for (bad in list(0, 2.5, -1, Inf, NA, "4", c(1, 2))) {
    expect_error(amedl_options(threads = bad), "`threads` must be a whole number >= 1")
  }
})

test_that("amedl_options checks the names of further settings against the engine's AMEDLConfig", {
  skip_if_no_engine()
  expect_error(amedl_options(fe_adv_wieght = 2),
               "unknown engine setting\\(s\\): 'fe_adv_wieght' \\(did you mean 'fe_adv_weight'\\?\\)")
  err <- tryCatch(amedl_options(lr = 1e-3, learning_rate = 1, fe_adv_weight = 2), error = conditionMessage)
  expect_match(err, "'learning_rate'")
  expect_false(grepl("'fe_adv_weight'", sub("The settings are.*", "", err)))  # a known name is not reported
  expect_match(err, "the fields of the engine's amedl.AMEDLConfig: .*fe_adv_weight.*re_patience")
  # the field names are the engine's own
  fields <- reticulate::py_eval("[f.name for f in __import__('dataclasses').fields(__import__('amedl').AMEDLConfig)]")
  expect_setequal(amedl:::.engine_setting_names(), unlist(fields))
  expect_identical(amedl_options(re_patience = 5, fe_adv_weight = 2)$fe_adv_weight, 2L)
})
