"""swift_gguf.fileio: files written whole or not at all (models, fixtures, profiles, caches)."""
from __future__ import annotations

import pytest

from swift_gguf.fileio import atomic_copy, atomic_output, atomic_write_text


def test_atomic_output_replaces_the_file_only_when_the_block_ends(tmp_path):
    path = tmp_path / "sub" / "model.gguf"
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp != path and not path.exists()
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and list(path.parent.iterdir()) == [path]


def test_atomic_output_keeps_the_old_file_and_leaves_no_temporary_on_an_error(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_text_and_copies_go_through_it(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_copy(tmp_path / "a.txt", tmp_path / "b" / "c.txt")
    assert (tmp_path / "b" / "c.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b", "c.txt"]
