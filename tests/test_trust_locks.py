"""Issue 17: of two programs writing the same class, archive, review or run, the second stops
with one line naming the first, and the next takes over once the first is gone."""

from __future__ import annotations

import os

import pytest

from toolkit.core.errors import ToolkitError


def hold_in_another_process(target, what: str):
    """A child process that holds the lock of `target` (core/locks.holding) until killed;
    returned once it holds it. The caller kills it."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom toolkit.core.locks import holding\n"
         f"with holding({str(target)!r}, {what!r}):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_takes_over_when_it_is_gone(tmp_path):

    from toolkit.core.locks import holding

    target = tmp_path / "cat"
    holder = hold_in_another_process(target, "class cat")
    try:
        with pytest.raises(ToolkitError, match=rf"^class cat is in use by another toolkit process "
                                               rf"\(pid {holder.pid}\); wait"):
            with holding(target, "class cat"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with holding(target, "class cat"):  # the killed holder's lock went with it
        assert (tmp_path / ".cat.lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / ".cat.lock").exists()  # removed on release


@pytest.mark.parametrize("command", ["pack", "review"])
def test_a_second_pack_or_review_of_the_same_target_stops_with_one_line_naming_the_holder(
        tmp_path, command):

    from conftest import make_class_folders
    from helpers import assert_one_error_line, run_cli
    from toolkit.core.locks import lock_path

    source = make_class_folders(tmp_path / "src", {"a": range(0, 6), "b": range(6, 12)}, size=(128, 128))
    target = tmp_path / "a.npz" if command == "pack" else source / "review.json"
    holder = hold_in_another_process(target, "x")
    try:
        args = (["pack", source, "--out", target, "--size", "32", "--allow-fewer"] if command == "pack"
                else ["review", source, "--weights", "none", "--size", "32"])
        result = run_cli(*args)
        assert result.exit_code == 1
        assert_one_error_line(result, f"in use by another toolkit process (pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(target).exists()  # the killed holder's, left for the next to take over
    assert not (target.exists() and command == "pack")


@pytest.mark.slow
def test_a_run_folder_has_one_writer_at_a_time(finished_run, tmp_path):
    import shutil

    from helpers import assert_one_error_line, run_cli

    run = tmp_path / "run"
    shutil.copytree(finished_run[0], run)
    holder = hold_in_another_process(run, "x")
    try:
        result = run_cli("train", "--resume", run)
        assert_one_error_line(result, f"the run {run} is in use by another toolkit process "
                                      f"(pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert_one_error_line(run_cli("train", "--resume", run), "already finished")


def test_a_lock_in_a_folder_that_cannot_be_written_is_one_line_with_the_callers_fix():
    """/sys refuses new files even to root (a chmod 0o555 folder would not stop root, which the
    tests run as): the lock is one line that says what to do, not a PermissionError."""
    from toolkit.core.locks import holding

    try:
        os.close(os.open("/sys/.toolkit-probe", os.O_RDWR | os.O_CREAT, 0o600))
        pytest.skip("/sys is writable here")
    except FileNotFoundError:
        pytest.skip("no /sys here")
    except OSError:
        pass
    fix = "copy SOURCE, or call review(write=False)"
    with pytest.raises(ToolkitError, match=r"^the review of /sys cannot be written: /sys is read-only "
                                           r"\(.+\); copy SOURCE, or call review\(write=False\)$"):
        with holding("/sys/review.json", "the review of /sys", read_only=fix):
            pass
