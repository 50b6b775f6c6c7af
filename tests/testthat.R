# R tests of the amedl package: `cd tests && Rscript testthat.R` (scripts/run-tests
# sets RETICULATE_PYTHON to the checkout's .venv) or R CMD check.
library(testthat)
library(amedl)

test_check("amedl")
