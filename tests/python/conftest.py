from __future__ import annotations

import warnings

import pytest

import amedl
from amedl.datasets import shared_data_dir

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def sim():
    """A small simulated dataset: 3 batches, 4 cell types, 300 genes."""
    return amedl.datasets.simulate(n_cells=600, n_genes=300, n_batches=3, n_cell_types=4, seed=1)


@pytest.fixture(scope="session")
def small_model(sim):
    """FE, RE and AE trained briefly on the simulated data (shared by read-only tests)."""
    m = amedl.AMEDL(sim, "batch", n_top_genes=200, hidden=(64, 32), n_latent=8, adversary_hidden=(64, 32))
    m.fit(seed=0, max_epochs=8, progress=False, kinds=("fe", "re", "ae"))
    return m


@pytest.fixture(scope="session")
def data_dir():
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared datasets not found (../shared/data beside the checkout, or set AMEDL_DATA_DIR)")
    return d
