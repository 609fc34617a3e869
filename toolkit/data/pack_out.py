"""Where the sharded pack writes DIR, a local folder or a URL: the checks before anything runs, the
work folder beside DIR that the pipeline writes into, and the finished dataset put in place whole.

Locally the work folder's data/ is renamed into place; an old dataset (--force) goes once the new
one is there. A URL has no folder to rename (an object store holds objects, each written whole), so
the commit marks DIR as being written (:data:`INCOMPLETE`), deletes what it held (dataset.json
first), moves the new files in (dataset.json last) and removes the mark. Every reader keys on
dataset.json (:func:`toolkit.data.shards.is_dataset`): it finds the old dataset, none, or the new
one whole. Pack replaces only what it wrote: a DIR whose dataset.json is of its format
(:func:`toolkit.data.shards.is_toolkit_dataset`), or a marked one without dataset.json; a store's
placeholder for an empty folder (`DIR/`) counts as nothing and is never deleted. A pack killed
half-way leaves its work folder (removed by the next pack of DIR) and, if killed in the commit,
DIR marked and without dataset.json: the next pack takes it over without --force. An object
store has no lock: two packs of one URL at once are not supported.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import OptionError, ToolkitError
from ..core.files import glob_escape, is_abandoned, refuse_link
from ..core.locks import holding
from . import locations, shards

#: The mark of a DIR at a URL whose files a pack is replacing.
INCOMPLETE = ".pack-incomplete"
#: What the driver writes beside the shards, dataset.json last.
DRIVER_FILES = ("report.txt", "report.json", shards.DATASET_FILE)


@dataclass(frozen=True)
class Work:
    """A pack's work folder: where its steps and its driver write."""

    folder: str   # a path or a URL: the listing, the plan, the list of shards written
    shards: str   # where the pipeline writes the shards
    local: Path   # this machine's folder for dataset.json and the report
    log: Path     # Beam's log, on this machine

    @property
    def listing(self) -> str:
        return locations.join(self.folder, "listing.jsonl")


def out_at(out: str | os.PathLike) -> LocalOut | UrlOut:
    """DIR, as checked by :func:`toolkit.data.locations.checked`."""
    return UrlOut(out) if locations.is_url(out) else LocalOut(out)


def _check_name(out: str) -> None:
    if Path(out.rpartition("/")[2]).suffix == ".npz":
        raise OptionError("out", out, "a folder of shards, not an .npz name (or pack an "
                          "archive: --format npz)")


def _not_ours(out: object) -> ToolkitError:
    return ToolkitError(f"{out} holds files that are not a toolkit dataset; choose a new "
                        "folder (pack never replaces what it did not write)")


def _exists(out: object) -> ToolkitError:
    return ToolkitError(f"{out} already exists; pass --force to replace it")


def refuse_overlap(source: str | os.PathLike, out: str | os.PathLike) -> None:
    """SOURCE inside DIR, or DIR inside SOURCE, is one error: the pack would list its own output
    as SOURCE's, or a --force replace SOURCE. Paths are compared resolved (through links), URLs
    by their names."""
    if locations.is_url(source) != locations.is_url(out):
        return
    if locations.is_url(source):
        read, written = f"{source.rstrip('/')}/", f"{out.rstrip('/')}/"
        inside = read.startswith(written) or written.startswith(read)
    else:
        src, dst = Path(source).resolve(), Path(out).resolve()
        inside = src == dst or src in dst.parents or dst in src.parents
    if inside:
        raise ToolkitError(f"--out {out} and SOURCE {source} overlap (one holds the other): write the "
                           "dataset outside SOURCE, to a folder that does not hold it (--force would "
                           "delete SOURCE's files)")


def _held(url: str) -> list[str]:
    """The names of the files under the URL `url`, without folders' placeholders."""
    return [name for name in locations.files_under(url) if not locations.is_placeholder(name)]


