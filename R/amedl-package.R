#' amedl: autoencoder mixed-effects deep learning for single-cell RNA-seq
#'
#' `RunAMEDL()` adds two latents per cell to a Seurat object
#' (reductions `amedl_fe`, `amedl_re`), a SingleCellExperiment (reducedDims
#' `AMEDL_FE`, `AMEDL_RE`) or returns them for a count matrix: a
#' batch-invariant fixed-effects latent and a batch-specific random-effects
#' latent. `AMEDLCounterfactual()` decodes every cell as if it came from a
#' chosen batch. The models are trained by the amedl Python engine through
#' reticulate; see [amedl_python_config()] and [install_amedl_python()].
#'
#' @keywords internal
"_PACKAGE"
