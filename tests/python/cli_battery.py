"""A battery of broken inputs and settings fed to the ``amedl`` command line (issue 16).

Every case must end with a non-zero exit status, exactly one ``amedl:`` line
on stderr that says what is wrong (the case's expected words), no traceback,
and no file of the workspace changed, added or removed. None of the cases
needs training; the median wall time of a case must stay under 3 s.

Run by the test suite (``tests/python/test_cli_battery.py``), or alone::

    python tests/python/cli_battery.py [--keep DIR]

which builds a workspace, runs every case and prints the table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The battery's budget for the median case (none of them needs training).
MEDIAN_LIMIT_S = 3.0


@dataclass
class Case:
    name: str
    args: list[str]
    says: str  # words the amedl: line must contain


@dataclass
class Result:
    case: Case
    rc: int
    seconds: float
    stderr: str
    stdout: str
    changed: list[str] = field(default_factory=list)

    @property
    def amedl_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("amedl:")]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr + self.stdout

    @property
    def clear(self) -> bool:
        """Non-zero exit, one amedl: line with the expected words, no traceback, no internal error."""
        lines = self.amedl_lines
        return (self.rc != 0 and len(lines) == 1 and self.case.says in lines[0] and not self.traceback
                and "internal error" not in lines[0] and len(lines[0]) < 1000)

    def problems(self) -> list[str]:
        out = []
        if self.rc == 0:
            out.append("exit status 0 (a silent wrong result)")
        if self.traceback:
            out.append("a traceback")
        if len(self.amedl_lines) != 1:
            out.append(f"{len(self.amedl_lines)} amedl: lines")
        elif self.case.says not in self.amedl_lines[0]:
            out.append(f"the message does not say {self.case.says!r}")
        if self.changed:
            out.append(f"files changed: {self.changed[:5]}")
        return out


def snapshot(root: Path) -> dict:
    """Every entry under ``root`` (hidden ones too): content checksum or 'dir', and mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        mode = stat.S_IMODE(p.lstat().st_mode)
        out[str(p.relative_to(root))] = ("dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest(), mode)
    return out


def _diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ------------------------------------------------------------------------------------ the workspace


def _edit_json(folder: Path, change) -> None:
    meta = json.loads((folder / "amedl.json").read_text())
    change(meta)
    (folder / "amedl.json").write_text(json.dumps(meta))


def make_workspace(root: Path) -> Path:
    """Inputs, a saved model and broken copies of both, in ``root``."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    import amedl
    from amedl import io, modelfile

    root.mkdir(parents=True, exist_ok=True)
    a = amedl.datasets.simulate(n_cells=160, n_genes=90, n_batches=3, n_cell_types=3, seed=11)
    io.write(a, root / "cells.h5ad")
    io.write(a, root / "old_output.h5ad")
    model = amedl.AMEDL(a, "batch", n_top_genes=50, hidden=(16,), n_latent=3, adversary_hidden=(16,))
    model.fit(seed=0, max_epochs=1, progress=False)
    model.save(root / "model")

    project = root / "project"
    project.mkdir()
    shutil.copy(root / "cells.h5ad", project / "input.h5ad")
    (project / "notes.txt").write_text("the user's notes")
    (root / "plain.txt").write_text("a file")
    data = (root / "cells.h5ad").read_bytes()
    (root / "truncated.h5ad").write_bytes(data[: len(data) // 3])
    (root / "text.h5ad").write_text("not HDF5 at all\n")
    (root / "empty.h5ad").write_bytes(b"")
    (root / "cells.csv").write_text("a,b\n1,2\n")
    (root / "a_folder.h5ad").mkdir()

    norm = a.copy()
    norm.X = sp.csr_matrix(np.log1p(a.X.toarray() / a.X.sum(1).A * 1e4))
    io.write(norm, root / "normalised.h5ad")
    lonely = a.copy()
    lonely.obs["batch"] = [f"donor_{i:03d}" for i in range(a.n_obs)]  # every cell its own batch
    io.write(lonely, root / "lonely.h5ad")
    single = a.copy()
    single.obs["batch"] = "only"
    io.write(single, root / "single.h5ad")
    io.write(a[:, 40:].copy(), root / "fewer_genes.h5ad")

    def broken(name, change=None):
        folder = root / name
        shutil.copytree(root / "model", folder)
        if change:
            _edit_json(folder, change)
        return folder

    def swap(m):
        g = m["preprocessing"]["genes"]
        g[0], g[1] = g[1], g[0]

    broken("m_genes_reordered", swap)
    broken("m_scale_zero", lambda m: m["preprocessing"]["scale"].__setitem__(0, 0.0))
    broken("m_scale_nan", lambda m: m["preprocessing"]["scale"].__setitem__(0, float("nan")))
    broken("m_target_negative", lambda m: m["preprocessing"].__setitem__("target_sum", -1.0))
    broken("m_unknown_kind", lambda m: m.__setitem__("kinds", ["fe", "zz"]))
    broken("m_newer_format", lambda m: m.__setitem__("format", 99))
    (broken("m_empty_json") / "amedl.json").write_text("")
    (broken("m_malformed_json") / "amedl.json").write_text('{"config": {')
    folder = broken("m_truncated_weights")
    w = (folder / "weights.pt").read_bytes()
    (folder / "weights.pt").write_bytes(w[: len(w) // 2])
    folder = broken("m_nan_weights")
    state = torch.load(folder / "weights.pt", weights_only=True)
    next(iter(state["fe"].values())).fill_(float("nan"))
    torch.save(state, folder / "weights.pt")
    _edit_json(folder, lambda m: m["checksums"].__setitem__("weights.pt", modelfile.sha256(folder / "weights.pt")))
    (broken("m_with_foreign_file") / "analysis.R").write_text("# the user's script")
    return root


def cases() -> list[Case]:
    """The broken inputs and settings, and what each error must say."""
    fit = ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "new.h5ad"]
    emb = ["embed", "model", "cells.h5ad", "--out", "new.h5ad"]
    bench = ["benchmark", "cells.h5ad", "--batch-key", "batch", "--label-key", "cell_type", "--out-dir", "bench"]
    c = [
        # data loss, first
        Case("fit: --model-dir is the user's folder", [*fit, "--model-dir", "project"], "is not an amedl model"),
        Case("fit: --model-dir is a file", [*fit, "--model-dir", "plain.txt"], "is a file, not a model folder"),
        Case("fit: --model-dir holds a model, no --overwrite", [*fit, "--model-dir", "model"], "pass --overwrite"),
        Case("fit: --model-dir model has the user's files, --overwrite", [*fit, "--model-dir", "m_with_foreign_file", "--overwrite"],
             "files that are not part of it"),
        Case("fit: --out inside --model-dir", ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "newmodel/out.h5ad",
                                               "--model-dir", "newmodel"], "is inside --model-dir"),
        # inputs
        Case("fit: input missing", ["fit", "nope.h5ad", "--batch-key", "batch", "--out", "new.h5ad"], "no such file"),
        Case("fit: input is a folder", ["fit", "a_folder.h5ad", "--batch-key", "batch", "--out", "new.h5ad"], "is a folder"),
        Case("fit: input suffix unknown", ["fit", "cells.csv", "--batch-key", "batch", "--out", "new.h5ad"], "unknown suffix '.csv'"),
        Case("fit: truncated .h5ad", ["fit", "truncated.h5ad", "--batch-key", "batch", "--out", "new.h5ad"], "not a readable .h5ad"),
        Case("fit: not HDF5", ["fit", "text.h5ad", "--batch-key", "batch", "--out", "new.h5ad"], "not an HDF5 file"),
        Case("fit: empty file", ["fit", "empty.h5ad", "--batch-key", "batch", "--out", "new.h5ad"], "is empty (0 bytes)"),
        Case("fit: --batch-key typo", ["fit", "cells.h5ad", "--batch-key", "bacth", "--out", "new.h5ad"],
             "--batch-key 'bacth' is not a column"),
        Case("fit: --label-key typo", [*fit, "--label-key", "celltype"], "--label-key 'celltype' is not a column"),
        Case("fit: --layer missing", [*fit, "--layer", "counts"], "--layer 'counts' is not a layer"),
        Case("fit: normalised data, no counts", ["fit", "normalised.h5ad", "--batch-key", "batch", "--out", "new.h5ad"],
             "non-integer value(s)"),
        Case("fit: one cell per batch", ["fit", "lonely.h5ad", "--batch-key", "batch", "--out", "new.h5ad"],
             "have fewer than 2 cells"),
        Case("fit: a single batch", ["fit", "single.h5ad", "--batch-key", "batch", "--out", "new.h5ad"], "single batch"),
        # settings
        Case("fit: --epochs 0", [*fit, "--epochs", "0"], "--epochs/--max-epochs: must be a whole number >= 1"),
        Case("fit: --epochs -1", [*fit, "--epochs", "-1"], "--epochs/--max-epochs: must be a whole number >= 1"),
        Case("fit: --epochs ten", [*fit, "--epochs", "ten"], "--epochs/--max-epochs: must be a whole number >= 1"),
        Case("fit: --max-epochs 0", [*fit, "--max-epochs", "0"], "--epochs/--max-epochs: must be a whole number >= 1"),
        Case("fit: --n-latent 0", [*fit, "--n-latent", "0"], "--n-latent: must be a whole number >= 1"),
        Case("fit: --n-top-genes 0", [*fit, "--n-top-genes", "0"], "--n-top-genes: must be a whole number >= 2"),
        Case("fit: --threads 0", [*fit, "--threads", "0"], "--threads: must be a whole number >= 1"),
        Case("fit: --seed -1", [*fit, "--seed", "-1"], "--seed: must be a whole number >= 0"),
        Case("fit: --preset unknown", [*fit, "--preset", "fast"], "invalid choice: 'fast'"),
        Case("fit: --device malformed", [*fit, "--device", "GPU"], "device must be 'auto', 'cpu'"),
        Case("fit: --batch-key missing", ["fit", "cells.h5ad", "--out", "new.h5ad"], "--batch-key"),
        Case("fit: unknown option", [*fit, "--lr", "0.1"], "unrecognized arguments: --lr"),
        # outputs
        Case("fit: --out is a folder", ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "project"], "unknown suffix"),
        Case("fit: --out is a folder named .h5ad", ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "a_folder.h5ad"],
             "is a folder"),
        Case("fit: --out suffix unknown", ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "new.loom"], "unknown suffix '.loom'"),
        Case("fit: --out under a file", ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "plain.txt/new.h5ad"],
             "is a file, not a folder"),
        Case("fit: --out not writable", ["fit", "cells.h5ad", "--batch-key", "batch", "--out", "/proc/new.h5ad"], "not writable"),
        # embed and saved models
        Case("embed: no model folder", ["embed", "nomodel", "cells.h5ad", "--out", "new.h5ad"], "no model folder"),
        Case("embed: a folder that is not a model", ["embed", "project", "cells.h5ad", "--out", "new.h5ad"],
             "is not a saved aMEDL model"),
        Case("embed: amedl.json empty", ["embed", "m_empty_json", "cells.h5ad", "--out", "new.h5ad"], "amedl.json: is empty"),
        Case("embed: amedl.json malformed", ["embed", "m_malformed_json", "cells.h5ad", "--out", "new.h5ad"],
             "amedl.json: is not valid JSON"),
        Case("embed: genes reordered in amedl.json", ["embed", "m_genes_reordered", "cells.h5ad", "--out", "new.h5ad"],
             "was changed after it was saved"),
        Case("embed: a scale of 0", ["embed", "m_scale_zero", "cells.h5ad", "--out", "new.h5ad"], "scale must be finite and > 0"),
        Case("embed: a NaN scale", ["embed", "m_scale_nan", "cells.h5ad", "--out", "new.h5ad"], "scale must be finite and > 0"),
        Case("embed: negative target_sum", ["embed", "m_target_negative", "cells.h5ad", "--out", "new.h5ad"],
             "target_sum must be a finite number > 0"),
        Case("embed: unknown kind", ["embed", "m_unknown_kind", "cells.h5ad", "--out", "new.h5ad"], "was changed after"),
        Case("embed: newer model format", ["embed", "m_newer_format", "cells.h5ad", "--out", "new.h5ad"],
             "reads model formats up to"),
        Case("embed: truncated weights", ["embed", "m_truncated_weights", "cells.h5ad", "--out", "new.h5ad"],
             "weights.pt: does not match the checksum"),
        Case("embed: NaN weights", ["embed", "m_nan_weights", "cells.h5ad", "--out", "new.h5ad"], "NaN or infinite"),
        Case("embed: input lacks model genes", ["embed", "model", "fewer_genes.h5ad", "--out", "new.h5ad"],
             "of the model's 50 genes are missing from the genes of"),
        Case("embed: --out is a folder", [*emb[:3], "--out", "a_folder.h5ad"], "is a folder"),
        Case("embed: --threads 0", [*emb, "--threads", "0"], "--threads: must be a whole number >= 1"),
        Case("embed: --adapt-steps 0", [*emb, "--adapt", "--adapt-steps", "0"], "--adapt-steps: must be a whole number >= 1"),
        Case("embed: --adapt-steps without --adapt", [*emb, "--adapt-steps", "20"], "add --adapt"),
        Case("embed: --overwrite without --adapted-model-dir", [*emb, "--overwrite"], "add --adapted-model-dir"),
        Case("embed: --adapted-model-dir is MODEL_DIR", [*emb, "--adapt", "--adapted-model-dir", "model/", "--overwrite"],
             "is MODEL_DIR itself"),
        # benchmark
        Case("benchmark: input missing", ["benchmark", "nope.h5ad", "--batch-key", "batch", "--label-key", "cell_type",
                                          "--out-dir", "bench"], "no such file"),
        Case("benchmark: --batch-key typo", ["benchmark", "cells.h5ad", "--batch-key", "bacth", "--label-key", "cell_type",
                                             "--out-dir", "bench"], "--batch-key 'bacth' is not a column"),
        Case("benchmark: --label-key typo", ["benchmark", "cells.h5ad", "--batch-key", "batch", "--label-key", "type",
                                             "--out-dir", "bench"], "--label-key 'type' is not a column"),
        Case("benchmark: --folds 0", [*bench, "--folds", "0"], "--folds: must be a whole number >= 1"),
        Case("benchmark: more folds than cells", [*bench, "--folds", "1000"], "more than the number of cells"),
        Case("benchmark: unknown method", [*bench, "--methods", "tsne"], "unknown method 'tsne'"),
        Case("benchmark: --out-dir is a file", [*bench[:-1], "plain.txt"], "is a file, not a folder"),
        Case("benchmark: --max-cells 0", [*bench, "--max-cells", "0"], "--max-cells: must be a whole number >= 2"),
        Case("benchmark: truncated input", ["benchmark", "truncated.h5ad", "--batch-key", "batch", "--label-key", "cell_type",
                                            "--out-dir", "bench"], "not a readable .h5ad"),
        Case("demo: --out-dir is a file", ["demo", "--out-dir", "plain.txt"], "is a file, not a folder"),
        Case("unknown command", ["fti", "cells.h5ad"], "invalid choice: 'fti'"),
    ]
    return c


def command() -> list[str]:
    """The ``amedl`` command of this Python (the installed script, else ``python -m amedl.cli``)."""
    script = Path(sys.executable).with_name("amedl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "amedl.cli"]


def run_case(case: Case, workspace: Path, before: dict) -> Result:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([*command(), *case.args], cwd=workspace, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - t0
    after = snapshot(workspace)
    res = Result(case, proc.returncode, seconds, proc.stderr, proc.stdout, _diff(before, after))
    return res


def run_battery(workspace: Path) -> list[Result]:
    """Run every case in ``workspace`` (made by :func:`make_workspace`)."""
    before = snapshot(workspace)
    return [run_case(c, workspace, before) for c in cases()]


def table(results: list[Result]) -> str:
    """The battery's summary and per-case table (Markdown)."""
    secs = [r.seconds for r in results]
    lines = [
        "| cases | clear errors | tracebacks | silent wrong results | data damaged | median s | max s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {len(results)} | {sum(r.clear for r in results)} | {sum(r.traceback for r in results)} | "
        f"{sum(r.rc == 0 for r in results)} | {sum(bool(r.changed) for r in results)} | "
        f"{statistics.median(secs):.2f} | {max(secs):.2f} |",
        "",
        "| case | exit | s | amedl: line |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in results:
        line = (r.amedl_lines or ["(none)"])[0].replace("|", "\\|")
        lines.append(f"| {r.case.name} | {r.rc} | {r.seconds:.2f} | {line[:160]}{'...' if len(line) > 160 else ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", help="build the workspace here and keep it")
    opts = parser.parse_args()
    root = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="amedl-battery-"))
    try:
        results = run_battery(make_workspace(root / "workspace"))
        print(table(results))
        bad = [(r.case.name, r.problems()) for r in results if r.problems()]
        for name, problems in bad:
            print(f"FAILED {name}: {'; '.join(problems)}", file=sys.stderr)
        sys.exit(1 if bad or statistics.median(r.seconds for r in results) >= MEDIAN_LIMIT_S else 0)
    finally:
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
