"""What a crawl is asked for: labels, search words and URL lists, and a one-line error for a bad one."""

import pytest

from conftest import distinct_image
from fake_engine import Item
from helpers import FAST, assert_consistent, assert_one_error_line, run_cli, tree
from toolkit.collect.crawler import crawl
from toolkit.collect.queries import parse_query, read_url_list
from toolkit.core.errors import ToolkitError


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


def test_labels_with_their_own_search_words_and_non_ascii_queries(engine, tmp_path):
    engine.add_images("poodle dog", range(0, 3))
    engine.add_images("고슴도치", range(10, 13))
    report = crawl(['poodle="poodle dog"', "고슴도치"], root=tmp_path, per_class=3, fetch=FAST)
    assert report.complete
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["poodle", "고슴도치"]
    assert {e["query"] for e in assert_consistent(tmp_path, "poodle")} == {"poodle dog"}


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


def test_url_lists_keep_commas_inside_urls(tmp_path):
    """CDN addresses hold commas (w_300,h_200): a URL is never cut at one."""
    listing = tmp_path / "urls.txt"
    listing.write_text("https://cdn.example/w_300,h_200/a.jpg\n"
                       "cat https://cdn.example/w_300,h_200/b.jpg\n"
                       "dog,https://cdn.example/c.jpg\n")
    assert read_url_list(listing, [parse_query("cat"), parse_query("dog")][:1]) == {
        "cat": ["https://cdn.example/w_300,h_200/a.jpg", "https://cdn.example/w_300,h_200/b.jpg"],
        "dog": ["https://cdn.example/c.jpg"]}
