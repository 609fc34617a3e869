"""Bad input gets one clear line and loses nothing; interruptions leave nothing partial."""

import email.utils
import io
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import keras
import numpy as np
import pytest
import requests
from PIL import Image

from conftest import distinct_image, encode, make_class_folders
from fake_engine import Item
from helpers import (
    FAST,
    assert_consistent,
    assert_no_traceback,
    assert_one_error_line,
    run_cli,
    write_archive,
)
from toolkit.collect.crawler import crawl
from toolkit.collect.fetch import DownloadFailed, FetchOptions, download
from toolkit.core import images
from toolkit.core.errors import ToolkitError
from toolkit.core.files import write_text
from toolkit.data.npz import load_archive
from toolkit.data.packer import pack

# ---- crawl

def test_crawl_backs_off_on_429_500_and_503_honouring_a_bounded_retry_after(engine, tmp_path):
    engine.add_images("cat", range(0, 2))
    engine.add("cat", "busy.jpg", Item(b"", status=429, headers={"Retry-After": "1"}))
    engine.add("cat", "broken.jpg", Item(b"", status=500))
    engine.add("cat", "down.jpg", Item(b"", status=503, headers={"Retry-After": "3600"}))
    fetch = FetchOptions(timeout=2, total_timeout=3, retries=2, backoff=0.1, max_wait=1.2)
    report = crawl(["cat"], root=tmp_path, per_class=5, fetch=fetch, engines=["bing"])
    assert report.classes[0].failed == {"http_429": 1, "http_500": 1, "http_503": 1}

    def gaps(name):
        times = engine.items[name].times
        assert len(times) == 3, f"{name}: tried, retried twice, left"
        return [b - a for a, b in zip(times, times[1:])]

    assert gaps("broken.jpg")[0] >= 0.1 and gaps("broken.jpg")[1] >= 0.2  # back-off, doubled
    assert all(g >= 0.95 for g in gaps("busy.jpg"))    # Retry-After: 1 (back-off alone: 0.1, 0.2)
    assert all(1.15 <= g < 3 for g in gaps("down.jpg"))  # Retry-After: 3600, capped at 1.2
    assert not (tmp_path / "cat.rejected.jsonl").exists()  # may work later: not refused for good


