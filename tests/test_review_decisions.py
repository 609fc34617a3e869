"""Review's decisions: decisions.jsonl, and pack and crawl honouring what was decided."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import distinct_image
from helpers import REVIEW_QUICK, assert_one_error_line, run_cli
from toolkit.collect.crawler import crawl
from toolkit.collect.fetch import FetchOptions
from toolkit.core import decisions
from toolkit.curate import gallery as gallery_module, reviewer, verdicts
from toolkit.data.npz import load_archive
from toolkit.data.packer import pack

# ---- decisions.jsonl

def test_decisions_last_wins_and_a_damaged_last_line_is_read_up_to_it(tmp_path):
    decisions.append(tmp_path, [decisions.Decision("cat/a.jpg", "drop"),
                                decisions.Decision("cat/b.jpg", "move", "dog")])
    decisions.append(tmp_path, [decisions.Decision("cat/a.jpg", "keep")])
    with open(tmp_path / decisions.DECISIONS_FILE, "ab") as f:
        f.write(b'{"file": "cat/c.jpg", "action": "dr')  # killed mid-write
    made = decisions.read(tmp_path)
    assert {f: (d.action, d.label) for f, d in made.items()} == {
        "cat/a.jpg": ("keep", None), "cat/b.jpg": ("move", "dog")}
    # the next decision starts a line of its own, and the damaged one stays ignored
    decisions.append(tmp_path, [decisions.Decision("cat/c.jpg", "drop")])
    assert decisions.read(tmp_path)["cat/c.jpg"].action == "drop"
    assert len(decisions.read(tmp_path)) == 3
    with pytest.raises(decisions.ToolkitError, match="move needs"):
        decisions.append(tmp_path, [decisions.Decision("cat/a.jpg", "move")])
    # a line not ours (a class or a URL that is no text UTF-8 writes) is skipped as a damaged one
    lines = [{"label": 5}, {"label": "\ud800"}, {"label": ["dog"]}, {"label": "dog", "url": 7},
             {"label": "dog"}]
    made = decisions.parse("\n".join(json.dumps({"file": f"cat/{i}.jpg", "action": "move", **line})
                                      for i, line in enumerate(lines)).encode())
    assert {f: d.label for f, d in made.items()} == {"cat/4.jpg": "dog"}


# ---- pack and crawl honour decisions

@pytest.mark.slow
def test_pack_honours_decisions_and_drop_suspects(folder, tmp_path):
    reviewer.review(folder, **REVIEW_QUICK)
    suspects = verdicts.suspects(folder)
    decisions.append(folder, [decisions.Decision("cat/img0001.jpg", "drop"),
                              decisions.Decision("dog/img0102.jpg", "move", "fox")])
    report = pack(folder, tmp_path / "a.npz", per_class=20, size=32, allow_fewer=True)
    archive = load_archive(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as npz:
        rows = dict(zip([*npz["paths_train"], *npz["paths_test"]],
                        [*npz["y_train"], *npz["y_test"]]))
    assert "cat/img0001.jpg" not in rows
    assert archive.class_names[rows["dog/img0102.jpg"]] == "fox"
    assert "dropped_in_review" in report.table() and "moved_in_review" in report.table()
    totals = report.to_json()["counts"]
    assert sum(c.get("dropped_in_review", 0) for c in totals.values()) == 1
    assert totals["fox"].get("moved_in_review") == 1

    kept = sorted(suspects - {"cat/img0001.jpg", "dog/img0102.jpg"})[:1]
    decisions.append(folder, [decisions.Decision(f, "keep") for f in kept])
    pack(folder, tmp_path / "b.npz", per_class=20, size=32, allow_fewer=True, drop_suspects=True)
    with np.load(tmp_path / "b.npz") as npz:
        packed = {*npz["paths_train"], *npz["paths_test"]}
    undecided = suspects - {"cat/img0001.jpg", "dog/img0102.jpg", *kept}
    assert packed.isdisjoint(undecided) and set(kept) <= packed
    assert len(packed) == 24 - 1 - len(undecided)


@pytest.mark.slow
def test_pack_drop_suspects_packs_what_came_or_changed_after_the_review_with_a_warning(folder, tmp_path):
    reviewer.review(folder, **REVIEW_QUICK)
    entries = json.loads((folder / verdicts.REVIEW_FILE).read_text())["images"]
    assert all(e["sha256"] == hashlib.sha256((folder / e["file"]).read_bytes()).hexdigest()
               for e in entries)
    changed = (sorted(verdicts.suspects(folder)) or [entries[0]["file"]])[0]
    (folder / changed).write_bytes(distinct_image(999))  # a new picture under the old name
    (folder / "cat" / "new.jpg").write_bytes(distinct_image(998))  # a crawl top-up
    result = run_cli("pack", folder, "--out", tmp_path / "a.npz", "--per-class", "20",
                     "--size", "32", "--allow-fewer", "--drop-suspects")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: 2 usable images came or changed after the review and are "
                        f"packed unjudged: run `toolkit review {folder}` again, then pack"]
    with np.load(tmp_path / "a.npz") as npz:
        packed = {*npz["paths_train"], *npz["paths_test"]}
    assert {changed, "cat/new.jpg"} <= packed  # not judged, so not left out as a suspect
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert report["warnings"] == [w.removeprefix("warning: ") for w in warnings]


def test_pack_warns_of_moves_to_a_class_that_is_gone(folder, tmp_path):
    decisions.append(folder, [decisions.Decision("cat/img0002.jpg", "move", "wolf")])
    result = run_cli("pack", folder, "--out", tmp_path / "a.npz", "--per-class", "20",
                     "--size", "32", "--allow-fewer")
    assert result.exit_code == 0, result.output
    assert ("warning: 1 image(s) moved in review to a class that is no longer a folder of "
            "SOURCE (wolf) are packed in their own class") in result.output
    archive = load_archive(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as npz:
        rows = dict(zip([*npz["paths_train"], *npz["paths_test"]], [*npz["y_train"], *npz["y_test"]]))
    assert archive.class_names[rows["cat/img0002.jpg"]] == "cat"


def test_pack_drop_suspects_without_a_review_is_one_line(folder, tmp_path):
    result = run_cli("pack", folder, "--out", tmp_path / "a.npz", "--drop-suspects")
    assert_one_error_line(result, "toolkit review")
    assert not (tmp_path / "a.npz").exists()


def test_crawl_top_up_skips_dropped_images_and_their_urls(engine, tmp_path):
    fast = FetchOptions(timeout=2, total_timeout=3, retries=1, backoff=0.05)
    urls = engine.add_images("cat", range(6))
    crawl(["cat"], root=tmp_path, per_class=3, fetch=fast, threads=1)
    manifest = [json.loads(line) for line in (tmp_path / "cat.manifest.jsonl").read_text().splitlines()]
    dropped = manifest[0]
    gallery_module.record(tmp_path, [decisions.Decision(f"cat/{dropped['file']}", "drop")])
    assert decisions.dropped_urls(tmp_path) == {dropped["url"]}
    assert decisions.left_out(tmp_path, "cat") == {dropped["file"]}
    (tmp_path / "cat" / dropped["file"]).unlink()  # even gone from disk, its URL is remembered
    engine.hits.clear()
    report = crawl(["cat"], root=tmp_path, per_class=3, fetch=fast, threads=1)
    assert report.classes[0].kept == 3 and report.complete
    assert dropped["url"].rsplit("/", 1)[-1] not in engine.hits
    assert len(urls) == 6
