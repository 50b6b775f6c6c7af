"""The scripts under benchmarks/ that the docs tell users to run: each runs a tiny case to the end.

Was: speed.py, scale.py train, options.py and tune.py had all stopped running (a renamed
history column, a training plan built without the reference PCA, a removed attribute), and
nothing noticed. Figures are not checked here; they are what the scripts are for.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(*args: str, timeout: int = 600, env: dict | None = None) -> str:
    """Run a benchmark script with one thread; return its output (failing the test on a non-zero exit)."""
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=BENCHMARKS.parent, env={**os.environ, **threads, **(env or {})})
    assert out.returncode == 0, f"{args[0]} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_speed_script(tmp_path):
    out = tmp_path / "speed.json"
    _run(str(BENCHMARKS / "speed.py"), "--sizes", "400", "--genes", "150", "--batches", "3", "--max-epochs", "2",
         "--cache", str(tmp_path / "cache"), "--out", str(out))
    record = json.loads(out.read_text())
    assert "FE" in json.dumps(record) and "final_val_recon" in json.dumps(record)


def test_scale_script_writes_and_trains_in_memory_and_backed(tmp_path):
    path = tmp_path / "cells.h5ad"
    _run(str(BENCHMARKS / "scale.py"), "write", "--cells", "1500", "--path", str(path))
    for extra in ([], ["--backed"]):
        line = _run(str(BENCHMARKS / "scale.py"), "train", "--path", str(path), "--steps", "3", *extra)
        record = json.loads(line.strip().splitlines()[-1])
        assert record["mode"] == ("backed" if extra else "memory") and record["fe"]["cells_per_s"] > 0


def test_options_script(tmp_path):
    text = _run(str(BENCHMARKS / "options.py"), "--cells", "400", "--steps-cells", "256", "--no-compile",
                "--cache", str(tmp_path / "cache"))
    assert "FE minibatch 256" in text and "RE minibatch 256" in text


def test_tune_script(data_dir):
    text = _run(str(BENCHMARKS / "tune.py"), "symphony", '{"max_epochs": 2}', "--kinds", "fe,re",
                env={"AMEDL_DATA_DIR": str(data_dir)})
    assert "fe: batch ASW" in text and "val recon (NB NLL)" in text
