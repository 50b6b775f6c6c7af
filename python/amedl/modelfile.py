"""The saved-model folder: what makes a folder an amedl model, what may replace it, and
the checks a folder passes before its weights are read.

A model folder holds ``.amedl-model`` (the marker that says "this folder is an
amedl model"), ``amedl.json`` (settings, genes, batches, preprocessing,
training record, the model format and checksums), ``weights.pt`` and
``history_<kind>.csv``. amedl replaces a folder only when it is empty, or is a
model folder holding nothing but those files and replacing was asked for; it
never removes anything else.

Formats: 1 (amedl 0.1.0 before integrity records: no marker, no checksums) is
still read; 2 adds the marker and the checksums of the weights and of the
settings and preprocessing in ``amedl.json``. Nothing here imports torch, so
the command line checks a folder before it loads the numerical libraries.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

from .errors import AMEDLConfigError, AMEDLFolderExistsError, AMEDLModelError, AMEDLPathError, preview

__all__ = ["FORMAT", "MARKER", "CONFIG_FILE", "WEIGHTS_FILE", "folder_kind", "check_target", "write_meta",
           "read_meta", "verify_weights", "sha256"]

#: The model format this amedl writes; it reads this one and every older one.
FORMAT = 2
MARKER, CONFIG_FILE, WEIGHTS_FILE = ".amedl-model", "amedl.json", "weights.pt"
_HISTORY = re.compile(r"history_[a-z0-9_]+\.csv")
#: Settings added after models were first saved, with the value that reproduces a model written
#: before each existed (the default may differ: ``fe_cluster_weight`` is 0.3 since docs/tuning.md's
#: eleventh round, but an older model was trained without the term, and with ``adversary_clusters``
#: unset the new default would not even be a valid configuration).
SETTINGS_ADDED_LATER = {"fe_cluster_weight": 0.0, "fe_layer_adv_scale": 1.0, "fe_monitor_adversaries": "every",
                         "fe_neighbour_k": 5, "fe_adv_weight_start": None, "fe_adv_warmup_steps": 500,
                         "fe_adv_lead_gain": 0.0, "fe_depth_weight": 0.0,
                         "fe_intercept_clusters": None, "fe_encoder_weight_decay": 0.0}
#: What ``amedl.json`` must say, and what each entry is.
_REQUIRED = {"config": dict, "preprocessing": dict, "kinds": list, "batch_key": str, "preset": str}


def _is_model_file(name: str) -> bool:
    return name in (MARKER, CONFIG_FILE, WEIGHTS_FILE) or bool(_HISTORY.fullmatch(name))


def _legacy(path: Path) -> bool:
    """A format-1 folder: amedl.json of an amedl model and weights.pt, no marker."""
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "amedl_version" in meta and "config" in meta and (path / WEIGHTS_FILE).is_file()


def folder_kind(path: str | os.PathLike) -> str:
    """What is at ``path``: ``"missing"``, ``"empty"`` (an empty folder), ``"model"``
    (an amedl model folder: the marker, or a format-1 model), ``"other"`` (a folder
    that is not a model) or ``"file"`` (anything that is not a folder)."""
    path = Path(path)
    if not os.path.lexists(path):
        return "missing"
    if not path.is_dir():
        return "file"
    if not any(path.iterdir()):
        return "empty"
    return "model" if (path / MARKER).is_file() or _legacy(path) else "other"


def check_target(path: str | os.PathLike, overwrite: bool = False, *, flag: str = "overwrite=True") -> str:
    """Check that a model may be saved to ``path``; returns :func:`folder_kind`.

    A missing path or an empty folder is fine. An amedl model folder is
    replaced only with ``overwrite`` and only when it holds nothing but model
    files. Anything else (a file, a folder that is not a model) is refused:
    :class:`~amedl.errors.AMEDLFolderExistsError` says what is there. ``flag``
    is how the caller's user asks for overwriting (e.g. ``--overwrite``).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    kind = folder_kind(path)
    if kind == "file":
        raise AMEDLFolderExistsError(f"{path} exists and is a file, not a model folder: choose another folder for the model")
    if kind == "other":
        names = sorted(p.name for p in path.iterdir())
        raise AMEDLFolderExistsError(
            f"{path} is a folder that is not an amedl model (no {MARKER} marker) and is not empty "
            f"(it holds {preview(names, 3)}); amedl never replaces it: choose a new or empty folder for the model"
        )
    if kind == "model":
        foreign = sorted(p.name for p in path.iterdir() if not _is_model_file(p.name))
        if foreign:
            raise AMEDLFolderExistsError(
                f"{path} holds an amedl model and also files that are not part of it ({preview(foreign, 3)}); "
                "nothing is replaced: move those files or choose another folder"
            )
        if not overwrite:
            raise AMEDLFolderExistsError(f"{path} already holds an amedl model; pass {flag} to replace it")
    ancestor = path if kind != "missing" else next((p for p in path.parents if p.exists()), Path("/"))
    if not ancestor.is_dir():
        raise AMEDLPathError(f"cannot create the model folder {path}: {ancestor} is a file, not a folder")
    return kind


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 checksum of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _content_checksum(meta: dict) -> str:
    """Checksum of what the weights depend on: settings, preprocessing (genes in
    order, scaling, batches), kinds, batch key, layer and preset."""
    keys = ("config", "preprocessing", "kinds", "batch_key", "layer", "preset")
    blob = json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def write_meta(folder: str | os.PathLike, meta: dict) -> dict:
    """Finish a model folder whose ``weights.pt`` is written: ``amedl.json`` with
    ``meta`` plus the format and the checksums, and the marker. Returns what was written."""
    folder = Path(folder)
    meta = {**meta, "format": FORMAT}
    meta["checksums"] = {WEIGHTS_FILE: sha256(folder / WEIGHTS_FILE), "content": _content_checksum(meta)}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    (folder / MARKER).write_text(
        f"amedl model folder (format {FORMAT}), written by amedl {meta.get('amedl_version', '?')}.\n"
        "amedl replaces this folder only when asked to, and only if it holds nothing but its own files\n"
        f"({MARKER}, {CONFIG_FILE}, {WEIGHTS_FILE}, history_*.csv).\n"
    )
    return meta


