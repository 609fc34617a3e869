"""Where the sharded pack reads and writes: a local path, or a URL (gs://, s3://, azfs://, hdfs://:
any scheme Apache Beam's FileSystems resolve) read and written through those FileSystems, so that
workers that share no disk (Dataflow's) reach SOURCE, the work folder and DIR alike.

Both are plain strings here, and each function takes either: a local path keeps the toolkit's own
rules (atomic writes, never through a link). Nothing seeks in a remote file: a reader that needs a
few lines at random reads a local copy (:func:`local_copy`), since an object store's reader fetches
a buffer of megabytes from wherever it is sent.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..core import images
from ..core.errors import ToolkitError, first_line
from ..core.files import atomic_path, glob_escape, is_abandoned

BEAM_MISSING = "the sharded pack runs on Apache Beam: pip install 'toolkit-imageclass[scale]'"
#: A path with a scheme, as Beam's FileSystems tell one.
_URL = re.compile(r"(?P<scheme>[a-zA-Z][-a-zA-Z0-9+.]*)://")
#: What Beam needs for each scheme it knows: its extra, and a module that the extra installs.
EXTRAS = {"gs": ("gcp", "google.cloud.storage"), "s3": ("aws", "boto3"),
          "azfs": ("azure", "azure.storage.blob"), "hdfs": ("hadoop", "hdfs")}


def is_url(where: str | os.PathLike) -> bool:
    return isinstance(where, str) and _URL.match(where) is not None


def checked(where: str | os.PathLike) -> str | os.PathLike:
    """`where` itself if it is a local path; a URL without its trailing slash once Beam here is
    known to read and write it (its file system registered, its client library installed), or
    else one error that says what to install."""
    if not is_url(where):
        return where
    scheme = _URL.match(where)["scheme"]
    url = where.rstrip("/")
    if len(url) <= len(scheme) + 3:
        raise ToolkitError(f"{where}: name a bucket and a folder in it, e.g. {scheme}://my-bucket/datasets")
    extra, module = EXTRAS.get(scheme, (None, None))
    if not _has_filesystem(scheme) or (module is not None and not _installed(module)):
        fix = (f"pip install 'apache-beam[{extra}]'" if extra else "give a local path, or a URL "
               "Beam reads: gs://, s3://, azfs:// or hdfs:// (apache-beam[gcp], [aws], [azure], [hadoop])")
        raise ToolkitError(f"{where}: Apache Beam here has no file system for {scheme}:// URLs; {fix}")
    return url


def _has_filesystem(scheme: str) -> bool:
    import_beam()
    from apache_beam.io.filesystem import FileSystem

    return any(fs.scheme() == scheme for fs in FileSystem.get_all_subclasses())


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def import_beam():
    """Apache Beam, imported without the warnings it logs about cloud clients it does not find
    (its FileSystems too: importing them registers the file systems this install has)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        import apache_beam
        import apache_beam.io.filesystems
        import apache_beam.options.pipeline_options  # noqa: F401
    except ImportError:
        raise ToolkitError(BEAM_MISSING) from None
    finally:
        logging.disable(disabled)
    return apache_beam


def _filesystems():
    return import_beam().io.filesystems.FileSystems


def _raw():
    """Beam's "no compression": by default it would decompress a file named *.gz as it reads."""
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


def use_options(options) -> None:
    """The pipeline's options (a project, credentials, a region) for the driver's own reads and
    writes too, before the pipeline exists."""
    _filesystems().set_options(options)


# --------------------------------------------------------------------------- files, either kind

def join(folder: str | os.PathLike, name: str) -> str:
    """`name` (with / between its parts) in `folder`, a path or a URL."""
    return f"{os.fspath(folder).rstrip('/')}/{name}"


def open_read(path: str) -> BinaryIO:
    """A file to read from start to end."""
    if not is_url(path):
        return open(path, "rb")
    return _filesystems().open(path, compression_type=_raw())


@contextlib.contextmanager
def writing(path: str, *, atomic: bool = True) -> Iterator[BinaryIO]:
    """A new file at `path` to write. A local one is written whole or not at all
    (:func:`toolkit.core.files.atomic_path`) unless not `atomic` (a work file that nobody reads
    while it is written); an object at a URL appears when it is closed, and is removed if the
    writing fails."""
    if not is_url(path):
        with (atomic_path(path) if atomic else contextlib.nullcontext(path)) as tmp, open(tmp, "wb") as f:
            yield f
        return
    filesystems = _filesystems()
    with url_errors(path, "write"):
        f = filesystems.create(path, compression_type=_raw())
    try:
        yield f
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
            filesystems.delete([path])
        raise
    with url_errors(path, "write"):
        f.close()


def read_image(path: str, checks: images.Checks) -> bytes:
    """An image file's bytes, refused (:class:`images.Unusable`) as a local file is refused by
    :func:`toolkit.core.images.read_file`: too large before it is read, unreadable."""
    if not is_url(path):
        return images.read_file(path, checks)
    try:
        with open_read(path) as f:
            images.check_size(f.seek(0, io.SEEK_END), checks)
            f.seek(0)
            return images.read_at_most(f, checks)
    except images.Unusable:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the store's client raises: the file is unreadable
        raise images.Unusable("unreadable", first_line(e)) from None


