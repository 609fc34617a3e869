"""toolkit crawl against a loopback engine: which downloads it keeps, refuses and records, and
how many it fetches at once."""

import json

from conftest import distinct_image, near_copy
from fake_engine import Item
from helpers import FAST, add_bad_responses, assert_consistent, run_cli
from toolkit.collect.crawler import crawl
from toolkit.data.packer import pack


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


def test_refused_urls_are_not_fetched_on_a_rerun(engine, tmp_path):
    engine.add_images("cat", range(0, 3))
    add_bad_responses(engine, "cat")
    crawl(["cat"], root=tmp_path, per_class=10, fetch=FAST, threads=4)
    engine.hits.clear()
    crawl(["cat"], root=tmp_path, per_class=10, fetch=FAST, threads=4)
    # only transient failures (5xx, slow) are tried again
    assert set(engine.hits) == {"cat-500.jpg", "cat-slow.jpg"}


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


def test_pack_right_after_crawl_finds_n_per_class(engine, tmp_path):
    for k, word in enumerate(("cat", "dog", "fox")):
        engine.add_images(word, range(100 * k, 100 * k + 9))
        engine.add(word, f"{word}-cross.jpg", Item(distinct_image(0)))   # cat's first picture
        engine.add(word, f"{word}-near.jpg", Item(near_copy(distinct_image(100 * k + 1))))
        add_bad_responses(engine, word)
    crawl(["cat", "dog", "fox"], root=tmp_path / "data", per_class=8, fetch=FAST)
    report = pack(tmp_path / "data", tmp_path / "x.npz", per_class=8, size=32)
    assert report.usable_counts() == [8, 8, 8]


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
