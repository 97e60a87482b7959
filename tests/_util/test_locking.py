"""Folder locks: one writer per folder across processes and threads, nested takes by the holder."""

from __future__ import annotations

import threading

import pytest

from perturbsets._util.locking import FolderLockedError, folder_lock


def test_a_folder_held_by_another_process_is_refused_at_once(tmp_path, lock_holder):
    lock_holder.hold(tmp_path / "run")
    with pytest.raises(FolderLockedError, match="another process is writing to the run folder .*choose another folder"):
        with folder_lock(tmp_path / "run", blocking=False, what="run folder"):
            pass
    with folder_lock(tmp_path / "other", blocking=False):
        pass  # other folders stay free


def test_the_holder_may_take_its_lock_again_and_releases_it_at_the_outermost_end(tmp_path):
    folder = tmp_path / "run"
    refused = []

    def other_thread():
        try:
            with folder_lock(folder, blocking=False):
                refused.append(False)
        except FolderLockedError:
            refused.append(True)

    with folder_lock(folder, blocking=False):
        with folder_lock(folder, blocking=False):
            pass
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert refused == [True]  # still held after the nested take ended
    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert refused == [True, False]  # free once the outermost take ended


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot write to the run folder .*file/run .*choose a folder you can create"):
        with folder_lock(tmp_path / "file" / "run", what="run folder"):
            pass