def _fail(file: Path, what: str) -> AMEDLModelError:
    return AMEDLModelError(f"{file}: {what}")


def _written_by(meta: dict) -> str:
    return f"amedl {meta.get('amedl_version', '(unknown version)')}, model format {meta.get('format', 1)}"


def read_meta(path: str | os.PathLike, kinds: tuple | None = None) -> dict:
    """Read and check ``amedl.json`` of the model folder ``path``.

    Checks the JSON, the format, the required entries, the settings (every
    :class:`~amedl.config.AMEDLConfig` rule), the preprocessing (unique gene
    names; centres finite; scales finite and positive; one of each per gene;
    unique batches; a positive ``target_sum``), the kinds (against ``kinds``
    when given), the content checksum and that ``weights.pt`` is there.
    Returns the record with its settings completed by
    :data:`SETTINGS_ADDED_LATER` where an older amedl did not write them.

    Raises
    ------
    FileNotFoundError
        No folder, or no ``amedl.json`` in it.
    AMEDLModelError
        Anything else, naming the file and what is wrong (and, for a newer
        format, which amedl wrote it).
    """
    from . import __version__
    from .config import AMEDLConfig

    path = Path(os.path.expanduser(os.fspath(path)))
    file = path / CONFIG_FILE
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {path}" + (" (it is a file)" if path.exists() else ""))
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a saved aMEDL model (no {CONFIG_FILE})")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(file, "is not a text file (damaged?)") from None
    if not text.strip():
        raise _fail(file, "is empty (damaged, or the save was interrupted): refit and save the model again")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(file, f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(meta, dict):
        raise _fail(file, f"holds a JSON {type(meta).__name__}, not the record of an amedl model")
    fmt = meta.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise _fail(file, f"has an invalid model format {fmt!r}")
    if fmt > FORMAT:
        raise _fail(file, f"was written by {_written_by(meta)}; this amedl ({__version__}) reads model formats up "
                          f"to {FORMAT}: upgrade amedl (update the checkout and reinstall it: scripts/setup install) to load it")
    for key, typ in _REQUIRED.items():
        if key not in meta:
            raise _fail(file, f"has no {key!r} entry (damaged, or not written by amedl)")
        if not isinstance(meta[key], typ):
            raise _fail(file, f"entry {key!r} must be a JSON {typ.__name__}, not {type(meta[key]).__name__}")
    if meta.get("layer") is not None and not isinstance(meta["layer"], str):
        raise _fail(file, "entry 'layer' must be a string or null")
    config = {**SETTINGS_ADDED_LATER, **meta["config"]}
    try:
        AMEDLConfig.from_dict(config)
    except (AMEDLConfigError, TypeError) as exc:
        raise _fail(file, f"config: {exc} (written by {_written_by(meta)})") from None
    _check_preprocessing(file, meta["preprocessing"])
    ks = meta["kinds"]
    if not ks or not all(isinstance(k, str) for k in ks) or len(set(ks)) != len(ks):
        raise _fail(file, f"'kinds' must list the trained networks once each (e.g. ['fe', 're']), not {ks!r}")
    if kinds is not None and set(ks) - set(kinds):
        raise _fail(file, f"names unknown network kind(s) {sorted(set(ks) - set(kinds))}; this amedl knows "
                          f"{list(kinds)} (written by {_written_by(meta)})")
    if fmt >= 2:
        sums = meta.get("checksums")
        if not isinstance(sums, dict) or not isinstance(sums.get(WEIGHTS_FILE), str):
            raise _fail(file, "has no checksums (damaged, or edited by hand)")
        if sums.get("content") != _content_checksum(meta):
            raise _fail(file, "was changed after it was saved: its settings, genes, scaling or batches no longer "
                              "match its checksum, so they may not match the weights. Restore the original file or refit")
    if not (path / WEIGHTS_FILE).is_file():
        raise _fail(path / WEIGHTS_FILE, "is missing: the model folder is incomplete")
    return {**meta, "config": config}


def verify_weights(path: str | os.PathLike, meta: dict) -> None:
    """Check ``weights.pt`` against the checksum recorded in ``amedl.json`` (format 2 and later)."""
    file = Path(path) / WEIGHTS_FILE
    want = (meta.get("checksums") or {}).get(WEIGHTS_FILE)
    if want is not None and sha256(file) != want:
        raise _fail(file, f"does not match the checksum recorded in {CONFIG_FILE}: the file is damaged or was "
                          "replaced. Restore the original or refit")


def _numbers(file: Path, what: str, values, n: int, *, positive: bool, genes: list) -> None:
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise _fail(file, f"preprocessing.{what} must have one number per gene ({n}), not {got}")
    bad = [i for i, v in enumerate(values)
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        rule = "finite and > 0" if positive else "finite"
        shown = ", ".join(f"{genes[i]!r}: {values[i]!r}" for i in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise _fail(file, f"preprocessing.{what} must be {rule} for every gene; {len(bad)} are not ({shown})")


def _check_preprocessing(file: Path, prep: dict) -> None:
    for key in ("genes", "scaling", "center", "scale", "batches", "target_sum"):
        if key not in prep:
            raise _fail(file, f"preprocessing has no {key!r} entry")
    genes, batches = prep["genes"], prep["batches"]
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) and g for g in genes):
        raise _fail(file, "preprocessing.genes must be a non-empty list of gene names")
    if len(set(genes)) != len(genes):
        dup = [g for g, n in Counter(genes).items() if n > 1]
        raise _fail(file, f"preprocessing.genes names {len(dup)} gene(s) more than once ({preview(dup, 3)})")
    if prep["scaling"] not in ("zscore", "minmax"):
        raise _fail(file, f"preprocessing.scaling must be 'zscore' or 'minmax', not {prep['scaling']!r}")
    _numbers(file, "center", prep["center"], len(genes), positive=False, genes=genes)
    _numbers(file, "scale", prep["scale"], len(genes), positive=True, genes=genes)
    if not isinstance(batches, list) or not batches or not all(isinstance(b, str) for b in batches) \
            or len(set(batches)) != len(batches):
        raise _fail(file, "preprocessing.batches must be a non-empty list of distinct batch names")
    ts = prep["target_sum"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts <= 0:
        raise _fail(file, f"preprocessing.target_sum must be a finite number > 0, not {ts!r}")
