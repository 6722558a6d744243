"""Safe image decoding shared by ingestion, cropping and the service.

The header is read first (Pillow, no pixel decode) so that a decompression bomb is refused before
any memory is spent; then OpenCV decodes to a BGR uint8 array.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from facemask.errors import FacemaskError


class ImageError(FacemaskError, ValueError):
    """The bytes are not a decodable image of acceptable size."""


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone; raises ImageError for non-images."""
    if not data:
        raise ImageError("empty input: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"not a decodable image ({err.__class__.__name__})") from None
    except Image.DecompressionBombError as err:  # pragma: no cover - Pillow's own limit
        raise ImageError(str(err)) from None
    return width, height


def image_file_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of an image file from its header alone; raises ImageError for non-images."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a decodable image ({err.__class__.__name__})") from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes to a BGR uint8 array, refusing empty, corrupt and oversized images."""
    width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("image header is readable but its pixels cannot be decoded")
    return image


def read_image(path: Path | str, max_pixels: int) -> np.ndarray:
    """Read an image file to BGR uint8; raises ImageError (or FileNotFoundError)."""
    return decode_image(Path(path).read_bytes(), max_pixels)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()
