# The vignette (vignettes/amedl.Rmd) builds where the engine is missing, its code shown unrun,
# and its tangled script (knitr::purl(), which R CMD build writes to inst/doc/amedl.R) keeps
# every chunk.

vignette_source <- function() {
  for (p in c(file.path(testthat::test_path(), "..", "..", "vignettes", "amedl.Rmd"),
              system.file("doc", "amedl.Rmd", package = "amedl"))) {
    if (nzchar(p) && file.exists(p)) return(normalizePath(p))
  }
  skip("the vignette source (vignettes/amedl.Rmd, or doc/amedl.Rmd of the installed package) is not found")
}

test_that("knitr::purl() keeps the Kang section's code, uncommented, without errors", {
  skip_if_no_pkg("knitr")
  rmd <- vignette_source()
  out <- tempfile(fileext = ".R")
  # (was: "object 'have_engine' not found" five times, and the Kang chunks left out)
  msgs <- utils::capture.output(invisible(knitr::purl(rmd, output = out, quiet = TRUE)), type = "message")
  expect_false(any(grepl("Error|not found", msgs)), info = paste(msgs, collapse = "\n"))
  code <- readLines(out)
  live <- code[!grepl("^\\s*#", code)]
  expect_gte(sum(grepl("AMEDLBatchEffects(", live, fixed = TRUE)), 3L)
  expect_true(any(grepl("load(kang_path", live, fixed = TRUE)))
  expect_true(any(grepl("observed_lfc", live, fixed = TRUE)))
  expect_silent(parse(out))
})

test_that("the vignette knits without the engine: code shown unrun, the engine named as the reason", {
  skip_if_no_pkg("knitr")
  rmd <- vignette_source()
  dir <- tempfile("vignette")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE), add = TRUE)
  file.copy(rmd, file.path(dir, "amedl.Rmd"))
  script <- file.path(dir, "knit.R")
  writeLines(c(sprintf("setwd(%s)", deparse(dir)), 'knitr::knit("amedl.Rmd", output = "amedl.md", quiet = TRUE)'), script)
  # a Python that does not exist: amedl_available() is FALSE, as on a build machine without the engine
  env <- c("RETICULATE_PYTHON=/nonexistent/amedl-test/python",
           paste0("R_LIBS=", paste(.libPaths(), collapse = .Platform$path.sep)))
  log <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), shQuote(script), stdout = TRUE, stderr = TRUE, env = env))
  status <- attr(log, "status")
  # (was: "object 'data_note' not found" at the first inline `r data_note`)
  expect_true(is.null(status) || status == 0L, info = paste(log, collapse = "\n"))
  md <- paste(readLines(file.path(dir, "amedl.md")), collapse = "\n")
  expect_match(md, "The amedl Python engine was not available when this vignette was built")
  expect_match(md, "AMEDLBatchEffects(kang", fixed = TRUE)  # the code is shown
  expect_match(md, "this build trains only 30\\s+epochs")
  # the Kang section names the engine as the reason (was: "The Kang data were not found")
  expect_match(md, "engine was not available when this vignette was built, so the code of this\\s+section did not run")
  expect_no_match(md, "Kang data were not found")
  expect_no_match(md, "This build used|In this build")
})
