"""Fuzzing image decoding (hypothesis): random bytes and mutated real JPEG/PNG files decode to a
BGR image or raise `ImageError`, never anything else; odd modes (CMYK, 16-bit, grayscale, alpha,
palette, 1-bit, 1x1) decode to 8-bit BGR; EXIF-rotated photos come out upright."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from facemask.imageio import ImageError, decode_image

from .conftest import MAX_PIXELS, real_images

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@pytest.fixture(scope="module")
def photo(shared) -> Image.Image:
    return Image.open(real_images(shared, "face-mask-2class/with_mask", 1)[0]).convert("RGB")


@pytest.fixture(scope="module")
def seeds(photo) -> dict[str, bytes]:
    out = {}
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        photo.resize((96, 85)).save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def decodes_or_refuses(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=4_000_000)
    except ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size > 0


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    decodes_or_refuses(data)


@FUZZ
@given(fmt=st.sampled_from(["JPEG", "PNG"]), data=st.data())
def test_mutated_real_files(seeds, fmt, data):
    blob = bytearray(seeds[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, min(len(blob) - 1, 600)))  # the header and first blocks
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]  # truncated
    decodes_or_refuses(bytes(blob))


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("CMYK", "JPEG"), ("L", "JPEG"), ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"),
     ("I;16", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF")],
)  # fmt: skip
def test_odd_modes_decode_to_8bit_bgr(photo, mode, fmt):
    if mode == "I;16":
        image = Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    else:
        image = photo.convert(mode)
    out = decode_image(_encoded(image, fmt), MAX_PIXELS)
    assert out.shape == (photo.height, photo.width, 3) and out.dtype == np.uint8
    grey = np.asarray(photo.convert("L"), dtype=float)
    similarity = np.corrcoef(out.mean(axis=2).ravel(), grey.ravel())[0, 1]
    assert similarity > (0.3 if mode == "1" else 0.9)  # the same picture (1-bit: dithered)


def test_one_pixel_image(photo):
    assert decode_image(_encoded(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), MAX_PIXELS).tolist() == [
        [[30, 20, 10]]
    ]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_photos_come_out_upright(photo, orientation):
    """A camera stores the sensor's pixels and an EXIF orientation; decoding applies it."""
    upright = np.asarray(photo)[:, :, ::-1].astype(int)
    # the stored pixels are the inverse of what the orientation tag says to apply
    inverse = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
               7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}[orientation]  # fmt: skip
    stored = photo if inverse is None else photo.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))).shape[:2] == upright.shape[:2]
    out = decode_image(data, MAX_PIXELS).astype(int)
    assert out.shape == upright.shape
    assert np.abs(out - upright).mean() < 4
