from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

import amedl

warnings.filterwarnings("ignore", category=FutureWarning)

#: The shared test datasets: $AMEDL_DATA_DIR, else ../shared/data beside the checkout.
DATA_DIR = Path(os.environ.get("AMEDL_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


#: Test modules that train full-size models on real data: collected first, so that with
#: several pytest-xdist workers (``--dist loadfile``) the longest file starts at once.
HEAVY_FIRST = ("test_shared_data.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in HEAVY_FIRST)  # stable: order kept otherwise


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
def data_dir() -> Path:
    """The folder of shared datasets; the test is skipped (with the reason) when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared datasets not found at {DATA_DIR} (../shared/data beside the checkout, or set AMEDL_DATA_DIR)")
    return DATA_DIR
