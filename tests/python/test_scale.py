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
#: Early stopping that fires within the budget, so that the ranks have something to agree on (the
#: single all-layer adversary, unbalanced: the default's balanced game keeps improving for 30 epochs here).
STOPPING = dict(patience=2, re_patience=2, min_epochs=1, fe_burn_in_steps=20, adversary_input="all", adversary_clusters=None,
                fe_cluster_weight=0.0, fe_depth_weight=0.0)
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


#: The default's latent adversary balanced over latent clusters, with the pull to their centroids (the
#: k-means is all-reduced), trained the whole budget: the balanced game stops at very different epochs
#: from seed to seed.
BALANCED = dict(adversary_clusters=4, patience=None, re_patience=None)


@pytest.mark.parametrize("extra", [STOPPING, BALANCED], ids=["default", "balanced"])
def test_two_gloo_processes_match_one(sim_file, tmp_path, extra):
    """2 ranks (torchrun's launcher, gloo): a valid model whose latents integrate as the
    single-process fit does, and every rank stops at the same epoch."""
    (tmp_path / "ddp_worker.py").write_text(WORKER)
    settings = {**SMALL, **extra}
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
    if extra is STOPPING:
        assert min(ranks[0]["epochs"].values()) < 30, ranks[0]  # early stopping fired (and was agreed on)

    adata = ad.read_h5ad(sim_file)
    ddp = amedl.AMEDL.load(tmp_path / "model", threads=1)
    one = amedl.AMEDL(adata, "batch", **settings).fit(seed=0, max_epochs=30, progress=False)
    assert ddp.genes == one.genes
    assert (amedl.tl.record(ddp)["processes"], amedl.tl.record(one)["processes"]) == (2, 1)  # (in uns['amedl'])
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


FAILING_RANK = textwrap.dedent(
    """
    import os, signal, sys, time
    from amedl.cli import main

    rank, how = int(os.environ["RANK"]), os.environ["FAILING_HOW"]
    if how == "data":  # amedl fit itself: the same error in the data on every rank
        sys.exit(main(sys.argv[1:]))
    if rank == 1:
        time.sleep(1)
        if how == "killed":
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        os.kill(os.getppid(), signal.SIGTERM)  # "interrupted": the launcher is told to stop
    time.sleep(60)  # rank 0 is stopped by the launcher
    """
)


@pytest.mark.parametrize("how, says, status", [
    ("data", "has a single batch ('x')", 1),
    ("killed", "rank 1 of 2 was killed by SIGKILL; out of memory?", 1),
    ("interrupted", "interrupted; nothing was written", 130),
])
def test_a_failed_launch_is_reported_once(sim_file, tmp_path, how, says, status):
    """Was (amedl fit --nproc 2): each rank printed its own line, then the launcher blamed the rank it had
    stopped itself ("rank 0 of 2 failed (exit status -15)"); Ctrl-C ended as an internal error, status 1."""
    (tmp_path / "failing_rank.py").write_text(FAILING_RANK)
    one = ad.read_h5ad(sim_file)[:60].copy()
    one.obs["one"] = "x"
    one.write_h5ad(tmp_path / "one.h5ad")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from amedl.cli import main; from amedl import distributed; "
         "distributed.launch = (lambda f: lambda argv, n, **k: f(argv, n, module='failing_rank', **k))(distributed.launch); "
         "sys.exit(main(['fit', 'one.h5ad', '--batch-key', 'one', '--out', 'o.h5ad', '--nproc', '2', '--quiet']))"],
        env={**_env(tmp_path), "FAILING_HOW": how}, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == status, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("amedl: ") and says in lines[0], proc.stderr
    assert not (tmp_path / "o.h5ad").exists()


# ------------------------------------------------------------------------------ out of core


@pytest.fixture(scope="module")
def csr_file(tmp_path_factory):
    import scipy.sparse as sp

    a = amedl.datasets.simulate(n_cells=700, n_genes=300, n_batches=3, n_cell_types=4, seed=4)
    a.X = sp.csr_matrix(a.X)
    path = tmp_path_factory.mktemp("backed") / "cells.h5ad"
    a.write_h5ad(path)
    return path


