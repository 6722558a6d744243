"""Bad image input gets a clear ImageError; good input decodes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facemask.imageio import ImageError, decode_image, encode_jpeg, read_image

from .conftest import MAX_PIXELS


def test_real_image_decodes(shared):
    path = next((shared / "datasets/face-mask-2class/with_mask").glob("*.jpg"))
    img = read_image(path, MAX_PIXELS)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty input"),
        (b"hello, I am text", "not a decodable image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 40, "not a decodable image"),
    ],
)
def test_bad_bytes(data, fragment):
    with pytest.raises(ImageError, match=fragment):
        decode_image(data, MAX_PIXELS)


def test_truncated_jpeg_is_refused():
    data = encode_jpeg(np.full((64, 64, 3), 127, np.uint8))
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 3], MAX_PIXELS)


def test_decompression_bomb_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    assert len(data) < 1_000_000  # small on disk, 144 megapixels decoded
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(data, max_pixels=40_000_000)
