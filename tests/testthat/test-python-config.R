# Finding Python: the order of the settings, and errors that say how to fix things.
# Each check runs in a fresh R session (Python can be started only once per session).

rscript <- function(code, env = character(0)) {
  f <- tempfile(fileext = ".R")
  writeLines(code, f)
  out <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), c("--vanilla", shQuote(f)),
                                  stdout = TRUE, stderr = TRUE, env = env))
  paste(out, collapse = "\n")
}

test_that("amedl_python_config lists the places in order and honours the settings", {
  old <- options(amedl.python = NULL)
  on.exit(options(old), add = TRUE)
  withr_env <- function(vars, code) {
    olds <- Sys.getenv(names(vars), unset = NA)
    do.call(Sys.setenv, as.list(vars))
    on.exit(for (n in names(olds)) if (is.na(olds[[n]])) Sys.unsetenv(n) else do.call(Sys.setenv, stats::setNames(list(olds[[n]]), n)))
    force(code)
  }
  cfg <- withr_env(c(AMEDL_PYTHON = "", RETICULATE_PYTHON = ""), amedl_python_config())
  expect_s3_class(cfg, "data.frame")
  expect_equal(cfg$source[1:3], c("option amedl.python", "environment variable AMEDL_PYTHON", "environment variable RETICULATE_PYTHON"))
  expect_match(cfg$source[4], "checkout .venv")
  py <- Sys.which("python3")
  skip_if(!nzchar(py), "no python3 on the PATH")
  cfg2 <- withr_env(c(AMEDL_PYTHON = "", RETICULATE_PYTHON = unname(py)), amedl_python_config())
  expect_equal(attr(cfg2, "chosen"), 3L)
  cfg3 <- withr_env(c(AMEDL_PYTHON = unname(py), RETICULATE_PYTHON = "/elsewhere/python"), amedl_python_config())
  expect_equal(attr(cfg3, "chosen"), 2L)
  options(amedl.python = "/no/such/venv")
  cfg4 <- amedl_python_config()
  expect_equal(attr(cfg4, "chosen"), 1L)
  expect_equal(cfg4$python[1], "/no/such/venv")
})

test_that("a Python that does not exist gives an error naming it and the fix", {
  out <- rscript(c(
    "options(amedl.python = '/no/such/python')",
    "m <- matrix(rpois(200, 3), 10, 20, dimnames = list(paste0('g', 1:10), paste0('c', 1:20)))",
    "r <- tryCatch(amedl::RunAMEDL(m, batch = rep(c('a', 'b'), 10)), error = function(e) conditionMessage(e))",
    "cat(r)"))
  expect_match(out, "option amedl.python points to /no/such/python, which does not exist")
  expect_match(out, "install_amedl_python()", fixed = TRUE)
  expect_match(out, "scripts/setup install", fixed = TRUE)
})

test_that("a Python without the engine gives an error saying how to install it", {
  py <- Sys.which("python3")
  skip_if(!nzchar(py), "no python3 on the PATH")
  venv <- tempfile("bare-venv-")
  st <- suppressWarnings(system2(py, c("-m", "venv", "--without-pip", shQuote(venv)), stdout = FALSE, stderr = FALSE))
  skip_if(st != 0, "python3 -m venv is not available")
  on.exit(unlink(venv, recursive = TRUE), add = TRUE)
  out <- rscript(c(
    "m <- matrix(rpois(200, 3), 10, 20, dimnames = list(paste0('g', 1:10), paste0('c', 1:20)))",
    "r <- tryCatch(amedl::RunAMEDL(m, batch = rep(c('a', 'b'), 10)), error = function(e) conditionMessage(e))",
    "cat(r)"), env = c(paste0("AMEDL_PYTHON=", venv), "RETICULATE_PYTHON="))
  expect_match(out, "the amedl engine is not installed in the Python at", fixed = TRUE)
  expect_match(out, "environment variable AMEDL_PYTHON", fixed = TRUE)
  expect_match(out, "-m pip install", fixed = TRUE)
  expect_match(out, "install_amedl_python()", fixed = TRUE)
})

test_that("the engine starts and reports its versions", {
  skip_if_no_engine()
  info <- amedl_engine()$engine_info()
  expect_true(nzchar(info$amedl))
  expect_match(info$numpy, "^1\\.|^[2-9]")
  if (utils::packageVersion("reticulate") < "1.38") expect_match(info$numpy, "^1\\.")
})