def test_backed_training_matches_memory_on_the_same_blocks(csr_file):
    """From disk (chunked statistics, blocks read from the file) and from memory with the
    same block order: the same genes and scaling, and the same latents."""
    settings = {**SMALL, "block_size": 64, "buffer_blocks": 3}
    memory = amedl.AMEDL(ad.read_h5ad(csr_file), "batch", **settings)
    backed_adata = ad.read_h5ad(csr_file, backed="r")
    backed = amedl.AMEDL(backed_adata, "batch", **settings)
    assert backed._X.__class__.__name__ == "BackedMatrix"
    assert backed.genes == memory.genes and len(backed.genes) == 200
    np.testing.assert_array_equal(backed.prep.center, memory.prep.center)
    np.testing.assert_array_equal(backed.prep.scale, memory.prep.scale)
    for m in (memory, backed):
        m.fit(seed=0, max_epochs=3, progress=False)
    assert (amedl.tl.record(backed)["from_disk"], amedl.tl.record(memory)["from_disk"]) == (True, False)
    for kind in ("fe", "re"):
        z_mem, z_disk = memory.latent(kind=kind), backed.latent(backed_adata, kind=kind)
        np.testing.assert_allclose(z_disk, z_mem, rtol=0, atol=1e-5)
        assert z_mem.std(0).min() > 1e-3
    assert backed.history["fe"]["val_monitor"].tolist() == pytest.approx(memory.history["fe"]["val_monitor"].tolist(), abs=1e-6)
    # was: AttributeError ('BackedMatrix' object has no attribute 'toarray')
    np.testing.assert_array_equal(backed.transform(), memory.transform())
    np.testing.assert_array_equal(backed.transform(backed_adata), memory.transform())
    # a view of a backed AnnData was read as the whole file (an IndexError, or silently other cells)
    view = backed_adata[100:]
    with pytest.raises(amedl.AMEDLInputError, match=r"a view .*to_memory\(\)"):
        backed.latent(view)
    with pytest.raises(amedl.AMEDLInputError, match="a view"):
        amedl.AMEDL(view, "batch", **settings)


