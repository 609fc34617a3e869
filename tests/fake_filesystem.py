"""fakefs://: a Beam file system of a made-up scheme over a folder on disk, so that a test packs
from and to URLs that only Beam's FileSystems resolve. Code that used such a URL as a local path
would find nothing there, or make a folder named `fakefs:` in the current one."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator

from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

PREFIX = "fakefs://"
#: A file of this name on disk is its folder's placeholder: the empty object `fakefs://.../DIR/`
#: that a store's console makes for a new folder, listed under DIR as a file named "".
PLACEHOLDER = ".fakefs-folder-placeholder"


class FakeFileSystem(LocalFileSystem):
    """fakefs://NAME is ROOT/NAME on disk; ROOT (an absolute path) is set by the test. Beam finds
    a FileSystem by its scheme among FileSystem's subclasses: defining this class registers it,
    in this process (a pack with workers=1 runs its steps here). As Beam's GCS file system does,
    it deletes a URL that ends in / (a folder's placeholder) with every file under it."""

    root = ""
    #: Called after each change to the store (a file closed, renamed or deleted), if set.
    after_change = None

    @classmethod
    def changed(cls) -> None:
        if cls.after_change is not None:
            cls.after_change()

    @classmethod
    def scheme(cls):
        return "fakefs"

    def __init__(self, pipeline_options=None):
        super().__init__(pipeline_options)
        self.disk = LocalFileSystem(pipeline_options)

    @classmethod
    def on_disk(cls, url: str) -> str:
        assert cls.root and url.startswith(PREFIX), url
        return f"{cls.root}/{url[len(PREFIX):]}"

    @classmethod
    def url(cls, path: str) -> str:
        assert path.startswith(cls.root + "/"), path
        url = PREFIX + path[len(cls.root) + 1:]
        return url.removesuffix(PLACEHOLDER) if url.endswith(f"/{PLACEHOLDER}") else url

    def _metadata(self, m: FileMetadata) -> FileMetadata:
        return FileMetadata(self.url(m.path), m.size_in_bytes, m.last_updated_in_seconds)

    def join(self, base, *parts):
        return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])

    def split(self, url):
        head, _, tail = url.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, url):
        self.disk.mkdirs(self.on_disk(url))

    def match(self, patterns, limits=None):
        found = self.disk.match([self.on_disk(p) for p in patterns], limits)
        return [MatchResult(p, [self._metadata(m) for m in r.metadata_list]) for p, r in zip(patterns, found)]

    def create(self, url, *args, **kwargs):
        """A file that appears whole when its writer closes it, as an object in a store does."""
        path = self.on_disk(url)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _Upload(path)

    def open(self, url, *args, **kwargs):
        return self.disk.open(self.on_disk(url), *args, **kwargs)

    def copy(self, sources, destinations):
        self.disk.copy([self.on_disk(u) for u in sources], [self.on_disk(u) for u in destinations])

    def rename(self, sources, destinations):
        for source, destination in zip(sources, destinations):  # one at a time, as a store's copies
            self.disk.rename([self.on_disk(source)], [self.on_disk(destination)])
            self.changed()

    def exists(self, url):
        return self.disk.exists(self.on_disk(url))

    def size(self, url):
        return self.disk.size(self.on_disk(url))

    def last_updated(self, url):
        return self.disk.last_updated(self.on_disk(url))

    def checksum(self, url):
        return self.disk.checksum(self.on_disk(url))

    def metadata(self, url):
        return self._metadata(self.disk.metadata(self.on_disk(url)))

    def delete(self, urls):
        for url in urls:
            self.disk.delete([self.on_disk(url)])
            self.changed()


class _Upload(io.FileIO):
    """Written beside the store (ROOT.uploads/), renamed into it when closed."""

    def __init__(self, path: str):
        self.target = path
        os.makedirs(f"{FakeFileSystem.root}.uploads", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f"{FakeFileSystem.root}.uploads")
        os.close(fd)
        super().__init__(tmp, "wb")

    def close(self):
        if not self.closed:
            super().close()
            os.replace(self.name, self.target)
            FakeFileSystem.changed()


_watching: list[list[str]] = []  # what each watching block has found


def _audit(event: str, args: tuple) -> None:
    if _watching and args:
        try:
            path = os.fsdecode(os.fspath(args[0]))
        except TypeError:  # not a path (a file descriptor, code, ...)
            return
        if "fakefs:" in path:
            _watching[-1].append(f"{event} {path}")


sys.addaudithook(_audit)  # for good (a hook cannot be removed): it idles when no block watches


@contextlib.contextmanager
def urls_used_as_paths() -> Iterator[list[str]]:
    """What the block did to a fakefs:// URL as if it were a local path, as Python's audit events
    tell (open, os.mkdir, os.listdir, os.scandir, os.rename, os.remove, shutil.rmtree, ...)."""
    found: list[str] = []
    _watching.append(found)
    try:
        yield found
    finally:
        _watching.remove(found)