class RecordedWaits(threading.Event):
    """A download's cancel event that records each back-off the download waits, and returns
    at once (never cancelled): the waits are then exact, and take no time."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def wait(self, timeout=None):
        self.seconds.append(timeout)
        return False


def test_back_off_starts_at_one_second_doubles_up_to_thirty_and_honours_retry_after_up_to_thirty(
        engine):
    """The documented back-off (README: 1 s, doubling; Retry-After honoured up to 30 s), with
    the default options; a change of any number fails here."""
    session = requests.Session()

    def waits(item: Item, **options) -> list[float]:
        url = engine.add("x", f"item{len(engine.items)}.jpg", item)
        recorded = RecordedWaits()
        with pytest.raises(DownloadFailed, match=f"http_{item.status}"):
            download(url, session, images.Checks().max_bytes, replace(FetchOptions(), **options),
                     recorded)
        assert item.calls == len(recorded.seconds) + 1, "one try after each wait"
        return recorded.seconds

    assert waits(Item(status=503)) == [1, 2]  # the defaults: two retries, 1 s then 2 s
    assert waits(Item(status=500), retries=7) == [1, 2, 4, 8, 16, 30, 30]
    assert waits(Item(status=429, headers={"Retry-After": "7"})) == [7, 7]
    assert waits(Item(status=429, headers={"Retry-After": "0"})) == [0, 0]
    assert waits(Item(status=503, headers={"Retry-After": "3600"})) == [30, 30]
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert waits(Item(status=503, headers={"Retry-After": in_a_minute})) == [30, 30]
    in_5_seconds = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert all(3 <= w <= 5 for w in waits(Item(status=503, headers={"Retry-After": in_5_seconds})))
    assert waits(Item(status=404)) == []  # final: never retried


def test_default_download_limits_are_the_documented_ones(engine, tmp_path):
    """README: 10 s to connect or between bytes, 60 s in all, 64 MiB, 5 redirects. The CLI
    crawls with these defaults (only --timeout changes one): 5 redirects are followed and a
    6th is refused, 64 MiB is downloaded and one byte more is refused."""
    defaults = FetchOptions()
    assert (defaults.timeout, defaults.total_timeout, defaults.max_redirects) == (10, 60, 5)
    assert images.Checks().max_bytes == 64 * 2**20
    assert "[default: 10.0;" in " ".join(run_cli("crawl", "--help").output.split())
    jpeg = distinct_image(1)
    engine.add("cat", "five.jpg", Item(distinct_image(2), redirects=5))
    engine.add("cat", "six.jpg", Item(distinct_image(3), redirects=6))
    engine.add("cat", "at-limit.jpg", Item(jpeg + b"\0" * (64 * 2**20 - len(jpeg))))
    engine.add("cat", "over-limit.jpg", Item(jpeg + b"\0" * (64 * 2**20 + 1 - len(jpeg))))
    result = run_cli("crawl", "cat", "--root", tmp_path, "--per-class", 4, "--engine", "bing")
    assert_no_traceback(result)
    kept = {e["url"].rsplit("/", 1)[1] for e in assert_consistent(tmp_path, "cat")}
    assert kept == {"five.jpg", "at-limit.jpg"}, result.output
    refused = {json.loads(line)["url"].rsplit("/", 1)[1]: json.loads(line)["reason"]
               for line in (tmp_path / "cat.rejected.jsonl").read_text().splitlines()}
    assert refused == {"six.jpg": "redirects", "over-limit.jpg": "too_large"}
    assert engine.hits["six.jpg"] == 6  # the 6th redirect is not followed


def test_a_server_that_goes_quiet_times_out_after_the_idle_limit_not_the_total(engine, tmp_path):
    """`timeout` bounds the wait between two bytes, `total_timeout` the whole download (a
    drip that never pauses that long)."""
    engine.add("cat", "quiet.jpg", Item(distinct_image(1), behaviour="stall"))
    engine.add("cat", "drip.jpg", Item(b"\xff\xd8" * 150, behaviour="slow"))
    session = requests.Session()
    for name, limits, seconds in (("quiet.jpg", dict(timeout=0.5, total_timeout=30), (0.5, 3)),
                                  ("drip.jpg", dict(timeout=0.5, total_timeout=1.5), (1.5, 4))):
        start = time.monotonic()
        with pytest.raises(DownloadFailed, match="timeout"):
            download(f"{engine.url}/img/{name}", session, images.Checks().max_bytes,
                     FetchOptions(retries=0, **limits))
        assert seconds[0] <= time.monotonic() - start < seconds[1], name


def test_crawl_warns_when_it_cannot_remember_refused_urls(engine, tmp_path):
    engine.add_images("cat", range(0, 2))
    engine.add("cat", "gone.jpg", Item(status=404))
    (tmp_path / "cat.rejected.jsonl").mkdir()  # any write to it fails
    report = crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST, engines=["bing"])
    assert report.classes[0].failed == {"http_404": 1}
    assert [w for w in report.warnings if "cat.rejected.jsonl" in w] == [
        "cannot write cat.rejected.jsonl (Is a directory): URLs refused for good will be "
        "fetched again by the next run"]


def test_crawl_caps_a_body_without_length(engine, tmp_path):
    engine.add_images("cat", range(0, 2))
    engine.add("cat", "endless.jpg", Item(behaviour="endless"))
    report = crawl(["cat"], root=tmp_path, per_class=5, fetch=FAST, engines=["bing"],
                   checks=images.Checks(max_bytes=2 * 2**20))
    assert report.classes[0].failed == {"too_large": 1} and report.classes[0].kept == 2


def test_crawl_stops_cleanly_when_the_disk_is_full(engine, tmp_path):
    rng = np.random.default_rng(0)
    for s in range(0, 12):  # noisy pictures: no file compresses below the limit
        grid = np.asarray(Image.open(io.BytesIO(distinct_image(s, (400, 300), "PNG"))), dtype=int)
        noisy = np.clip(grid + rng.integers(-25, 25, grid.shape), 0, 255).astype(np.uint8)
        engine.add("cat", f"big{s}.jpg", Item(encode(Image.fromarray(noisy), "JPEG", quality=95)))
    crawl(["cat"], root=tmp_path, per_class=3, fetch=FAST, engines=["bing"])
    limit = 60_000  # a file may not grow past this: every image is bigger

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    assert all(p.stat().st_size > limit for p in (tmp_path / "cat").iterdir())
    process = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "crawl", "cat", "--root", str(tmp_path),
         "--per-class", "10", "--engine", "bing"], preexec_fn=small_disk, capture_output=True,
        text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert process.returncode == 1, process.stderr
    assert "crawl stopped: cannot write" in process.stderr and "Traceback" not in process.stderr
    assert len(assert_consistent(tmp_path, "cat")) == 3


# ---- pack

def test_pack_refuses_a_class_with_no_usable_image(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": range(5), "b": range(10, 15)})
    (src / "junk").mkdir()
    (src / "junk" / "x.jpg").write_bytes(b"<html>")
    result = run_cli("pack", src, "--out", tmp_path / "x.npz", "--per-class", 4, "--size", 32,
                    "--allow-fewer")
    assert_one_error_line(result, "class junk has fewer than 2 usable images")


def test_pack_reports_dangling_links_and_special_files(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": range(5), "b": range(10, 15)})
    (src / "a" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(src / "b" / "pipe.jpg")
    report = pack(src, tmp_path / "x.npz", per_class=5, size=32)
    unreadable = {f.name: f.detail for f in report.files if f.status == "unreadable"}
    assert set(unreadable) == {"a/gone.jpg", "b/pipe.jpg"}


def test_pack_interrupted_leaves_no_partial_file_and_the_old_archive_whole(tmp_path):
    src = make_class_folders(tmp_path / "src", {"a": range(0, 200), "b": range(300, 500),
                                                "c": range(600, 800)}, size=(300, 240))
    out = tmp_path / "x.npz"
    pack(src, out, per_class=20, size=32)
    before = out.read_bytes()
    for sig in (signal.SIGINT, signal.SIGKILL):
        process = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "pack", str(src), "--out",
                                    str(out), "--per-class", "200", "--force"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and not list(tmp_path.glob(".x.npz.*.part*")):
            time.sleep(0.002)
        assert list(tmp_path.glob(".x.npz.*.part*")), "the archive was never being written"
        process.send_signal(sig)
        output, _ = process.communicate(timeout=60)
        assert out.read_bytes() == before, "the older archive must survive"
        if sig == signal.SIGINT:
            assert process.returncode == 130 and "Interrupted" in output, output
            assert not list(tmp_path.glob(".*")), "no partial file after Ctrl-C"
    pack(src, out, per_class=200, size=32, force=True)  # a rerun cleans up and converges
    assert not list(tmp_path.glob(".*"))
    with np.load(out) as a:
        assert len(a["y_train"]) == 480


def test_two_processes_writing_one_file_do_not_remove_each_others_partial_file(tmp_path):
    """Two trainings sharing a feature cache write the same files: the second writer cleans
    up only what a killed writer left, never the file a live one is still writing."""
    target = tmp_path / "shared.json"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom toolkit.core.files import atomic_path\n"
         f"with atomic_path({str(target)!r}) as tmp:\n"
         "    tmp.write_text('slow')\n    print('writing', flush=True)\n    time.sleep(3)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert writer.stdout.readline().strip() == "writing"
    dead = tmp_path / f".shared.json.{2**22 + 7}-0123abcd.part.json"  # no such process
    dead.write_text("left by a kill")
    # a container's toolkit is pid 1 at every run: a leftover can carry this process's pid
    ours = tmp_path / f".shared.json.{os.getpid()}-89abcdef.part.json"
    ours.write_text("left by an earlier run with the same pid")
    write_text(target, "fast")
    output, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0, output
    assert target.read_text() == "slow"  # the live writer's rename still worked
    assert not dead.exists() and not ours.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


# ---- archives handed to train / evaluate

def bad_archives(tmp_path):
    good = write_archive(tmp_path / "good.npz", n_per_class=6)
    arrays = dict(np.load(good))
    cases = {}

    def save(name, **changes):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **{**arrays, **changes})
        cases[name] = path

    (tmp_path / "text.npz").write_text("hello")
    cases["text"] = tmp_path / "text.npz"
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["cut"] = tmp_path / "cut.npz"
    np.savez(tmp_path / "nolabels.npz", X_train=arrays["X_train"], X_test=arrays["X_test"])
    cases["nolabels"] = tmp_path / "nolabels.npz"
    save("floats", X_train=arrays["X_train"].astype("float32"))
    save("gray", X_train=arrays["X_train"][..., 0])
    save("sizes", X_test=arrays["X_test"][:, :16, :16])
    save("outside", y_train=arrays["y_train"] + 5)
    save("negative", y_test=arrays["y_test"] - 1)
    save("short", y_train=arrays["y_train"][:-1])
    save("names", class_names=np.array(["a", "b"]))
    save("objects", class_names=np.array(["a", None, "c"], dtype=object))
    save("meta", meta=np.array('{"fit": "crop", "si'))
    save("fit", meta=np.array('{"fit": "squash"}'))
    return cases


EXPECTED = {"text": "not an .npz archive", "cut": "not an .npz archive", "nolabels": "lacks y_train",
            "floats": "dtype float32", "gray": "shape", "sizes": "X_test images are",
            "outside": "outside the 3 class_names", "negative": "labels must be",
            "short": "labels for", "names": "outside the 2 class_names", "objects": "pickle",
            "meta": "meta is damaged", "fit": "meta says fit"}


def test_every_bad_archive_is_one_clear_error(tmp_path):
    for name, path in bad_archives(tmp_path).items():
        with pytest.raises(ToolkitError, match=EXPECTED[name]):
            load_archive(path)
        result = run_cli("train", "--strategy", "cnn", "--data", path, "--out", tmp_path / f"run-{name}")
        assert_one_error_line(result, EXPECTED[name])
        assert not (tmp_path / f"run-{name}").exists(), "nothing written for a bad archive"


def test_evaluate_refuses_what_is_not_a_model(tmp_path):
    data = write_archive(tmp_path / "d.npz", n_per_class=6)
    (tmp_path / "junk.keras").write_bytes(b"PK\x03\x04 not really")
    assert_one_error_line(run_cli("evaluate", tmp_path / "junk.keras", "--data", data), "not a Keras model")
    assert_one_error_line(run_cli("predict", tmp_path / "missing.keras", data), "does not exist")
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x[:, 0, 0, :])(inputs)).save(tmp_path / "code.keras")
    assert_one_error_line(run_cli("evaluate", tmp_path / "code.keras", "--data", data), "refusing it")


def test_evaluate_checks_the_archive_fits_the_model(finished_run, tmp_path):
    run = finished_run[0]  # 32 px, square / disc / bar
    other = write_archive(tmp_path / "other.npz", n_per_class=8, size=40)
    assert_one_error_line(run_cli("evaluate", run, "--data", other), "pack with --size 32")
    renamed = write_archive(tmp_path / "renamed.npz", n_per_class=8,
                            class_names=np.array(["x", "y", "z"]))
    assert_one_error_line(run_cli("evaluate", run, "--data", renamed), "was trained on")


def test_a_batch_larger_than_the_data_is_a_warning(tmp_path, caplog):
    from toolkit.training.trainer import train
    data = write_archive(tmp_path / "d.npz", n_per_class=8)
    run = train(data, "cnn", out=tmp_path / "run", epochs=1, weights="none", verbose=0,
                batch_size=512)
    assert "larger than the" in caplog.text and run.metrics["global_batch_size"] < 512


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs 0"), (["--batch-size", "0"], "--batch-size 0"),
    (["--validation-split", "1"], "--validation-split 1"), (["--learning-rate", "-1"], "must be positive"),
    (["--weights", "/no/such.h5", "--strategy", "extract"], "no such file"),
    (["--distribute", "multiworker"], "needs TF_CONFIG"),
])
def test_train_option_errors(tmp_path, monkeypatch, args, message):
    data = write_archive(tmp_path / "d.npz", n_per_class=6)
    base = ["train", "--data", data, "--out", tmp_path / "run"]
    if "--strategy" not in args:
        base += ["--strategy", "cnn"]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert_one_error_line(run_cli(*base, *args), message)
    assert not (tmp_path / "run").exists()