class LocalOut:
    """A folder on this machine (or mounted by every worker at the same path)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)

    def __str__(self) -> str:
        return str(self.out)

    def check(self, force: bool) -> None:
        out = self.out
        _check_name(str(out))
        if not out.parent.is_dir():
            raise OptionError("out", str(out), f"folder {out.parent} does not exist; create it first")
        refuse_link(out)
        if out.exists() and not out.is_dir():
            raise OptionError("out", str(out), "is a file; a sharded dataset is a folder")
        if out.is_dir() and any(out.iterdir()):
            if not shards.is_toolkit_dataset(out):
                raise _not_ours(out)
            if not force:
                raise _exists(out)

    def lock(self) -> contextlib.AbstractContextManager:
        return holding(self.out, f"the dataset {self.out}")

    def start(self) -> Work:
        """The work folder, once what a killed pack of DIR left beside it (its work folder, or
        the old dataset it was replacing) is removed: the lock is ours, so no live pack is
        writing them."""
        out = self.out
        for leftover in out.parent.glob(f".{glob_escape(out.name)}.*.part*"):
            if leftover.is_dir() and not leftover.is_symlink() and is_abandoned(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)
        work = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
        (work / "data").mkdir(parents=True)
        return Work(str(work), str(work / "data"), work / "data", work / "beam.log")

    def commit(self, work: Work) -> None:
        """Move the finished folder to DIR; a dataset there already (--force) goes only once
        the new one is complete, and is removed after."""
        old = None
        if self.out.exists():
            old = Path(f"{work.folder}.old")
            os.replace(self.out, old)
        os.replace(work.shards, self.out)
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)

    def discard(self, work: Work) -> None:
        shutil.rmtree(work.folder, ignore_errors=True)


class UrlOut:
    """A folder at a URL, read and written through Beam's FileSystems."""

    def __init__(self, url: str):
        self.url = url
        self.parent, _, self.name = url.rpartition("/")

    def __str__(self) -> str:
        return self.url

    def check(self, force: bool) -> None:
        _check_name(self.url)
        if "/" not in self.url.split("://", 1)[1]:
            raise OptionError("out", self.url, f"name a folder in it, e.g. {self.url}/animal/")
        if any(c in self.url for c in "*?["):
            raise OptionError("out", self.url, "Beam's FileSystems take *, ? and [ as wildcards; "
                              "choose a name without them")
        held = set(_held(self.url))
        if not held:
            return
        if shards.is_toolkit_dataset(self.url):
            if not force:
                raise _exists(self.url)
        elif INCOMPLETE not in held or shards.DATASET_FILE in held:  # not a pack killed in its commit
            raise _not_ours(self.url)

    def lock(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def start(self) -> Work:
        """The work folder, once every work folder of DIR beside it is removed: a killed pack's
        (an object store has no lock to tell a live pack's)."""
        ours = re.compile(rf"\.{re.escape(self.name)}\.[0-9]+-[0-9a-f]{{8}}\.part")
        found = locations.glob(self.parent, glob_escape(f".{self.name}.") + "*.part/**")
        for folder in sorted({path[len(self.parent) + 1:].split("/", 1)[0] for path in found}):
            if ours.fullmatch(folder):
                locations.remove_tree(f"{self.parent}/{folder}")
        folder = f"{self.parent}/.{self.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
        local = locations.scratch_folder("pack")
        return Work(folder, f"{folder}/data", local, local / "beam.log")

    def commit(self, work: Work) -> None:
        """Put the shards (in the work folder) and the driver's files (on this machine) in DIR,
        dataset.json last, with DIR marked while it holds no dataset."""
        new = locations.files_under(work.shards)
        with locations.writing(f"{self.url}/{INCOMPLETE}"):
            pass
        old = [name for name in _held(self.url) if name != INCOMPLETE]
        if shards.DATASET_FILE in old:
            locations.delete([f"{self.url}/{shards.DATASET_FILE}"])
        locations.delete([f"{self.url}/{name}" for name in old if name != shards.DATASET_FILE])
        locations.move([(f"{work.shards}/{name}", f"{self.url}/{name}") for name in new])
        for name in DRIVER_FILES:
            locations.upload(work.local / name, f"{self.url}/{name}")
        locations.delete([f"{self.url}/{INCOMPLETE}"])

    def discard(self, work: Work) -> None:
        with contextlib.suppress(ToolkitError):  # what is left, the next pack removes
            locations.remove_tree(work.folder)
        locations.forget(work.folder)
        locations.remove_scratch(work.local)
