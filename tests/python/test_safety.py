"""Nothing lost (issue 16): model folders, outputs written together, temporaries, file modes.

The data-loss cases come first: each used to remove or replace the user's files.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import amedl
from amedl import _rbridge, io, modelfile
from amedl._utils import Staging, atomic_path, clean_stale
from amedl.cli import main
from amedl.errors import AMEDLFolderExistsError

SETTINGS = dict(n_top_genes=50, hidden=(16,), n_latent=3, adversary_hidden=(16,))
CLI = ["--epochs", "1", "--n-latent", "3", "--n-top-genes", "50", "--quiet"]


def tree(root: Path) -> dict:
    """Every file and folder under ``root`` (hidden ones too) with its content's checksum and mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        mode = stat.S_IMODE(p.lstat().st_mode)
        out[rel] = ("dir", mode) if p.is_dir() else (hashlib.sha1(p.read_bytes()).hexdigest(), mode)
    return out


@pytest.fixture(scope="module")
def tiny():
    return amedl.datasets.simulate(n_cells=160, n_genes=90, n_batches=2, n_cell_types=2, seed=5)


@pytest.fixture(scope="module")
def fitted(tiny):
    return amedl.AMEDL(tiny, "batch", **SETTINGS).fit(seed=0, max_epochs=1, progress=False)


@pytest.fixture()
def project(tmp_path, tiny):
    """A user's folder: the input and notes."""
    folder = tmp_path / "project"
    folder.mkdir()
    io.write(tiny, folder / "input.h5ad")
    (folder / "notes.txt").write_text("my notes")
    return folder


# ------------------------------------------------------------------ data loss (the first cases of the issue)


def test_fit_never_replaces_a_folder_that_is_not_a_model(project, capsys):
    """Was: the folder holding the input and the notes ended up with only the model files, exit 0."""
    before = tree(project)
    rc = main(["fit", str(project / "input.h5ad"), "--batch-key", "batch", "--out", str(project / "out.h5ad"),
               "--model-dir", str(project), *CLI])
    err = capsys.readouterr().err
    assert rc == 1 and "is not an amedl model" in err and "never replaces it" in err
    assert tree(project) == before


def test_fit_never_moves_a_file_given_as_model_dir(project, capsys):
    """Was: an existing file at --model-dir was moved to a hidden .NAME.old-PID."""
    notes = project / "notes.txt"
    before = tree(project)
    rc = main(["fit", str(project / "input.h5ad"), "--batch-key", "batch", "--out", str(project.parent / "out.h5ad"),
               "--model-dir", str(notes), *CLI])
    assert rc == 1 and "is a file, not a model folder" in capsys.readouterr().err
    assert tree(project) == before and not (project.parent / "out.h5ad").exists()


def test_save_never_removes_what_is_not_a_model(fitted, project):
    """Was: AMEDL.save(overwrite=True) replaced any folder."""
    before = tree(project)
    with pytest.raises(AMEDLFolderExistsError, match="not an amedl model"):
        fitted.save(project, overwrite=True)
    with pytest.raises(AMEDLFolderExistsError, match="is a file"):
        fitted.save(project / "notes.txt", overwrite=True)
    assert tree(project) == before


def test_replacing_a_model_needs_overwrite_and_keeps_foreign_files(fitted, tmp_path):
    target = tmp_path / "model"
    fitted.save(target)
    assert (target / modelfile.MARKER).is_file()
    with pytest.raises(AMEDLFolderExistsError, match="already holds an amedl model; pass overwrite=True"):
        fitted.save(target)
    fitted.save(target, overwrite=True)  # a model folder holding only its own files: replaced
    (target / "my_analysis.R").write_text("# the user's script")
    with pytest.raises(AMEDLFolderExistsError, match="also files that are not part of it.*my_analysis.R"):
        fitted.save(target, overwrite=True)
    assert (target / "my_analysis.R").read_text() == "# the user's script"
    empty = tmp_path / "empty"
    empty.mkdir()
    fitted.save(empty)  # an empty folder is used as it is
    assert modelfile.folder_kind(empty) == "model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]  # no temporaries left


def test_the_cli_replaces_a_model_only_with_overwrite(project, tmp_path, capsys):
    args = ["fit", str(project / "input.h5ad"), "--batch-key", "batch", "--out", str(tmp_path / "out.h5ad"),
            "--model-dir", str(tmp_path / "model"), *CLI]
    assert main(args) == 0
    first = tree(tmp_path / "model")
    capsys.readouterr()
    assert main(args) == 1 and "pass --overwrite to replace it" in capsys.readouterr().err
    assert tree(tmp_path / "model") == first
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert tree(tmp_path / "model") != first


