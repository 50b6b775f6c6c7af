"""amedl: autoencoder mixed-effects deep learning (aMEDL) for single-cell RNA-seq.

Two complementary latents per cell: a batch-invariant fixed-effects (FE)
latent and a batch-specific random-effects (RE) latent.
"""
__version__ = "0.1.0"

from . import baselines, benchmark, datasets, io, metrics, pl, tl  # noqa: E402
from .config import AMEDLConfig, make_config  # noqa: E402
from .data import AMEDLInputError  # noqa: E402
from .model import AMEDL  # noqa: E402

__all__ = ["AMEDL", "AMEDLConfig", "AMEDLInputError", "baselines", "benchmark", "datasets", "io", "metrics", "make_config", "pl", "tl", "__version__"]