def test_backed_neighbourhood_reference_is_the_in_memory_one(csr_file):
    """The within-batch neighbourhood loss's reference PCA, read from disk by chunks of rows,
    is the one computed in memory; it is fitted on a seeded subset of the training cells."""
    memory = amedl.AMEDL(ad.read_h5ad(csr_file), "batch", **SMALL)
    backed = amedl.AMEDL(ad.read_h5ad(csr_file, backed="r"), "batch", **SMALL)
    train = np.arange(0, 700, 2)
    for a, b in zip(memory._reference_pca(train, 0), backed._reference_pca(train, 0)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert memory._reference_pca(train, 0)[1].shape == (200, memory.config.fe_neighbour_pcs)


def test_buffer_blocks_applies_from_disk_without_a_block_size(csr_file):
    """block_size None: single rows shuffled in memory, 1,024-cell blocks from disk with the
    configured buffer (buffer_blocks was ignored there: (1024, 16) whatever it was)."""
    from amedl.data.backed import DISK_BLOCK_SIZE, make_loader

    for backed in (False, True):
        m = amedl.AMEDL(ad.read_h5ad(csr_file, backed="r" if backed else None), "batch", **SMALL, buffer_blocks=3)
        loader = make_loader(m._X, m._codes, m.prep, shuffle=True, blocks=(m.config.block_size, m.config.buffer_blocks))
        assert loader.blocks == ((DISK_BLOCK_SIZE, 3) if backed else None)


def test_block_order_reads_contiguous_blocks():
    from amedl.data import block_order

    rows = np.sort(np.random.default_rng(0).choice(1000, 700, replace=False))
    order, bounds = block_order(rows, np.random.default_rng(1), 50, 4, return_bounds=True)
    assert sorted(order.tolist()) == rows.tolist()
    assert bounds[0] == 0 and bounds[-1] == len(rows)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        assert len(np.unique(order[lo:hi] // 50)) <= 4  # a buffer is at most 4 blocks, read whole
    assert not np.array_equal(order, rows)


def test_a_backed_fit_refuses_an_input_that_changed_and_a_full_disk(csr_file, tmp_path):
    """Was: a file replaced during a --backed fit was copied to the output with the old file's
    latents (every cell misaligned, exit 0); a disk without room for the copy was found after training."""
    from amedl.ondisk import _check_unchanged, _identity, check_room_for_copy

    copy = tmp_path / "in.h5ad"
    copy.write_bytes(Path(csr_file).read_bytes())
    before = _identity(copy)
    _check_unchanged(copy, before)  # the same file
    replacement = tmp_path / "other.h5ad"
    replacement.write_bytes(copy.read_bytes())
    os.replace(replacement, copy)  # same bytes, another file
    with pytest.raises(amedl.AMEDLInputError, match="changed while the model trained from it.*nothing was written"):
        _check_unchanged(copy, before)
    check_room_for_copy(copy, tmp_path / "out.h5ad", 800, 10)
    with pytest.raises(amedl.errors.AMEDLPathError, match=r"GB free; the output is a copy of the input plus the latents"):
        check_room_for_copy(copy, tmp_path / "out.h5ad", 10**15, 10)


def test_a_rank_whose_launcher_is_gone_does_not_write(monkeypatch):
    """Was: after kill -9 of `amedl fit --nproc 2`, the orphaned ranks finished and wrote the outputs."""
    from amedl import distributed

    monkeypatch.setattr(distributed, "_LAUNCHER", os.getppid())
    assert not distributed.orphaned()
    distributed.check_launcher_here()
    monkeypatch.setattr(distributed, "_LAUNCHER", os.getppid() + 1)  # re-parented
    assert distributed.orphaned()
    with pytest.raises(amedl.AMEDLError, match="the process that launched the ranks has gone"):
        distributed.check_launcher_here()


def test_backed_command_line(csr_file, tmp_path, capsys):
    from amedl.cli import main
    from amedl.metrics import silhouette_batch

    out = tmp_path / "out.h5ad"
    assert main(["fit", str(csr_file), "--batch-key", "batch", "--out", str(out), "--backed", "--epochs", "2",
                 "--n-top-genes", "100", "--n-latent", "6", "--threads", "1", "--quiet", "--model-dir",
                 str(tmp_path / "model"), "--label-key", "cell_type"]) == 0
    said = capsys.readouterr().out
    result = ad.read_h5ad(out)
    assert result.obsm["X_amedl_fe"].shape == (700, 6) and np.isfinite(result.obsm["X_amedl_re"]).all()
    assert result.uns["amedl"]["batch_key"] == "batch" and result.n_vars == 300  # the input, plus the latents
    assert result.uns["amedl"]["model_dir"] == str((tmp_path / "model").resolve())
    # --label-key reports the silhouettes, as without --backed (was: ignored)
    fe_asw = silhouette_batch(result.obsm["X_amedl_fe"], result.obs["batch"].astype(str))
    assert f"FE latent: batch ASW {fe_asw:+.3f}, cell_type ASW" in said and "RE latent: batch ASW" in said
    assert f"model saved to {tmp_path / 'model'}" in said
    model = amedl.AMEDL.load(tmp_path / "model", threads=1)
    np.testing.assert_allclose(model.latent(result, kind="fe"), result.obsm["X_amedl_fe"], atol=1e-5)
    rds = tmp_path / "cells.rds"
    rds.write_text("not an h5ad")
    assert main(["fit", str(rds), "--batch-key", "batch", "--out", str(out), "--backed"]) == 1


def test_a_csc_layer_on_disk_names_the_layer_and_the_in_memory_route(tmp_path):
    """Was: 'adata.X = csr_matrix(adata.X)', the wrong matrix, for counts in a CSC layer."""
    import scipy.sparse as sp

    a = amedl.datasets.simulate(n_cells=120, n_genes=60, n_batches=2, n_cell_types=2, seed=0)
    a.layers["counts"] = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(amedl.AMEDLInputError, match=r"stored as CSC.*drop --backed.*adata\.layers\['counts'\] = "
                                                    r"scipy\.sparse\.csr_matrix"):
        amedl.AMEDL(ad.read_h5ad(tmp_path / "csc.h5ad", backed="r"), "batch", layer="counts", **SMALL)


def test_a_value_that_is_not_a_count_on_disk_names_its_cell(tmp_path):
    """Was: 'csr.h5ad:X (cells 0..16383) contains NaN ... Pass the raw counts (--layer counts)' for a file
    without layers: a 16,384-cell range and a hint that did not apply."""
    a = amedl.datasets.simulate(n_cells=300, n_genes=60, n_batches=2, n_cell_types=2, seed=0)
    a.X = a.X.tocsr()
    a.X.data[a.X.indptr[123]] = np.nan  # the first stored value of cell 123
    a.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(amedl.AMEDLInputError) as err:
        amedl.AMEDL(ad.read_h5ad(tmp_path / "nan.h5ad", backed="r"), "batch", **SMALL)
    msg = str(err.value)
    assert "contains NaN or infinite value(s)" in msg and f"the first is in cell {a.obs_names[123]!r}, row 123" in msg
    assert "--layer" not in msg
