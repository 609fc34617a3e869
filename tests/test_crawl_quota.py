"""What counts toward --per-class on a top-up: images kept earlier count only if they still pass."""

from conftest import distinct_image
from fake_engine import Item
from helpers import FAST, assert_consistent
from toolkit.collect.crawler import crawl
from toolkit.core.images import Checks


def test_a_top_up_with_a_larger_min_side_does_not_count_images_now_too_small(engine, tmp_path):
    for seed in range(3):
        engine.add("cat", f"small{seed}.jpg", Item(distinct_image(seed, (160, 120))))
    for seed in range(3, 6):
        engine.add("cat", f"large{seed}.jpg", Item(distinct_image(seed, (400, 300))))
    first = crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST, threads=1).classes[0]
    assert (first.kept, first.new) == (3, 3)

    engine.hits.clear()
    again = crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST, threads=1,
                  checks=Checks(min_side=150)).classes[0]

    assert (again.kept, again.new) == (3, 3), "the 120 px high images no longer count"
    assert sorted(engine.hits) == ["large3.jpg", "large4.jpg", "large5.jpg"]
    assert len(assert_consistent(tmp_path, "cat")) == 6  # nothing kept earlier is removed