def test_the_r_bridge_refuses_to_replace_a_model_without_overwrite(fitted, tmp_path):
    target = tmp_path / "m"
    _rbridge.save_model(fitted, str(target))
    with pytest.raises(AMEDLFolderExistsError, match="overwrite = TRUE"):
        _rbridge.save_model(fitted, str(target))
    assert _rbridge.save_model(fitted, str(target), overwrite=True) == str(target.resolve())


def test_model_and_output_are_written_both_or_neither(project, tmp_path, capsys, monkeypatch):
    """Was: the model was saved before the output was written, so a failed write left
    a new model beside an old output."""
    args = ["fit", str(project / "input.h5ad"), "--batch-key", "batch", "--out", str(tmp_path / "out.h5ad"),
            "--model-dir", str(tmp_path / "model"), *CLI]
    assert main(args) == 0
    before = tree(tmp_path)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "out.h5ad"))

    monkeypatch.setattr(io, "write", disk_full)
    capsys.readouterr()
    assert main([*args, "--overwrite", "--seed", "2"]) == 1
    assert f"no space left on the device writing {tmp_path / 'out.h5ad'}; nothing was written" in capsys.readouterr().err
    assert tree(tmp_path) == before  # the old model and the old output, nothing new, no temporaries
    monkeypatch.undo()

    def broken_model(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(modelfile, "write_meta", broken_model)
    assert main([*args, "--overwrite", "--seed", "2"]) == 1
    assert tree(tmp_path) == before


def test_staging_undoes_the_first_move_when_the_second_fails(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w").write_text("old model")
    (tmp_path / "out.h5ad").mkdir()  # a file cannot replace this folder: the second move fails
    stage = Staging()
    folder = stage.add(tmp_path / "model", directory=True)
    (folder / "w").write_text("new model")
    stage.add(tmp_path / "out.h5ad").write_text("new output")
    with pytest.raises(OSError):
        stage.commit()
    stage.discard()
    assert (tmp_path / "model" / "w").read_text() == "old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.h5ad"]


# ------------------------------------------------------------------ interrupted runs

_HOLD = """
import sys, time
from amedl._utils import atomic_path
with atomic_path(sys.argv[1], directory=sys.argv[2] == "dir") as tmp:
    (tmp / "weights.pt" if sys.argv[2] == "dir" else tmp).write_bytes(b"x" * 1000)
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path, kind):
    """Was: SIGKILL left e.g. a 13 MB .out.h5ad.XXXX.h5ad or a .model.XXXX/ that nothing cleaned."""
    target = tmp_path / ("out.h5ad" if kind == "file" else "model")
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(target), kind], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{target.name}.amedl-tmp-")  # only its own, named, temporary
    with atomic_path(target, directory=kind == "dir") as tmp:
        (tmp / "weights.pt" if kind == "dir" else tmp).write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_temporaries_of_running_processes_are_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from amedl._utils import _host

        theirs = tmp_path / f".out.h5ad.amedl-tmp-{_host()}-{sleeper.pid}-abcd.h5ad"
        theirs.write_text("being written")
        (tmp_path / ".out.h5ad.backup").write_text("not amedl's")
        clean_stale(tmp_path / "out.h5ad")
        assert theirs.exists() and (tmp_path / ".out.h5ad.backup").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert clean_stale(tmp_path / "out.h5ad") == [theirs] and not theirs.exists()


def test_an_old_model_set_aside_by_a_killed_swap_comes_back(tmp_path):
    """Killed between moving the old folder aside and moving the new one in: the next write restores it."""
    from amedl._utils import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".model.amedl-old-{_host()}-{int(dead.stdout)}-0"
    aside.mkdir()
    (aside / "weights.pt").write_text("old")
    assert clean_stale(tmp_path / "model") == [aside]
    assert (tmp_path / "model" / "weights.pt").read_text() == "old"


def test_sigterm_during_fit_leaves_nothing_behind(tmp_path, tiny):
    src = tmp_path / "in.h5ad"
    io.write(tiny, src)
    before = tree(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "amedl.cli", "fit", str(src), "--batch-key", "batch",
                             "--out", str(tmp_path / "out.h5ad"), "--model-dir", str(tmp_path / "model"),
                             "--epochs", "400", "--n-top-genes", "50", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while "read " not in (proc.stdout.readline() or "") and time.time() < deadline:
        pass
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "amedl: interrupted; nothing was written" in err and "Traceback" not in err
    assert tree(tmp_path) == before


def test_an_interrupted_benchmark_leaves_the_previous_outputs(tmp_path, tiny, monkeypatch):
    """Was: stopped while drawing the UMAPs, a new results.csv sat beside the previous run's
    summary, figure and report, and the command line said "nothing was written"."""
    import amedl.pl
    from amedl.benchmark import run_benchmark
    from amedl.cli import _benchmark_interrupted

    out = tmp_path / "bench"
    run_benchmark(tiny, "batch", "cell_type", out, methods=["pca"], folds=2, scib=False, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["report.html", "results.csv", "summary.md", "umap.png"]

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(amedl.pl, "umap_grid", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(tiny, "batch", "cell_type", out, methods=["pca"], folds=2, seed=1, scib=False, progress=False)
    partial = out / "results.partial.csv"  # every fold had finished
    assert pd.read_csv(partial)["fold"].tolist() == [1, 2]
    partial.unlink()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporaries either
    assert _benchmark_interrupted(out) == f"interrupted; the outputs in {out} are those of the previous run, if any"
    partial.write_text("method,fold\n")
    assert _benchmark_interrupted(out).endswith(f"the folds finished so far are in {partial}")
    monkeypatch.undo()
    # a run without the figure removes the previous one, which would not match its results
    run_benchmark(tiny, "batch", "cell_type", out, methods=["pca"], folds=2, seed=1, scib=False, progress=False,
                  umap=False)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.csv", "summary.md"]


@pytest.mark.skipif(importlib.util.find_spec("rpy2") is None or not Path("/proc/self/maps").exists(),
                    reason="needs rpy2 (R files) and /proc")
def test_ctrl_c_while_r_reads_the_input_leaves_nothing_behind(tmp_path, tiny):
    """Was: rpy2 swallowed a Ctrl-C that landed while R read the .rds; training went on, the
    outputs were written and the exit status was 0."""
    src = tmp_path / "in.rds"
    io.write(tiny, src)
    before = tree(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "amedl.cli", "fit", str(src), "--batch-key", "batch",
                             "--out", str(tmp_path / "out.rds"), "--model-dir", str(tmp_path / "model"),
                             "--epochs", "400", "--n-top-genes", "50", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # R is started (and reads the file) once libR is mapped
        if "libR" in Path(f"/proc/{proc.pid}/maps").read_text():
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert err.strip().endswith("amedl: interrupted; nothing was written")
    assert "Traceback" not in err and "Exception ignored" not in err
    assert tree(tmp_path) == before


# ------------------------------------------------------------------ modes and compression


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_new_outputs_follow_the_umask_and_a_replaced_file_keeps_its_mode(tiny, tmp_path, umask_027):
    """Was: outputs 0600 and model folders 0700 whatever the umask; writing over the input changed its mode."""
    io.write(tiny, tmp_path / "new.h5ad")
    assert stat.S_IMODE((tmp_path / "new.h5ad").stat().st_mode) == 0o640
    shared = tmp_path / "shared.h5ad"
    io.write(tiny, shared)
    os.chmod(shared, 0o664)
    io.write(tiny, shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664


def test_the_model_folder_follows_the_umask(fitted, tmp_path, umask_027):
    path = fitted.save(tmp_path / "model")
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {0o640}


def test_h5ad_outputs_are_compressed(tiny, tmp_path):
    """Was: a 62 MB output from a 21 MB input."""
    io.write(tiny, tmp_path / "out.h5ad")
    with h5py.File(tmp_path / "out.h5ad") as f:
        X = f["X"]
        compressions = {X[k].compression for k in ("data", "indices")} if isinstance(X, h5py.Group) else {X.compression}
    assert compressions == {"gzip"}
    back = io.read(tmp_path / "out.h5ad")
    assert (back.X != tiny.X).nnz == 0


def test_writing_over_the_input_is_safe(project, capsys):
    """--out may be the input: the latents are added, the counts kept, the mode kept."""
    src = project / "input.h5ad"
    os.chmod(src, 0o644)
    counts = io.read(src).X.copy()
    assert main(["fit", str(src), "--batch-key", "batch", "--out", str(src), *CLI]) == 0
    back = io.read(src)
    assert (back.X != counts).nnz == 0 and back.obsm["X_amedl_fe"].shape == (back.n_obs, 3)
    assert stat.S_IMODE(src.stat().st_mode) == 0o644
    assert sorted(p.name for p in project.iterdir()) == ["input.h5ad", "notes.txt"]
    assert int(back.uns["amedl"]["epochs"]["fe"]) == 1
    assert np.isfinite(back.obsm["X_amedl_re"]).all()


def test_the_r_bridge_refuses_a_python_without_the_engine_packages():
    """Was: R's amedl_available() was TRUE on a Python without torch, anndata or scanpy (the bridge imported only
    numpy, pandas and scipy), and the first fit failed with a bare ModuleNotFoundError, one package at a time."""
    code = "; ".join([
        "import importlib.util",
        "real = importlib.util.find_spec",
        "importlib.util.find_spec = lambda name, *a: None if name in ('torch', 'scanpy') else real(name, *a)",
        "import amedl._rbridge",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "ImportError: the amedl engine needs torch, scanpy, which this Python does not have" in out.stderr
