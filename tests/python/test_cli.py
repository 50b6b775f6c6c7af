"""The command line: fast start, one-line errors, --debug, amedl embed, quiet libraries (issue 16)."""
from __future__ import annotations

import importlib.util
import io as _io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import amedl
from amedl import io
from amedl.cli import main

CLI = ["--epochs", "1", "--n-latent", "3", "--n-top-genes", "50", "--quiet"]


@pytest.fixture(scope="module")
def tiny():
    return amedl.datasets.simulate(n_cells=160, n_genes=90, n_batches=3, n_cell_types=2, seed=9)


@pytest.fixture(scope="module")
def fitted_files(tiny, tmp_path_factory):
    """``amedl fit`` run once: input, output and model folder."""
    root = tmp_path_factory.mktemp("cli")
    io.write(tiny, root / "in.h5ad")
    assert main(["fit", str(root / "in.h5ad"), "--batch-key", "batch", "--out", str(root / "out.h5ad"),
                 "--model-dir", str(root / "model"), "--threads", "1", *CLI]) == 0
    return root


def test_the_command_line_loads_no_numerical_library_to_check_its_arguments():
    """Was: about 9 s of imports before `amedl --version` or 'no such file' (torch, scanpy, anndata)."""
    code = ("import sys, amedl.cli\n"
            "rc = amedl.cli.main(['fit', 'missing.h5ad', '--batch-key', 'b', '--out', 'o.h5ad'])\n"
            "heavy = [m for m in ('torch', 'scanpy', 'anndata', 'pandas', 'numba', 'sklearn') if m in sys.modules]\n"
            "print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1 []", out.stdout + out.stderr
    assert out.stderr.strip() == "amedl: no such file: missing.h5ad"
    version = subprocess.run([sys.executable, "-m", "amedl.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == amedl.__version__ and version.returncode == 0


def test_the_modules_the_docs_name_are_attributes_of_amedl():
    code = ("import amedl; print(amedl.counterfactual.counterfactual_scores.__name__, "
            "amedl.differential.differential.__name__, amedl.distributed.init_from_env.__name__, "
            "amedl.demo.run_demo.__name__)")  # demo.py records amedl.demo.run_demo(...) as a run's command
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["counterfactual_scores", "differential", "init_from_env", "run_demo"], out.stderr


def test_debug_shows_the_traceback_that_is_otherwise_hidden(tmp_path, capsys):
    args = ["fit", str(tmp_path / "missing.h5ad"), "--batch-key", "b", "--out", str(tmp_path / "o.h5ad")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("amedl: no such file")
    assert main([*args, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("amedl: no such file")


def test_an_unexpected_error_is_one_line_that_asks_for_a_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(io, "peek", lambda path: 1 / 0)
    assert main(["fit", str(tmp_path / "x.h5ad"), "--batch-key", "b", "--out", str(tmp_path / "o.h5ad")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("amedl: internal error (ZeroDivisionError: division by zero); rerun with --debug")
    assert "Traceback" not in err


def test_embed_gives_the_latents_fit_wrote(fitted_files, tiny, capsys):
    """amedl embed MODEL_DIR INPUT --out OUTPUT: a saved model applied to cells (here the same ones)."""
    root = fitted_files
    assert main(["embed", str(root / "model"), str(root / "in.h5ad"), "--out", str(root / "embedded.h5ad"),
                 "--threads", "1"]) == 0
    fit_out, emb = io.read(root / "out.h5ad"), io.read(root / "embedded.h5ad")
    for key in ("X_amedl_fe", "X_amedl_re"):
        assert np.array_equal(emb.obsm[key], fit_out.obsm[key])
    assert emb.uns["amedl"]["batch_key"] == "batch" and (emb.X != tiny.X).nnz == 0
    # where the model is, so that the R package's AMEDLModel() finds it in a file amedl wrote
    assert fit_out.uns["amedl"]["model_dir"] == emb.uns["amedl"]["model_dir"] == str((root / "model").resolve())


def test_embed_without_the_batch_column_writes_the_fe_latent(fitted_files, tiny, capsys):
    root = fitted_files
    new = tiny[:40].copy()
    del new.obs["batch"]
    io.write(new, root / "new_cells.h5ad")
    assert main(["embed", str(root / "model"), str(root / "new_cells.h5ad"), "--out", str(root / "new_out.h5ad")]) == 0
    assert "writing the FE latent only" in capsys.readouterr().out
    out = io.read(root / "new_out.h5ad")
    assert out.obsm["X_amedl_fe"].shape == (40, 3) and "X_amedl_re" not in out.obsm

    # was: an RE latent already in the input (another fit's) stayed beside this model's FE latent
    new.obsm["X_amedl_re"] = np.ones((40, 3))
    io.write(new, root / "stale.h5ad")
    assert main(["embed", str(root / "model"), str(root / "stale.h5ad"), "--out", str(root / "stale.h5ad")]) == 0
    assert "X_amedl_re, from another fit, is removed" in capsys.readouterr().out
    assert set(io.read(root / "stale.h5ad").obsm) == {"X_amedl_fe"}


def test_embed_reads_the_counts_where_it_is_told(tiny, tmp_path, capsys):
    """Was: a model fitted on --layer counts could not embed cells whose counts are in X (--layer X was refused),
    and the missing layer was found only after reading the input."""
    fitted = tiny.copy()
    fitted.layers["counts"] = fitted.X.copy()
    fitted.X = fitted.X * 0
    io.write(fitted, tmp_path / "layer.h5ad")
    io.write(tiny, tmp_path / "x.h5ad")
    assert main(["fit", str(tmp_path / "layer.h5ad"), "--layer", "counts", "--batch-key", "batch", "--out",
                 str(tmp_path / "fit.h5ad"), "--model-dir", str(tmp_path / "m"), "--threads", "1", *CLI]) == 0
    assert main(["embed", str(tmp_path / "m"), str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "e.h5ad")]) == 1
    err = capsys.readouterr().err
    assert "the model's counts layer 'counts' (amedl fit --layer) is not a layer of" in err and "--layer X" in err
    assert main(["embed", str(tmp_path / "m"), str(tmp_path / "x.h5ad"), "--out", str(tmp_path / "e.h5ad"),
                 "--layer", "X"]) == 0
    assert np.array_equal(io.read(tmp_path / "e.h5ad").obsm["X_amedl_fe"], io.read(tmp_path / "fit.h5ad").obsm["X_amedl_fe"])
    # was: the adapted model was saved with this input's counts place (X) instead of the model's layer
    query = tiny[:50].copy()
    query.obs["batch"] = "donor_new"
    io.write(query, tmp_path / "q.h5ad")
    assert main(["embed", str(tmp_path / "m"), str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "qe.h5ad"), "--layer",
                 "X", "--adapt", "--adapt-steps", "5", "--adapted-model-dir", str(tmp_path / "adapted")]) == 0
    assert amedl.AMEDL.load(tmp_path / "adapted").layer == "counts"
    assert io.read(tmp_path / "qe.h5ad").uns["amedl"]["layer"] == "counts"
    # was: --adapt without the batch column failed only after loading the model and the input
    del query.obs["batch"]
    io.write(query, tmp_path / "nobatch.h5ad")
    code = ("import sys, amedl.cli; rc = amedl.cli.main(sys.argv[1:]); "
            "print(rc, [m for m in ('torch', 'anndata') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, "embed", str(tmp_path / "m"), str(tmp_path / "nobatch.h5ad"),
                          "--out", str(tmp_path / "nb.h5ad"), "--layer", "X", "--adapt"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split("\n")[-2] == "1 []", out.stdout + out.stderr
    assert "has no 'batch' column (the model's batch key)" in out.stderr


def test_embed_adapt_learns_new_batches_and_saves_the_adapted_model_apart(fitted_files, tiny, capsys):
    root = fitted_files
    new = tiny[:60].copy()
    new.obs["batch"] = "donor_new"
    io.write(new, root / "query.h5ad")
    before = {p.name: p.read_bytes() for p in (root / "model").iterdir()}
    args = ["embed", str(root / "model"), str(root / "query.h5ad"), "--out", str(root / "query_out.h5ad"), "--threads", "1"]
    assert main([*args, "--adapted-model-dir", str(root / "adapted")]) == 1
    assert "add --adapt" in capsys.readouterr().err
    assert main([*args, "--adapt", "--adapt-steps", "20", "--adapted-model-dir", str(root / "adapted")]) == 0
    assert "adapted 1 new batch(es) (donor_new)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (root / "model").iterdir()} == before  # MODEL_DIR untouched
    adapted = amedl.AMEDL.load(root / "adapted")
    assert adapted.adapted_batches == ["donor_new"] and adapted.batches[-1] == "donor_new"
    out = io.read(root / "query_out.h5ad")
    assert np.allclose(out.obsm["X_amedl_re"], adapted.latent(new, kind="re"), atol=1e-5)
    assert out.uns["amedl"]["model_dir"] == str((root / "adapted").resolve())
    # the reference folder is never the adapted model's, even when asked to overwrite
    assert main([*args, "--adapt", "--adapted-model-dir", str(root / "model"), "--overwrite"]) == 1
    assert "is MODEL_DIR itself" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (root / "model").iterdir()} == before


def test_the_output_file_and_the_model_folders_are_apart(fitted_files, capsys):
    """Was: embed wrote its output, then the adapted model over it (exit 0, output lost); fit
    failed after training on a temporary file's name."""
    root = fitted_files
    before = {p.name: p.read_bytes() for p in (root / "model").iterdir()}
    query = [str(root / "model"), str(root / "in.h5ad")]
    for args, says in (
        (["embed", *query, "--out", str(root / "same.h5ad"), "--adapt", "--adapted-model-dir", str(root / "same.h5ad")],
         "--adapted-model-dir"),
        (["embed", *query, "--out", str(root / "model" / "emb.h5ad")], "is inside MODEL_DIR"),
        (["fit", str(root / "in.h5ad"), "--batch-key", "batch", "--out", str(root / "res.h5ad"),
          "--model-dir", str(root / "res.h5ad"), *CLI], "are the same path"),
    ):
        assert main(args) == 1
        assert says in capsys.readouterr().err
    assert not (root / "same.h5ad").exists() and not (root / "res.h5ad").exists()
    assert {p.name: p.read_bytes() for p in (root / "model").iterdir()} == before


def test_backed_refuses_an_old_layout_before_training(tmp_path, capsys):
    """Was: trained, then an internal error writing the latents (anndata's old layout)."""
    import scanpy

    old = Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
    assert main(["fit", str(old), "--batch-key", "bulk_labels", "--backed", "--out", str(tmp_path / "o.h5ad"), *CLI]) == 1
    assert "has an old one. Drop --backed, or rewrite the file" in capsys.readouterr().err


def test_fit_checks_the_label_key_and_the_output_before_training(fitted_files, capsys):
    """Was: reported only after the whole training."""
    root = fitted_files
    for extra, says in ((["--label-key", "celltype"], "--label-key 'celltype' is not a column"),
                        (["--out", str(root)], "unknown suffix"),
                        (["--layer", "X", "--label-key", "celltype"], "--label-key 'celltype'")):  # X: the matrix X
        args = ["fit", str(root / "in.h5ad"), "--batch-key", "batch", "--out", str(root / "o.h5ad"), *extra, *CLI]
        assert main(args) == 1
        assert says in capsys.readouterr().err
    assert not (root / "o.h5ad").exists()


def test_third_party_warnings_are_quiet_unless_verbose(capsys):
    from amedl.cli import _quiet_libraries

    with warnings.catch_warnings():
        _quiet_libraries(verbose=False)
        warnings.warn_explicit("a library's deprecation note", FutureWarning, "anndata/_core.py", 1, module="anndata._core")
        warnings.warn_explicit("cells of unseen batches", UserWarning, "amedl/model.py", 1, module="amedl.model")
        err = capsys.readouterr().err
    assert "deprecation note" not in err and "warning: cells of unseen batches" in err
    with warnings.catch_warnings():
        _quiet_libraries(verbose=True)
        with pytest.warns(FutureWarning):
            warnings.warn("a library's deprecation note", FutureWarning)


@pytest.mark.skipif(importlib.util.find_spec("scib_metrics") is None, reason="scib-metrics is not installed")
def test_scib_metrics_info_lines_are_hidden(capfd):
    """Was: dozens of coloured INFO lines from scib-metrics in `amedl benchmark`."""
    import scib_metrics

    from amedl.cli import _quiet_scib

    old = scib_metrics.settings.verbosity
    try:
        scib_metrics.settings.verbosity = logging.INFO
        logging.getLogger("scib_metrics.metrics").info("computing neighbours")
        assert "computing neighbours" in "".join(capfd.readouterr())  # rich prints to stdout
        _quiet_scib()
        logging.getLogger("scib_metrics.metrics").info("computing neighbours")
        assert "computing neighbours" not in "".join(capfd.readouterr())
    finally:
        scib_metrics.settings.verbosity = old


def test_the_epoch_bar_does_not_promise_the_budget():
    """Was: an ETA towards the whole budget (e.g. 400 epochs) although early stopping ends much sooner."""
    from amedl._utils import epoch_bar

    buf = _io.StringIO()
    for epoch in epoch_bar(400, desc="aMEDL FE", file=buf, mininterval=0, miniters=1):
        if epoch == 4:  # three epochs done
            break
    text = buf.getvalue()
    assert "epoch 3 (budget 400)" in text and "/400" not in text and "<" not in text


def test_training_shows_the_epoch_bar(tiny, capsys):
    """Was: training drew its own bar, with an ETA towards the whole budget."""
    amedl.AMEDL(tiny, "batch", n_top_genes=40, hidden=(16,), n_latent=4, threads=1).fit(
        seed=0, max_epochs=3, kinds=("ae",), progress=True)
    err = capsys.readouterr().err
    assert "aMEDL AE: epoch" in err and "(budget 3)" in err and "/3 " not in err


class _Terminal(_io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_refresh_rarely_off_a_terminal():
    """A log, a pipe or R's console gets a refresh every few seconds, not every epoch."""
    from amedl._utils import OFF_TERMINAL_REFRESH, epoch_bar, progress_bar

    assert progress_bar(total=5, file=_io.StringIO()).mininterval == OFF_TERMINAL_REFRESH
    assert progress_bar(total=5, file=_Terminal()).mininterval < 1
    assert progress_bar(total=5, file=_io.StringIO(), mininterval=0).mininterval == 0
    buf = _io.StringIO()
    for _ in epoch_bar(50, desc="aMEDL FE", file=buf):
        pass
    assert buf.getvalue().count("aMEDL FE: epoch") <= 2  # the first draw, and at most one refresh


@pytest.mark.skipif(importlib.util.find_spec("rpy2") is None, reason="rpy2 is not installed")
@pytest.mark.parametrize("kind, x_name, looked", [
    ("sce", "logcounts", "assay 'counts', assay 'raw', assay 'raw_counts'"),
    ("seurat", "data", "layer 'counts' of assay 'RNA', layer 'raw' of assay 'RNA'"),
])
def test_r_objects_without_counts_say_where_amedl_looked(tiny, tmp_path, kind, x_name, looked):
    """Was: the normalised matrix read as counts, then 'adata.X contains non-integer values ... e.g. layer='counts''."""
    norm = tiny.copy()
    norm.X = sp.csr_matrix(np.log1p(tiny.X.toarray() / tiny.X.sum(1).A * 1e4))
    norm.uns["amedl_io"] = {"kind": kind, "x_name": x_name}
    path = tmp_path / f"{kind}.rds"
    try:
        io.write(norm, path, kind=kind, template=None)
    except ImportError as e:  # pragma: no cover
        pytest.skip(str(e))
    back = io.read(path)
    with pytest.raises(amedl.AMEDLInputError, match="has no raw counts: amedl looked in " + looked) as err:
        amedl.AMEDL(back, "batch", n_top_genes=50)
    assert "which is normalised" in str(err.value)


def test_a_full_disk_names_the_file_being_written():
    """Was: 'No space left on device: <the input>' (a copy's error names its source first)."""
    import errno

    from amedl.cli import _message

    msg, status = _message(OSError(errno.ENOSPC, "No space left on device", "in.h5ad", None, "out.h5ad"))
    assert status == 1 and msg.startswith("no space left on the device writing out.h5ad; nothing was written")
