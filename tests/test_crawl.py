"""toolkit crawl: icrawler's real parsers and ddgs against a loopback engine."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import distinct_image, near_copy, png_bomb
from fake_engine import Item
from helpers import FAST, assert_consistent, assert_one_error_line, run_cli, tree
from toolkit.collect.crawler import crawl
from toolkit.collect.manifest import read_jsonl
from toolkit.collect.queries import parse_query, read_url_list
from toolkit.core.errors import ToolkitError
from toolkit.data.packer import pack


def add_bad_responses(engine, keyword, slow=True):
    engine.add(keyword, f"{keyword}-404.jpg", Item(status=404))
    engine.add(keyword, f"{keyword}-500.jpg", Item(b"oops", status=500, content_type="text/plain"))
    engine.add(keyword, f"{keyword}-html.jpg", Item(b"<html><body>blocked</body></html>"))
    engine.add(keyword, f"{keyword}-trunc.jpg", Item(distinct_image(990)[:-500]))
    engine.add(keyword, f"{keyword}-svg.jpg", Item(b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                                                   content_type="image/svg+xml"))
    engine.add(keyword, f"{keyword}-bomb.jpg", Item(png_bomb(), content_type="image/png"))
    engine.add(keyword, f"{keyword}-tiny.jpg", Item(distinct_image(991, (40, 30))))
    engine.add(keyword, f"{keyword}-loop.jpg", Item(behaviour="redirect_loop"))
    engine.add(keyword, f"{keyword}-huge.jpg", Item(behaviour="huge"))
    if slow:
        engine.add(keyword, f"{keyword}-slow.jpg", Item(b"\xff\xd8" * 150, behaviour="slow"))


def test_crawl_keeps_exactly_n_usable_distinct_images_per_class(engine, tmp_path):
    engine.add_images("cat", range(0, 12))
    add_bad_responses(engine, "cat")
    engine.add("cat", "cat-dup.jpg", Item(distinct_image(3)))
    engine.add("cat", "cat-near.jpg", Item(near_copy(distinct_image(4))))
    engine.add_images("dog", range(100, 112))
    engine.add("dog", "dog-cross.jpg", Item(distinct_image(5)))  # a cat picture found for dog
    engine.add("dog", "dog-retry.jpg", Item(distinct_image(150), behaviour="fail_once"))
    add_bad_responses(engine, "dog")

    report = crawl(["cat", "dog"], root=tmp_path, per_class=10, fetch=FAST, threads=4)

    assert [c.kept for c in report.classes] == [10, 10] and report.complete
    hashes = []
    for label in ("cat", "dog"):
        manifest = assert_consistent(tmp_path, label)
        assert len(manifest) == 10
        assert all(e["engine"] == "bing" and e["query"] == label and e["url"].startswith(engine.url)
                   for e in manifest)
        hashes += [int(e["phash"], 16) for e in manifest]
    assert all(bin(a ^ b).count("1") > 8 for i, a in enumerate(hashes) for b in hashes[i + 1:])
    assert engine.hits.get("cat-404.jpg", 0) <= 1


def test_bad_responses_are_refused_and_recorded(engine, tmp_path):
    engine.add_images("cat", range(0, 3))
    add_bad_responses(engine, "cat")
    engine.add("cat", "cat-retry.jpg", Item(distinct_image(60), behaviour="fail_once"))
    report = crawl(["cat"], root=tmp_path, per_class=20, fetch=FAST, threads=4)
    result = report.classes[0]
    assert result.kept == 4 and not report.complete  # 3 good + the one that failed once
    assert result.failed == {"http_404": 1, "http_500": 1, "not_image": 2, "corrupt": 1,
                             "too_large": 2, "too_small": 1, "redirects": 1, "timeout": 1}
    assert engine.hits["cat-retry.jpg"] == 2 and engine.hits["cat-500.jpg"] == 2  # retried once
    assert "cat: 4/20" in result.why_short()
    refused = {json.loads(line)["url"].rsplit("/", 1)[1]: json.loads(line)["reason"]
               for line in (tmp_path / "cat.rejected.jsonl").read_text().splitlines()}
    assert refused["cat-404.jpg"] == "http_404" and "cat-500.jpg" not in refused  # 5xx may heal
    assert_consistent(tmp_path, "cat")


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


def test_refused_urls_are_not_fetched_on_a_rerun(engine, tmp_path):
    engine.add_images("cat", range(0, 3))
    add_bad_responses(engine, "cat")
    crawl(["cat"], root=tmp_path, per_class=10, fetch=FAST, threads=4)
    engine.hits.clear()
    crawl(["cat"], root=tmp_path, per_class=10, fetch=FAST, threads=4)
    # only transient failures (5xx, slow) are tried again
    assert set(engine.hits) == {"cat-500.jpg", "cat-slow.jpg"}


def engine_rows(report, label):
    """{engine: (pages, results, kept, stop, detail)} for one class."""
    runs = next(c for c in report.classes if c.label == label).engines
    return {r.engine: (r.pages, r.results, r.kept, r.stop, r.detail) for r in runs}


def test_falls_back_to_the_next_engine_and_says_why_each_stopped(engine, tmp_path):
    engine.add_images("owl", range(0, 3))
    engine.add_images("hen", range(10, 16))
    report = crawl(["owl", "hen"], root=tmp_path, per_class=5, fetch=FAST,
                   engines=["bing", "baidu"])
    assert engine_rows(report, "owl") == {"bing": (2, 3, 3, "ran dry", ""),
                                          "baidu": (2, 3, 0, "ran dry", "")}
    assert engine_rows(report, "hen") == {"bing": (1, 6, 5, "enough", "")}
    assert [c.kept for c in report.classes] == [3, 5] and not report.blocked
    assert {e["engine"] for e in assert_consistent(tmp_path, "hen")} == {"bing"}


def test_google_parser_through_the_fallback_chain(engine, tmp_path):
    engine.add_images("owl", range(0, 4))
    engine.modes.update(bing="down", duckduckgo="down", baidu="down")
    report = crawl(["owl"], root=tmp_path, per_class=4, fetch=FAST)
    rows = engine_rows(report, "owl")
    assert list(rows) == ["bing", "duckduckgo", "baidu", "google"] and report.complete
    assert rows["bing"] == rows["baidu"] == (0, 0, 0, "refused", "HTTP 503")
    assert rows["google"][2:4] == (4, "enough")
    assert engine.page_hits["bing"] == 2  # a 503 page is retried once (FAST), then refused


@pytest.mark.parametrize("failing,mode,stop,detail", [
    ("bing", "forbidden", "refused", "HTTP 403"),
    ("bing", "captcha", "unreadable", "no image results on the first page"),
    ("bing", "garbled", "unreadable", "no image results on the first page"),
    ("baidu", "garbled", "unreadable", "no image results on the first page"),
    ("baidu", "raises", "unreadable", "KeyError: 'data'"),
    ("duckduckgo", "forbidden", "refused", "HTTP 403"),
    ("duckduckgo", "captcha", "unreadable", "ValueError: no vqd token on the search page"),
    ("duckduckgo", "raises", "unreadable", "JSONDecodeError"),
])
def test_a_failing_engine_is_named_with_what_happened_and_the_next_one_serves(
        engine, tmp_path, failing, mode, stop, detail):
    engine.add_images("owl", range(0, 4))
    engine.modes[failing] = mode
    other = "google" if failing != "bing" else "duckduckgo"
    result = run_cli("crawl", "owl", "--root", tmp_path, "--per-class", 4, "--engine",
                     f"{failing},{other}", "--timeout", 2)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith(failing + " "))
    assert row.split()[1:5] == ["owl", "0" if stop == "refused" else "1", "0", "0"]
    assert f"{stop} ({detail}" in row
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {failing} {stop} ({detail}")
    assert "--engine" in warnings[0]
    assert {e["engine"] for e in assert_consistent(tmp_path, "owl")} == {other}
    assert "Fail to parse" not in result.output and "Exception caught" not in result.output


def test_icrawler_log_lines_go_to_the_log_file(engine, tmp_path):
    engine.modes["baidu"] = "garbled"
    result = run_cli("crawl", "owl", "--root", tmp_path, "--per-class", 2, "--engine", "baidu")
    assert "Fail to parse the response in json format" in (tmp_path / "crawl.log").read_text()
    assert "Fail to parse" not in result.output


def test_an_unreachable_engine_is_named_and_not_asked_again(engine, tmp_path, monkeypatch):
    engine.add_images("owl", range(0, 3))
    engine.add_images("hen", range(10, 13))
    for variable in ("TOOLKIT_BING_URL", "TOOLKIT_DDG_URL"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # nothing listens there
    report = crawl(["owl", "hen"], root=tmp_path, per_class=3, fetch=FAST,
                   engines=["bing", "duckduckgo", "baidu"])
    assert report.complete
    for label in ("owl", "hen"):
        rows = engine_rows(report, label)
        assert rows["bing"] == rows["duckduckgo"] == (0, 0, 0, "unreachable",
                                                      "127.0.0.1: connection refused")
        assert rows["baidu"][2:4] == (3, "enough")
    assert len(report.warnings) == 2 and all("check the network" in w for w in report.warnings)
    assert engine.page_hits["baidu"] == 2 and not engine.page_hits["bing"]


def test_a_class_short_because_every_engine_failed_exits_non_zero(engine, tmp_path):
    engine.add_images("owl", range(0, 4))
    engine.modes.update(bing="forbidden", duckduckgo="captcha")
    result = run_cli("crawl", "owl", "--root", tmp_path, "--per-class", 4, "--engine",
                     "bing,duckduckgo")
    assert_one_error_line(result, "no engine could serve them (owl)")
    assert sum(line.startswith("warning: ") for line in result.output.splitlines()) == 2
    assert assert_consistent(tmp_path, "owl") == []


def test_bing_results_of_every_image_type_are_kept(engine, tmp_path):
    engine.add("cat", "a.png", Item(distinct_image(1, fmt="PNG"), content_type="image/png"))
    engine.add("cat", "b.webp", Item(distinct_image(2, fmt="WEBP"), content_type="image/webp"))
    engine.add("cat", "c", Item(distinct_image(3)))                      # no extension
    engine.add("cat", "d.jpeg", Item(distinct_image(4)))
    engine.add("cat", "e.JPG", Item(distinct_image(5)))
    report = crawl(["cat"], root=tmp_path, per_class=5, fetch=FAST, engines=["bing"])
    assert report.complete
    manifest = assert_consistent(tmp_path, "cat")
    assert sorted(e["url"].rsplit("/", 1)[1] for e in manifest) == ["a.png", "b.webp", "c",
                                                                    "d.jpeg", "e.JPG"]
    assert sorted(e["file"].rsplit(".", 1)[1] for e in manifest) == ["jpg"] * 3 + ["png", "webp"]


def test_duckduckgo_through_ddgs_keeps_n_usable_images(engine, tmp_path):
    engine.add_images("fox", range(0, 8))
    add_bad_responses(engine, "fox", slow=False)
    report = crawl(["fox"], root=tmp_path, per_class=6, fetch=FAST, engines=["duckduckgo"])
    assert report.complete and engine_rows(report, "fox")["duckduckgo"][3] == "enough"
    manifest = assert_consistent(tmp_path, "fox")
    assert len(manifest) == 6 and {e["engine"] for e in manifest} == {"duckduckgo"}
    assert all(e["page"].startswith("http://ddg-pages.example/") and e["title"] for e in manifest)
    asked = [q for name, q in engine.page_requests if name == "duckduckgo"]
    assert asked[0] == {"q": "fox"} and asked[1]["vqd"] == "4-3" and asked[1]["q"] == "fox"


@pytest.mark.parametrize("license,bing,ddg,google", [
    ("public-domain", "filterui:license-L1", "license:Public", None),
    ("creative-commons", "filterui:licenseType-Any", "license:Any", "sur:f"),
    ("commercial", "filterui:license-L2_L3_L4", "license:ShareCommercially", "sur:fc"),
])
def test_a_license_filter_is_sent_and_recorded(engine, tmp_path, license, bing, ddg, google):
    engine.add_images("cat", range(0, 2))
    report = crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST, license=license,
                   engines=["bing", "duckduckgo", "baidu", "google"])
    sent = {name: q for name, q in engine.page_requests if name != "duckduckgo" or "vqd" in q}
    assert bing in sent["bing"]["qft"] and ddg in sent["duckduckgo"]["f"].split(",")
    skipped = ["baidu"] if google else ["baidu", "google"]
    assert (google is None and "google" not in sent) or sent["google"]["tbs"] == google
    rows = engine_rows(report, "cat")
    assert all(rows[e] == (0, 0, 0, "skipped", f"cannot filter by license {license}")
               for e in skipped)
    assert report.warnings == [f"{e} cannot filter by license; skipped" for e in skipped]
    assert not report.blocked and "baidu" not in engine.page_hits
    assert {e["license"] for e in assert_consistent(tmp_path, "cat")} == {license}


def test_the_manifest_and_summary_say_where_images_come_from(engine, tmp_path):
    for s in range(0, 5):
        engine.add("cat", f"c{s}.jpg", Item(distinct_image(s), title=f"Cat number {s}",
                                            page=f"https://{'ab'[s % 2]}.example/p{s}"))
    report = crawl(["cat"], root=tmp_path, per_class=5, fetch=FAST, engines=["bing"])
    manifest = {e["url"].rsplit("/", 1)[1]: e for e in assert_consistent(tmp_path, "cat")}
    assert manifest["c3.jpg"]["page"] == "https://b.example/p3"
    assert manifest["c3.jpg"]["title"] == "Cat number 3" and manifest["c3.jpg"]["license"] == "any"
    assert report.classes[0].top_hosts == [("a.example", 3), ("b.example", 2)]
    assert "top sources: cat: a.example 3, b.example 2" in report.table()


def test_downloads_are_concurrent_but_at_most_per_host_at_once(engine, tmp_path):
    engine.add_images("cat", range(0, 12))
    engine.slow_seconds = 0.1
    crawl(["cat"], root=tmp_path / "a", per_class=12, fetch=FAST, engines=["bing"], threads=8,
          per_host=2)
    assert engine.most_in_flight == 2
    engine.most_in_flight = 0
    crawl(["cat"], root=tmp_path / "b", per_class=12, fetch=FAST, engines=["bing"], threads=8,
          per_host=8)
    assert engine.most_in_flight > 2


def test_labels_with_their_own_search_words_and_non_ascii_queries(engine, tmp_path):
    engine.add_images("poodle dog", range(0, 3))
    engine.add_images("고슴도치", range(10, 13))
    report = crawl(['poodle="poodle dog"', "고슴도치"], root=tmp_path, per_class=3, fetch=FAST)
    assert report.complete
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["poodle", "고슴도치"]
    assert {e["query"] for e in assert_consistent(tmp_path, "poodle")} == {"poodle dog"}


def test_pack_right_after_crawl_finds_n_per_class(engine, tmp_path):
    for k, word in enumerate(("cat", "dog", "fox")):
        engine.add_images(word, range(100 * k, 100 * k + 9))
        engine.add(word, f"{word}-cross.jpg", Item(distinct_image(0)))   # cat's first picture
        engine.add(word, f"{word}-near.jpg", Item(near_copy(distinct_image(100 * k + 1))))
        add_bad_responses(engine, word)
    crawl(["cat", "dog", "fox"], root=tmp_path / "data", per_class=8, fetch=FAST)
    report = pack(tmp_path / "data", tmp_path / "x.npz", per_class=8, size=32)
    assert report.usable_counts() == [8, 8, 8]


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


def test_url_list_never_fetches_other_schemes(engine, tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(distinct_image(77))
    good = engine.add_images("x", range(0, 2))
    redirect = engine.add("x", "to-file.jpg", Item(behaviour="redirect_file"))
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(["# my list", f"cat {good[0]}", f"cat,{good[1]}",
                                  f"cat file://{secret}", "cat ftp://example.com/a.jpg",
                                  f"cat {redirect}", "dog " + good[0]]))
    report = crawl([], root=tmp_path / "data", per_class=3, urls=listing, fetch=FAST)
    cat, dog = report.classes
    assert cat.kept == 2 and cat.failed["bad_url"] == 3
    assert dog.kept == 0 and dog.known == 1  # the same URL is not fetched for a second class
    assert engine.hits[good[0].rsplit("/", 1)[1]] == 1


@pytest.mark.parametrize("query,message", [
    ("../x", "is a path"), ("a/b", "is a path"), ("CON", "reserved"), ("nul.txt", "reserved"),
    (".hidden", "starts with '.'"), ("what?", "not allowed"), ("=words", "is empty"),
    ("x=", "no search words"), ("trailing.", "ends with a dot"),
])
def test_unsafe_labels_are_refused(tmp_path, query, message):
    with pytest.raises(ToolkitError, match=message):
        parse_query(query)
    assert_one_error_line(run_cli("crawl", query, "--root", tmp_path / "d"), message)
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("args,message", [
    ([], "no query given"),
    (["cat", "Cat"], "given twice"),
    (["cat", "--per-class", "0"], "at least 1"),
    (["cat", "--engine", "altavista"], "unknown engine"),
    (["../etc"], "is a path"),
    (["cat", "--engine", "urls"], "needs --urls"),
    (["cat", "--license", "mine"], "'mine' is not one of"),
    (["cat", "--license", "public-domain", "--engine", "baidu,google"],
     "can filter by license public-domain; use --engine bing,duckduckgo"),
    (["cat", "--urls", "list.txt", "--license", "commercial"], "not a URL list"),
    (["cat", "--threads", "0"], "--threads"),
])
def test_cli_crawl_errors_are_one_line(tmp_path, args, message):
    assert_one_error_line(run_cli("crawl", "--root", tmp_path / "d", *args), message)
    assert tree(tmp_path) == {}


def test_cli_crawl_prints_a_summary_and_counts_when_the_engines_run_dry(engine, tmp_path):
    engine.add_images("cat", range(0, 3))
    add_bad_responses(engine, "cat", slow=False)
    result = run_cli("crawl", "cat", "--root", tmp_path, "--per-class", 3, "--timeout", 2)
    assert result.exit_code == 0, result.output
    assert "cat" in result.output and "kept" in result.output and "warning" not in result.output
    result = run_cli("crawl", "cat", "--root", tmp_path, "--per-class", 5, "--timeout", 2,
                     "--engine", "bing,duckduckgo")
    assert result.exit_code == 0 and "cat: 3/5 - bing ran dry, duckduckgo ran dry" in result.output
    assert "ran out of results" in result.output and "Error" not in result.output


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


def test_url_lists_keep_commas_inside_urls(tmp_path):
    """CDN addresses hold commas (w_300,h_200): a URL is never cut at one."""
    listing = tmp_path / "urls.txt"
    listing.write_text("https://cdn.example/w_300,h_200/a.jpg\n"
                       "cat https://cdn.example/w_300,h_200/b.jpg\n"
                       "dog,https://cdn.example/c.jpg\n")
    assert read_url_list(listing, [parse_query("cat"), parse_query("dog")][:1]) == {
        "cat": ["https://cdn.example/w_300,h_200/a.jpg", "https://cdn.example/w_300,h_200/b.jpg"],
        "dog": ["https://cdn.example/c.jpg"]}


def test_a_manifest_title_with_a_line_separator_stays_one_record(tmp_path):
    """Titles are kept as pages give them (U+2028, \x85 included): one record a line."""
    manifest = tmp_path / "cat.manifest.jsonl"
    records = [{"file": "a.jpg", "title": "two\u2028lines\x85here"}, {"file": "b.jpg"}]
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
    assert read_jsonl(manifest) == records
