# Nothing lost, nothing silent (issue 16): model folders, and errors in R's words.

test_that("model_dir never replaces a folder that is not an amedl model, and a model only with overwrite", {
  skip_if_no_engine()
  s <- sim_counts(n_cells = 120, n_genes = 60)
  dir <- tempfile("amedl-project-")
  dir.create(dir)
  writeLines("my notes", file.path(dir, "notes.txt"))
  expect_error(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, model_dir = dir), FAST)),
               "is not an amedl model.*never replaces it")
  expect_identical(list.files(dir, all.files = TRUE, no.. = TRUE), "notes.txt")
  expect_identical(readLines(file.path(dir, "notes.txt")), "my notes")

  model <- tempfile("amedl-model-")
  fit <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch, model_dir = model), FAST))
  expect_true(file.exists(file.path(model, ".amedl-model")))
  # a folder holding a model is mapped onto, never retrained or rewritten, without overwrite = TRUE
  before <- tools::md5sum(list.files(model, full.names = TRUE))
  mapped <- suppressWarnings(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, model_dir = model), FAST)))
  expect_equal(mapped$fe, fit$fe, tolerance = 1e-5)
  expect_identical(tools::md5sum(list.files(model, full.names = TRUE)), before)
  again <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch, model_dir = model, overwrite = TRUE, seed = 1), FAST))
  expect_false(isTRUE(all.equal(again$fe, fit$fe)))
  expect_error(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, model_dir = model, overwrite = NA), FAST)),
               "`overwrite` must be TRUE or FALSE")
  unlink(c(dir, model), recursive = TRUE)
})

test_that("errors about the data speak R: the cell metadata and subset(), not adata.obs or scanpy", {
  s <- sim_counts(n_cells = 40, n_genes = 20)
  norm <- as.matrix(s$counts) / 3
  expect_error(RunAMEDL(norm, batch = s$batch), "non-integer value\\(s\\).*aMEDL needs raw counts")
  empty <- as.matrix(s$counts); empty[, 5] <- 0
  expect_error(RunAMEDL(empty, batch = s$batch), "1 cell\\(s\\) of the count matrix have no counts at all \\(e.g. 'cell5'\\); remove them first")
  lonely <- as.character(s$batch); lonely[1] <- "only_one"
  err <- tryCatch(RunAMEDL(s$counts, batch = lonely), error = conditionMessage)
  expect_match(err, "1 batch\\(es\\) of batch have fewer than 2 cells \\('only_one'\\).*subset\\(\\)")
  expect_false(grepl("adata|sc\\.pp", err))

  sce <- amedl:::.amedl_repair_sce(muscat_sce())
  small <- sce[, seq(1, ncol(sce), by = 8)]
  small$sample_id <- as.character(small$sample_id)
  small$sample_id[1] <- "lonely"
  err <- tryCatch(RunAMEDL(small, batch = "sample_id"), error = conditionMessage)
  expect_match(err, "of column 'sample_id' of the cell metadata have fewer than 2 cells \\('lonely'\\)")
  zero <- small[, -1]
  SummarizedExperiment::assay(zero, "counts")[, 3] <- 0
  expect_error(RunAMEDL(zero, batch = "sample_id"), "sce <- sce\\[, Matrix::colSums\\(assay\\(sce, \"counts\"\\)\\) > 0\\]")
})

test_that("the batch columns of many values are named briefly", {
  s <- sim_counts(n_cells = 60, n_genes = 20)
  err <- tryCatch(RunAMEDL(s$counts, batch = paste0("donor", seq_len(60))), error = conditionMessage)
  expect_match(err, "60 batch\\(es\\).*and 55 more")
  expect_lt(nchar(err), 400)
})

test_that("options(amedl.threads) reaches the engine's threads setting", {
  skip_if_no_engine()
  s <- sim_counts(n_cells = 120, n_genes = 60)
  old <- options(amedl.threads = 1L)
  on.exit(options(old))
  fit <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch), FAST))
  expect_identical(fit$model$config$threads, 1L)
  expect_identical(reticulate::import("torch")$get_num_threads(), 1L)
  fit2 <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch, settings = amedl_options(threads = 1)), FAST))
  expect_identical(fit2$fe, fit$fe)  # same seed and thread count: the same latents
})
