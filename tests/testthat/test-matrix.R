test_that("the matrix method returns both latents with cell names, reproducibly from the seed", {
  skip_if_no_engine()
  s <- sim_counts()
  fit <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch, seed = 3), FAST))
  expect_named(fit, c("fe", "re", "model", "params"), ignore.order = TRUE)
  for (k in c("fe", "re")) {
    expect_true(is.matrix(fit[[k]]))
    expect_equal(dim(fit[[k]]), c(ncol(s$counts), 8L))
    expect_identical(rownames(fit[[k]]), colnames(s$counts))
    expect_true(all(is.finite(fit[[k]])))
  }
  expect_false(isTRUE(all.equal(fit$fe, fit$re)))
  expect_setequal(fit$params$batches, levels(s$batch))
  expect_equal(fit$params$seed, 3L)
  # same seed, same latents (CPU); a dense matrix gives the same as the sparse one
  again <- do.call(RunAMEDL, c(list(as.matrix(s$counts), batch = as.character(s$batch), seed = 3), FAST))
  expect_equal(again$fe, fit$fe, tolerance = 1e-6)
  expect_equal(again$re, fit$re, tolerance = 1e-6)
})

test_that("features restrict the genes and a counterfactual comes back for a matrix", {
  skip_if_no_engine()
  s <- sim_counts()
  feats <- rownames(s$counts)[1:60]
  fit <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch, features = feats), FAST))
  expect_setequal(fit$params$genes, feats)
  cf <- AMEDLCounterfactual(s$counts, batch = "b2", model = fit$model, batch_of_cells = s$batch)
  expect_equal(dim(cf), c(60L, ncol(s$counts)))
  expect_identical(colnames(cf), colnames(s$counts))
  expect_setequal(rownames(cf), feats)
  expect_true(all(is.finite(cf)))
  expect_error(AMEDLCounterfactual(s$counts, batch = "b9", model = fit$model, batch_of_cells = s$batch),
               "unknown batch 'b9'; the model knows: b1, b2, b3")
})

test_that("engine settings pass through `settings`, with clear errors for bad ones", {
  skip_if_no_engine()
  s <- sim_counts()
  fit <- do.call(RunAMEDL, c(list(s$counts, batch = s$batch, settings = amedl_options(batch_size = 64, lr = 2e-3, patience = Inf)), FAST))
  cfg <- fit$model$config
  expect_identical(cfg$batch_size, 64L)
  expect_equal(cfg$lr, 2e-3)
  expect_null(cfg$patience)
  expect_equal(fit$params$settings$batch_size, 64)
  expect_error(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, settings = list(learning_rate = 1)), FAST)),
               "^unknown engine setting\\(s\\): 'learning_rate'\\. The settings are the fields of the engine's amedl.AMEDLConfig: .*batch_size")
  expect_error(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, settings = list(batch_size = 2.5)), FAST)),
               "`batch_size` must be a whole number >= 2")
  expect_error(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, settings = list(1e-3)), FAST)),
               "`settings` must be amedl_options\\(\\.\\.\\.\\) or a named list")
  expect_error(do.call(RunAMEDL, c(list(s$counts, batch = s$batch, settings = list(n_latent = 4)), FAST)),
               "set n_latent with RunAMEDL\\(\\)'s argument `n_latent`")
})