_copies: dict[str, str] = {}
_copies_lock = threading.Lock()


def local_copy(path: str) -> str:
    """A path on this machine to read and seek in the file at `path`: `path` itself if it is
    local; a URL's file downloaded once per process (into a folder removed when it exits)."""
    if not is_url(path):
        return path
    with _copies_lock:
        if path not in _copies:
            target = str(_copies_in() / secrets.token_hex(8))
            with open_read(path) as f, open(target, "wb") as copy:
                shutil.copyfileobj(f, copy, 2**20)
            _copies[path] = target
        return _copies[path]


def forget(folder: str) -> None:
    """Remove the local copies of the files under `folder` (a finished pack's work folder)."""
    with _copies_lock:
        for url in [u for u in _copies if u.startswith(folder.rstrip("/") + "/")]:
            with contextlib.suppress(OSError):
                os.unlink(_copies.pop(url))


_scratch: set[str] = set()  # the scratch folders of this process, which no scan removes
_copies_folder: list[Path] = []  # this process's folder of local copies, made on first use


def _copies_in() -> Path:
    if not _copies_folder:
        _copies_folder.append(scratch_folder("copies"))
        atexit.register(remove_scratch, _copies_folder[0])
    return _copies_folder[0]


def scratch_folder(kind: str) -> Path:
    """A new folder of this process in the system's temporary folder (removed by its owner);
    what a killed process left there is removed first."""
    tmp = Path(tempfile.gettempdir())
    for leftover in tmp.glob(f".toolkit-{kind}.*.part"):
        if (leftover.name not in _scratch and is_abandoned(leftover.name) and leftover.is_dir()
                and not leftover.is_symlink()):
            shutil.rmtree(leftover, ignore_errors=True)
    folder = tmp / f".toolkit-{kind}.{os.getpid()}-{secrets.token_hex(4)}.part"
    folder.mkdir(mode=0o700)
    _scratch.add(folder.name)
    return folder


def remove_scratch(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _scratch.discard(folder.name)


# --------------------------------------------------------------------------- URLs only

@contextlib.contextmanager
def url_errors(url: str, doing: str) -> Iterator[None]:
    """A failure of the store at `url` (no such bucket, no access) as one line that names it."""
    try:
        yield
    except (OSError, ValueError) as e:  # Beam's BeamIOError is an OSError
        raise ToolkitError(f"cannot {doing} {url}: {first_line(e)}; check the URL and your access to "
                           "it") from None


def glob(folder: str, pattern: str) -> list[str]:
    """The files in `folder` (a path or a URL) whose names match `pattern`, sorted."""
    if not is_url(folder):
        return sorted(str(p) for p in Path(folder).glob(pattern))
    with url_errors(folder, "list"):
        found = _filesystems().match([f"{glob_escape(folder)}/{pattern}"])[0].metadata_list
    return sorted(m.path for m in found)


def files_under(url: str) -> list[str]:
    """The names (relative to `url`, / between their parts) of every file under the URL `url`,
    folders' placeholders among them (:func:`is_placeholder`)."""
    prefix = f"{url}/"
    return [path[len(prefix):] for path in glob(url, "**") if path.startswith(prefix)]


def is_placeholder(name: str) -> bool:
    """True for the name of a folder's placeholder: the empty object `DIR/` that a store's console
    makes for a new folder (named "" under DIR, `sub/` below it). It holds no file."""
    return name == "" or name.endswith("/")


def read_if_any(url: str) -> bytes | None:
    """The bytes of the file at the URL `url`; None if there is none."""
    filesystems = _filesystems()
    with url_errors(url, "read"):
        if not filesystems.exists(url):
            return None
        with open_read(url) as f:
            return f.read()


def upload(local: Path, url: str) -> None:
    with open(local, "rb") as f, writing(url) as out:
        shutil.copyfileobj(f, out, 2**20)


def move(pairs: list[tuple[str, str]]) -> None:
    """Rename each (from, to) URL (an object store copies and deletes)."""
    if pairs:
        with url_errors(pairs[0][1], "write"):
            _filesystems().rename([a for a, _ in pairs], [b for _, b in pairs])


def delete(urls: list[str]) -> None:
    """Delete these files; never a folder's placeholder, which a store deletes with every file
    under it (Beam's GCS file system deletes `gs://b/DIR/` recursively)."""
    urls = [url for url in urls if not is_placeholder(url)]
    if urls:
        with url_errors(urls[0], "delete"):
            _filesystems().delete(urls)


def remove_tree(url: str) -> None:
    """Delete every file under the URL `url`, and the folder itself where the store has folders."""
    delete([join(url, name) for name in files_under(url)])
    with url_errors(url, "delete"):
        if _filesystems().exists(url):
            _filesystems().delete([url])
