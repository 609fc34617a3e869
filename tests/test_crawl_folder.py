"""A crawl's class folders and manifests stay consistent across reruns, hand edits, kills and
interruptions."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import distinct_image
from helpers import FAST, add_bad_responses, assert_consistent, tree
from toolkit.collect.crawler import crawl
from toolkit.collect.manifest import read_jsonl


def test_rerun_tops_up_without_downloading_anything_twice(engine, tmp_path):
    engine.add_images("cat", range(0, 20))
    add_bad_responses(engine, "cat")
    crawl(["cat"], root=tmp_path, per_class=6, fetch=FAST, threads=3)
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "cat").iterdir()}
    assert len(first) == 6
    engine.hits.clear()
    report = crawl(["cat"], root=tmp_path, per_class=14, fetch=FAST, threads=3)
    assert report.classes[0].kept == 14 and report.classes[0].new == 8
    assert max(engine.hits.values()) == 1
    refetched = {n for n in engine.hits if n.startswith("cat-")}
    assert refetched <= {"cat-500.jpg", "cat-slow.jpg"}, "refused URLs are not fetched again"
    now = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "cat").iterdir()}
    assert {k: now[k] for k in first} == first, "kept files are never rewritten"
    assert_consistent(tmp_path, "cat")
    engine.hits.clear()
    assert crawl(["cat"], root=tmp_path, per_class=14, fetch=FAST).classes[0].new == 0
    assert not engine.hits


def test_hand_added_files_and_kill_leftovers_are_reconciled(engine, tmp_path):
    engine.add_images("cat", range(0, 8))
    crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST)
    folder = tmp_path / "cat"
    victim = sorted(folder.iterdir())[0]
    victim.unlink()                                                 # deleted by hand
    (folder / "mine.jpg").write_bytes(distinct_image(500))          # added by hand
    (folder / ".x.jpg.0123abcd.part.jpg").write_bytes(b"\xff\xd8 half")  # left by a kill
    (folder / ".notes.part").write_text("mine")                     # the user's: kept
    with open(tmp_path / "cat.manifest.jsonl", "a") as f:
        f.write('{"file": "cut sho')                                # a line cut by a kill
    report = crawl(["cat"], root=tmp_path, per_class=5, fetch=FAST)
    manifest = assert_consistent(tmp_path, "cat")
    assert report.classes[0].kept == 5 and len(manifest) == 5
    assert [e["engine"] for e in manifest if e["file"] == "mine.jpg"] == ["local"]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".notes.part"]


def test_reconcile_touches_only_the_classes_being_crawled(engine, tmp_path):
    engine.add_images("cat", range(0, 3))
    other = tmp_path / "dog"
    other.mkdir()
    (other / "mine.jpg").write_bytes(distinct_image(0))             # = cat's first picture
    (other / "broken.jpg").write_bytes(b"not an image")
    (other / ".x.jpg.0123abcd.part.jpg").write_bytes(b"half")
    before = tree(other)
    report = crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST)
    assert tree(other) == before and not (tmp_path / "dog.manifest.jsonl").exists()
    assert report.classes[0].kept == 2 and report.classes[0].duplicates == 1  # dog's is seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_crawl_leaves_a_consistent_folder(engine, tmp_path, sig):
    engine.add_images("cat", range(0, 40))
    engine.slow_seconds = 0.15
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "crawl", "cat", "--root", str(tmp_path),
         "--per-class", "40", "--threads", "4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        folder = tmp_path / "cat"
        if folder.exists() and len([p for p in folder.iterdir() if not p.name.startswith(".")]) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Interrupted" in output and "Traceback" not in output
    manifest = assert_consistent(tmp_path, "cat")
    assert 5 <= len(manifest) < 40
    engine.slow_seconds = 0
    report = crawl(["cat"], root=tmp_path, per_class=40, fetch=FAST)
    assert report.complete and len(assert_consistent(tmp_path, "cat")) == 40


def test_a_manifest_title_with_a_line_separator_stays_one_record(tmp_path):
    """Titles are kept as pages give them (U+2028, \x85 included): one record a line."""
    manifest = tmp_path / "cat.manifest.jsonl"
    records = [{"file": "a.jpg", "title": "two\u2028lines\x85here"}, {"file": "b.jpg"}]
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
    assert read_jsonl(manifest) == records
