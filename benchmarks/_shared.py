"""The shared real datasets for the benchmark scripts: $AMEDL_DATA_DIR, else ../shared/data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import anndata as ad

from amedl.datasets import SHARED

DATA_DIR = Path(os.environ.get("AMEDL_DATA_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def load_shared(name: str) -> tuple[ad.AnnData, str, str]:
    """``(adata, batch_key, label_key)`` of a shared dataset (``cellbench``, ``symphony``, ``kang``)."""
    if name not in SHARED:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(SHARED)}")
    fname, batch_key, label_key = SHARED[name]
    path = DATA_DIR.resolve() / fname
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; set AMEDL_DATA_DIR to the folder holding the shared datasets")
    return ad.read_h5ad(path), batch_key, label_key
