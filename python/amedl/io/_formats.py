"""The file formats amedl reads and writes (light: no numerical libraries imported)."""
from __future__ import annotations

from ..errors import AMEDLInputError

#: R files: ``.rds`` (one object) and ``.rda`` / ``.RData`` (``save``/``load``).
R_SUFFIXES = (".rds", ".rda", ".rdata")
#: Every suffix :func:`amedl.io.read` and :func:`amedl.io.write` accept (lower case).
SUFFIXES = (".h5ad",) + R_SUFFIXES
#: The R object kinds: a Seurat object or a SingleCellExperiment.
KINDS = ("seurat", "sce")
FORMATS_TEXT = ".h5ad, or .rds / .rda / .RData holding a Seurat object or a SingleCellExperiment"


class RConversionError(AMEDLInputError):
    """An R object or file that cannot be converted (the message says why and what to do)."""
