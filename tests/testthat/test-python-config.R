# Finding Python is reticulate's job; amedl checks what it found and says how to fix it.
# Each check runs in a fresh R session (Python can be started only once per session).

rscript <- function(code, env = character(0)) {
  f <- tempfile(fileext = ".R")
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
  expect_match(out, "install_amedl_python()", fixed = TRUE)
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
  expect_match(out, "-m pip install", fixed = TRUE)
  expect_match(out, "install_amedl_python()", fixed = TRUE)
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
  expect_error(amedl_options(n_latent = 4), "set n_latent with the argument of RunAMEDL")
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
