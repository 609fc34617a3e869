"""The search engines a crawl asks in turn (icrawler's real parsers and ddgs against a loopback
engine): the fallback, license filters, and a failing engine named with what happened."""

import pytest

from helpers import FAST, add_bad_responses, assert_consistent, assert_one_error_line, run_cli
from toolkit.collect.crawler import crawl


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
