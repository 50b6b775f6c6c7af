"""Scaling out and beyond memory: data-parallel training on torch.distributed (2 gloo
processes on localhost) and out-of-core training from an on-disk .h5ad."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import amedl
from amedl import distributed
from amedl.metrics import silhouette_batch

#: Small networks, few genes: each fit takes seconds on one thread.
SMALL = dict(n_top_genes=200, hidden=(64, 32), n_latent=8, adversary_hidden=(64, 32), threads=1)
#: Early stopping that fires within the budget, so that the ranks have something to agree on.
STOPPING = dict(patience=2, re_patience=2, min_epochs=1, fe_burn_in_steps=20)
ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    import anndata as ad
    import amedl
    from amedl import distributed

    distributed.init_from_env()
    data, out, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    m = amedl.AMEDL(ad.read_h5ad(data), "batch", **settings)
    m.fit(seed=0, max_epochs=30, progress=False)
    info = {"rank": distributed.rank(), "world": distributed.world_size(),
            "epochs": {k: v["epochs_run"] for k, v in m.train_info.items()},
            "epochs_per_rank": {k: v["epochs_per_rank"] for k, v in m.train_info.items()}}
    with open(f"{out}/rank{distributed.rank()}.json", "w") as fh:
        json.dump(info, fh)
    if distributed.rank() == 0:
        m.save(f"{out}/model")
    distributed.shutdown()
    """
)


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "python"), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    a = amedl.datasets.simulate(n_cells=900, n_genes=300, n_batches=3, n_cell_types=4, seed=3)
    path = tmp_path_factory.mktemp("scale") / "sim.h5ad"
    a.write_h5ad(path)
    return path


def test_two_gloo_processes_match_one(sim_file, tmp_path):
    """2 ranks (torchrun's launcher, gloo): a valid model whose latents integrate as the
    single-process fit does, and every rank stops at the same epoch."""
    (tmp_path / "ddp_worker.py").write_text(WORKER)
    settings = {**SMALL, **STOPPING}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from amedl.distributed import launch; "
         "sys.exit(launch(sys.argv[1:], 2, module='ddp_worker'))", str(sim_file), str(tmp_path), json.dumps(settings)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["epochs"] == ranks[1]["epochs"]
    for kind in ("fe", "re"):
        assert ranks[0]["epochs_per_rank"][kind] == [ranks[0]["epochs"][kind]] * 2
    assert min(ranks[0]["epochs"].values()) < 30, ranks[0]  # early stopping fired (and was agreed on)

    adata = ad.read_h5ad(sim_file)
    ddp = amedl.AMEDL.load(tmp_path / "model", threads=1)
    one = amedl.AMEDL(adata, "batch", **settings).fit(seed=0, max_epochs=30, progress=False)
    assert ddp.genes == one.genes
    for kind in ("fe", "re"):
        z_ddp, z_one = ddp.latent(adata, kind=kind), one.latent(adata, kind=kind)
        assert np.isfinite(z_ddp).all() and z_ddp.std(0).min() > 1e-3
        asw_ddp, asw_one = silhouette_batch(z_ddp, adata.obs["batch"]), silhouette_batch(z_one, adata.obs["batch"])
        assert abs(asw_ddp - asw_one) <= 0.03, (kind, asw_ddp, asw_one)


def test_stratified_shards_cover_every_batch():
    codes = np.repeat([0, 1, 2], [50, 7, 23])
    rows = np.arange(len(codes))
    shards = [distributed.stratified_shard(rows, codes, r, 3, np.random.default_rng(5)) for r in range(3)]
    assert {len(s) for s in shards} == {len(rows) // 3}
    assert len(np.unique(np.concatenate(shards))) == 3 * (len(rows) // 3)  # disjoint
    for s in shards:
        assert set(codes[s]) == {0, 1, 2}
        assert abs(np.sum(codes[s] == 1) - 7 / 3) < 1.01


def test_launch_refuses_bad_process_counts():
    with pytest.raises(amedl.AMEDLConfigError, match="whole number >= 1"):
        distributed.launch(["fit"], 0)
    from amedl.cli import main

    assert main(["fit", "x.h5ad", "--batch-key", "b", "--out", "o.h5ad", "--nproc", "0"]) == 2
