"""Decode, verify, convert, hash and resize images: the one place that decides "usable".

`crawl` calls :func:`decode` on downloaded bytes and `pack` calls it on files, with the
same :class:`Checks`, so an image that crawl keeps is exactly an image that pack keeps,
and both compute the same perceptual hash for it.

Everything here treats its input as hostile: the file size and pixel count are bounded
before any pixel is decoded, only raster formats that Pillow decodes itself are opened
(no EPS/Ghostscript), and every decoder failure becomes an :class:`Unusable` with a reason.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import imagehash
import numpy as np
from PIL import Image, ImageOps

from .errors import first_line

FITS = ("crop", "pad", "stretch")

#: Formats that are opened at all. Anything else (SVG, PDF, EPS, text) is "not an image".
#: (MPO, the multi-picture JPEG of cameras, opens through JPEG; HEIF, the iPhone's HEIC,
#: through pillow-heif.)
RASTER_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF", "HEIF")

#: Reasons an image is not usable, with the words a report shows for each.
REASONS = {
    "unreadable": "could not be read",
    "empty": "empty file",
    "not_image": "not an image",
    "corrupt": "truncated or corrupt",
    "too_small": "too small",
    "too_large": "too large (file size or pixel count; a possible decompression bomb)",
    "unsupported": "unsupported pixel format",
}

#: JPEGs are decoded at the smallest DCT scale whose sides are at least this large
#: (or the target size, if larger). The perceptual hash is taken from this decode, so it
#: depends on the file alone, never on the size a caller asks for.
HASH_DECODE_SIDE = 224

ORIENTATION = 0x0112  # the EXIF tag

_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp",
               "BMP": "bmp", "TIFF": "tif", "PPM": "ppm", "AVIF": "avif", "HEIF": "heic"}


@dataclass(frozen=True)
class Checks:
    """What makes an image usable. The defaults are what `crawl` and `pack` use."""

    min_side: int = 100
    max_pixels: int = 64_000_000
    max_bytes: int = 64 * 2**20


@dataclass(frozen=True)
class ImageInfo:
    """Identity and shape of a usable image."""

    sha256: str
    phash: int
    width: int
    height: int
    format: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.format, "img")


class Unusable(Exception):
    """An image that cannot be used, with a reason code from :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{REASONS[reason]}: {detail}" if detail else REASONS[reason])
        self.reason = reason
        self.detail = detail


def size_problem(width: int, height: int, checks: Checks) -> Unusable | None:
    """Why an image of this size is not usable (too many pixels, or a side too short), or
    None: the one size rule, for pixels being decoded and for sizes a manifest recorded."""
    if width * height > checks.max_pixels:
        return Unusable("too_large", f"{width}x{height} pixels > {checks.max_pixels}")
    if min(width, height) < checks.min_side:
        return Unusable("too_small", f"{width}x{height}, shorter side < {checks.min_side} px")
    return None


def read_file(path: str | os.PathLike, checks: Checks = Checks()) -> bytes:
    """Read a whole file, refusing non-regular and oversized files before reading them."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Unusable("unreadable", "not a regular file")
        check_size(st.st_size, checks)
        with open(path, "rb") as f:
            return read_at_most(f, checks)
    except OSError as e:
        raise Unusable("unreadable", e.strerror or type(e).__name__) from None


def check_size(size: int, checks: Checks = Checks()) -> None:
    """Refuse a file of `size` bytes that is too large, before it is read."""
    if size > checks.max_bytes:
        raise Unusable("too_large", f"{size} bytes > {checks.max_bytes}")


def read_at_most(f: BinaryIO, checks: Checks = Checks()) -> bytes:
    """The bytes of an open file, refused if they turn out more than the limit (a file that grew
    since its size was checked)."""
    data = f.read(checks.max_bytes + 1)
    if len(data) > checks.max_bytes:
        raise Unusable("too_large", f"more than {checks.max_bytes} bytes")
    return data


def decode(data: bytes, checks: Checks = Checks(), size: int | None = None,
           fit: str = "crop") -> tuple[ImageInfo, np.ndarray | None]:
    """Verify `data` as a usable image; return its identity and, if `size` is given,
    its pixels as a (size, size, 3) uint8 RGB array.

    Raises :class:`Unusable` for anything that is not a usable image.
    """
    if not data:
        raise Unusable("empty")
    if len(data) > checks.max_bytes:
        raise Unusable("too_large", f"{len(data)} bytes > {checks.max_bytes}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    sha256 = hashlib.sha256(data).hexdigest()
    side = max(size or 0, HASH_DECODE_SIDE)
    image, fmt, (width, height) = _open(data, checks, side)
    with DECODING.hold(image.size[0] * image.size[1]):
        image = _decoded_rgb(image)
        if side == HASH_DECODE_SIDE or fmt not in ("JPEG", "MPO"):
            hash_source = image
        else:  # a larger draft than the hash decode: decode again at the hash scale
            hash_source = _decoded_rgb(_open(data, checks, HASH_DECODE_SIDE)[0])
        info = ImageInfo(sha256, perceptual_hash(hash_source), width, height, fmt)
        return info, (None if size is None else resize(image, size, fit))


def decode_pixels(data: bytes, checks: Checks, size: int, fit: str = "crop") -> tuple[str, np.ndarray]:
    """The SHA-256 and the (size, size, 3) pixels of an image :func:`decode` has verified: the
    same pixels as its, without the perceptual hash (a second pass that only needs pixels).

    Raises :class:`Unusable` as :func:`decode` does."""
    if not data:
        raise Unusable("empty")
    image, _, _ = _open(data, checks, max(size, HASH_DECODE_SIDE))
    with DECODING.hold(image.size[0] * image.size[1]):
        return hashlib.sha256(data).hexdigest(), resize(_decoded_rgb(image), size, fit)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash's phash) as an int; near-identical pictures
    differ in few bits."""
    return int(str(imagehash.phash(image)), 16)


