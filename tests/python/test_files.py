"""The one atomic writer (amedl._utils.atomic_path): permissions from the umask, nothing half-written."""
from __future__ import annotations

import contextlib
import os
import stat

import pytest

from amedl._utils import atomic_open, atomic_path


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_and_folders_get_the_umask_permissions(tmp_path, mask):
    with umask(mask):
        with atomic_open(tmp_path / "a.txt") as fh:
            fh.write("x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
        with atomic_path(tmp_path / "model", directory=True) as tmp:
            (tmp / "inside.json").write_text("{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("reference")
        plain_dir = tmp_path / "plain_dir"
        plain_dir.mkdir()
    assert mode(tmp_path / "a.txt") == mode(plain) == 0o666 & ~mask
    assert mode(tmp_path / "b.bin") == 0o666 & ~mask
    assert mode(tmp_path / "model") == mode(plain_dir) == 0o777 & ~mask
    assert mode(tmp_path / "model" / "inside.json") == 0o666 & ~mask


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.rds"
    target.write_bytes(b"old contents")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.rds"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.rds"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("stop")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"] and (target / "a").read_text() == "1"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]  # the old folder is gone, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_missing_parent_folders_are_created(tmp_path):
    with atomic_open(tmp_path / "x" / "y" / "z.md") as fh:
        fh.write("deep")
    assert (tmp_path / "x" / "y" / "z.md").read_text() == "deep"
