"""images.decode: what counts as usable, and how every odd file becomes 8-bit RGB."""

import numpy as np
import pytest
from PIL import Image

from conftest import encode, grid_image, png_bomb
from toolkit.core import images


@pytest.fixture
def base():
    return grid_image(7, (200, 150))


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "JPEG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"),
    ("P", "GIF"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"),
    ("1", "PNG"), ("RGB", "PPM"), ("RGB", "AVIF"), ("RGB", "HEIF"),
])
def test_every_mode_becomes_rgb_with_the_same_perceptual_hash(base, mode, fmt):
    reference, _ = images.decode(encode(base, "PNG"))
    info, pixels = images.decode(encode(base.convert(mode), fmt), size=32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert (info.width, info.height) == (200, 150)
    assert info.extension != "img"  # crawl names the file by its real format
    assert bin(info.phash ^ reference.phash).count("1") <= 8


def test_sixteen_bit_and_float_grayscale_are_scaled_not_clipped(base):
    gray = np.asarray(base.convert("L"))
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    floats = Image.fromarray(gray.astype(np.float32) / 255)
    for image, fmt in ((sixteen, "PNG"), (floats, "TIFF")):
        _, pixels = images.decode(encode(image, fmt), size=64, fit="stretch")
        expected = np.asarray(base.convert("L").resize((64, 64), Image.Resampling.BICUBIC))
        assert abs(pixels[..., 0].astype(int) - expected).mean() < 3


def test_transparent_pixels_are_composited_on_white():
    clear = Image.new("RGBA", (120, 120), (255, 0, 0, 0))
    _, pixels = images.decode(encode(clear, "PNG"), size=16)
    assert (pixels == 255).all()


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (120, 120), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    _, pixels = images.decode(data, size=8)
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 50


def test_exif_orientation_is_applied():
    landscape = Image.new("RGB", (200, 100), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display: a portrait picture
    _, pixels = images.decode(encode(landscape, "JPEG", exif=exif), size=64, fit="pad")
    assert pixels[:, :8].max() == 0 and pixels[:, -8:].max() == 0   # black bars left/right
    assert pixels[:8, 28:36, 1].min() > 150                           # green to the top


@pytest.mark.parametrize("fit", images.FITS)
def test_fits_give_a_square(fit, base):
    _, pixels = images.decode(encode(base, "PNG"), size=48, fit=fit)
    assert pixels.shape == (48, 48, 3)


def test_pad_keeps_the_whole_picture_and_crop_fills_the_square():
    wide = Image.new("RGB", (300, 100), (250, 250, 250))
    _, padded = images.decode(encode(wide, "PNG"), size=30, fit="pad")
    _, cropped = images.decode(encode(wide, "PNG"), size=30, fit="crop")
    assert padded[:5].max() == 0 and padded[15, :, 0].min() > 200
    assert cropped.min() > 200


def test_large_jpeg_is_decoded_at_a_reduced_scale_and_hashes_alike(base):
    big = base.resize((2000, 1500), Image.Resampling.BICUBIC)
    small_info, _ = images.decode(encode(base, "JPEG", quality=95))
    big_info, pixels = images.decode(encode(big, "JPEG", quality=95), size=224)
    assert pixels.shape == (224, 224, 3)
    assert bin(big_info.phash ^ small_info.phash).count("1") <= 8


def test_hash_does_not_depend_on_the_size_asked_for(base):
    data = encode(base.resize((1600, 1200)), "JPEG")
    assert images.decode(data, size=32)[0] == images.decode(data, size=512)[0] == images.decode(data)[0]


def _truncated_png(base):
    data = encode(base, "PNG")
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize("make,reason", [
    (lambda b: b"", "empty"),
    (lambda b: b"<!DOCTYPE html><html><body>404</body></html>", "not_image"),
    (lambda b: b"just some text\n", "not_image"),
    (lambda b: b'<svg xmlns="http://www.w3.org/2000/svg" width="500" height="500"/>', "not_image"),
    (lambda b: b"%PDF-1.4 ...", "not_image"),
    (lambda b: encode(b, "JPEG")[:-400], "corrupt"),
    (_truncated_png, "corrupt"),
    (lambda b: encode(b.resize((60, 40)), "PNG"), "too_small"),
    (lambda b: png_bomb(), "too_large"),
    (lambda b: png_bomb(9000, 9000), "too_large"),
])
def test_unusable_files_are_refused_with_a_reason(base, make, reason):
    with pytest.raises(images.Unusable) as caught:
        images.decode(make(base))
    assert caught.value.reason == reason


def test_limits_are_configurable(base):
    data = encode(base, "PNG")
    with pytest.raises(images.Unusable, match="too small"):
        images.decode(data, images.Checks(min_side=151))
    with pytest.raises(images.Unusable) as caught:
        images.decode(data, images.Checks(max_bytes=len(data) - 1))
    assert caught.value.reason == "too_large"
    assert images.decode(data, images.Checks(min_side=150))[0].width == 200


def test_read_file_refuses_what_is_not_a_regular_file(tmp_path):
    with pytest.raises(images.Unusable) as caught:
        images.read_file(tmp_path)
    assert caught.value.reason == "unreadable"
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(images.Unusable):
        images.read_file(loop)