def resize(image: Image.Image, size: int, fit: str = "crop") -> np.ndarray:
    """Resize an RGB image to (size, size, 3) uint8.

    crop: keep the aspect ratio, fill the square, cut the centre of the long side.
    pad: keep the aspect ratio, fit inside the square, pad with black.
    stretch: ignore the aspect ratio.
    """
    w, h = image.size
    resample = Image.Resampling.BILINEAR  # antialiased; what Keras uses when it loads images
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        out = image.resize((size, size), resample, box=(left, top, left + side, top + side),
                           reducing_gap=3.0)
    elif fit == "stretch":
        out = image.resize((size, size), resample, reducing_gap=3.0)
    elif fit == "pad":
        scale = size / max(w, h)
        inner = (max(1, round(w * scale)), max(1, round(h * scale)))
        out = Image.new("RGB", (size, size))
        out.paste(image.resize(inner, resample, reducing_gap=3.0),
                  ((size - inner[0]) // 2, (size - inner[1]) // 2))
    else:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    return np.asarray(out, dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB: transparency on white, 16-bit and float scaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Map 16-bit, 32-bit and float grayscale to 0..255 by its nominal range.

    Done in bands of rows, so that a 64 Mpx image needs a few MB of float temporaries rather
    than several full-size float64 copies (about 1.5 GB), times the threads decoding."""
    bands = [slice(i, i + _BAND_ROWS) for i in range(0, a.shape[0], _BAND_ROWS)]

    def finite(band: slice) -> np.ndarray:
        return np.nan_to_num(a[band].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)

    top, low = 0.0, 0.0
    if a.size:
        ranges = [(float(f.max()), float(f.min())) for f in map(finite, bands)]
        top, low = max(r[0] for r in ranges), min(r[1] for r in ranges)
    multiplier, divisor = 1.0, 1.0
    if a.dtype.kind == "f" and a.size and top <= 1.0 and low >= 0.0:
        multiplier = 255.0  # float intensities in 0..1
    elif top > 255:
        divisor = 257.0 if top <= 65535 else top / 255.0  # 16-bit, or wider
    out = np.empty(a.shape, np.uint8)
    for band in bands:
        scaled = finite(band)
        if multiplier != 1.0:
            scaled *= multiplier
        if divisor != 1.0:
            scaled /= divisor
        out[band] = np.clip(scaled, 0, 255)  # truncated, as astype(np.uint8) does
    return out


#: Rows converted at once by _scale_to_uint8.
_BAND_ROWS = 256


class PixelBudget:
    """At most `limit` pixels decoded at once across all threads: 16 crawl threads that each
    meet a 64 Mpx photo would otherwise hold 16 of them in memory together. One image larger
    than the limit still decodes, alone."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.limit)
        with self._free:
            self._free.wait_for(lambda: self.in_use + pixels <= self.limit)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._free:
                self.in_use -= pixels
                self._free.notify_all()


#: Twice the largest image `Checks` admits by default: two of those, or many photos, at once.
DECODING = PixelBudget(2 * 64_000_000)


def _open(data: bytes, checks: Checks, side: int) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open and bound an image (its header only: no pixel is decoded yet), a JPEG set to decode
    at the smallest DCT scale that keeps `side`; return it, its format and its stored size."""
    try:
        image = Image.open(io.BytesIO(data), formats=_available_formats())
    except Image.DecompressionBombError as e:
        raise Unusable("too_large", str(e)) from None
    except Exception:
        raise Unusable("not_image", _sniff(data)) from None
    try:
        width, height = image.size
        problem = size_problem(width, height, checks)
        if problem is not None:
            raise problem
        fmt = image.format or "?"
        if fmt in ("JPEG", "MPO") and image.mode in ("RGB", "L", "YCbCr"):
            image.draft(image.mode if image.mode == "L" else "RGB", (side, side))
    except Unusable:
        raise
    except Exception as e:
        raise Unusable("corrupt", first_line(e, 120)) from None
    return image, fmt, (width, height)


def _decoded_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels, orient them and convert them to 8-bit RGB."""
    try:
        image.load()
    except Exception as e:
        raise Unusable("corrupt", first_line(e, 120)) from None
    try:
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except Exception:
        pass  # broken EXIF: keep the stored orientation
    try:
        return to_rgb(image)
    except Exception as e:
        raise Unusable("unsupported", f"mode {image.mode}: {first_line(e, 120)}") from None


@functools.cache
def _available_formats() -> tuple[str, ...]:
    import pillow_heif

    pillow_heif.register_heif_opener()  # HEIC photos; it reads only the header until load()
    Image.init()
    return tuple(f for f in RASTER_FORMATS if f in Image.OPEN)


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "HTML page"
    if head.startswith((b"<?xml", b"<svg")) or b"<svg" in head:
        return "SVG/XML text, not a raster image"
    if head.startswith(b"%pdf"):
        return "PDF document"
    try:
        data[:512].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown format"
