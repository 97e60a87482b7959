"""Atomic writes and the clean-up of what killed writers leave."""

from __future__ import annotations

import pytest

from perturbsets._util.io import atomic_path, remove_temp_files, write_json


class Killed(Exception):
    pass


def test_remove_temp_files_takes_only_what_atomic_path_leaves(tmp_path, monkeypatch):
    import perturbsets._util.io as io

    write_json(tmp_path / "history.json", [1])
    # A kill inside atomic_path skips its clean-up: simulate it by making the clean-up a no-op.
    monkeypatch.setattr(io.Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(Killed):
        with atomic_path(tmp_path / "history.json") as tmp:
            tmp.write_text("half")
            raise Killed
    monkeypatch.undo()
    assert tmp.exists()
    user_files = [tmp_path / ".notes.tmp", tmp_path / "a.tmp", tmp_path / ".x.12345678.txt"]
    for path in user_files:
        path.write_text("keep")
    (tmp_path / "sub").mkdir()
    assert remove_temp_files(tmp_path) == [tmp]
    assert not tmp.exists() and all(p.exists() for p in user_files)
    assert (tmp_path / "history.json").read_text() == "[\n  1\n]\n"
    assert remove_temp_files(tmp_path / "missing") == []
