"""Decoding image files into pixel arrays, safely.

Pillow (with pillow-heif for HEIC/AVIF) sniffs the format from the bytes, not the file name. EXIF
orientation is applied, so boxes and crops are in the upright image's pixel space. The pixel count is
checked before any pixel is decoded, so a small file claiming huge dimensions cannot exhaust memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

_heif_registered = False


def _register_plugins() -> None:
    global _heif_registered
    if _heif_registered:
        return
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        if hasattr(pillow_heif, "register_avif_opener"):
            pillow_heif.register_avif_opener()
    except ImportError:  # HEIC/AVIF then fail to decode and fall back to Immich's preview
        pass
    _heif_registered = True


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit BGR image (insightface's and OpenCV's channel order)."""

    pixels: NDArray[np.uint8]
    format: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def decode_image(path: Path, *, max_pixels: int) -> DecodedImage:
    """Decode the file at `path`; raises ImageError with a reason a user can read.

    Pillow reads the header first (format sniffed from the bytes, pixel count checked before any
    pixel is decoded). Complete JPEGs, most of any library, are then decoded by OpenCV's
    libjpeg-turbo straight to BGR with the EXIF orientation applied: about twice as fast as Pillow
    plus a channel swap. Everything else (and any JPEG OpenCV refuses) goes through Pillow.
    """
    _register_plugins()
    # Pillow refuses images over its own 89-megapixel guess (and warns from half that); the limit here
    # is the configured one, checked below before any pixel is decoded.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # corrupt metadata Pillow skips; we go on too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"image is {width}x{height}, over the {max_pixels // 1_000_000} MP limit")
                image_format = image.format or "unknown"
                if image_format == "JPEG" and _complete_jpeg(path):
                    pixels = _decode_jpeg(path)
                    if pixels is not None:
                        return DecodedImage(pixels, image_format)
                image.seek(0)  # animated GIF/WebP: the first frame
                upright = ImageOps.exif_transpose(image)
                rgb = _to_rgb(upright)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image format facesyncd can decode") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large to decode safely: {error}") from None
    except MemoryError:
        raise ImageError("not enough memory to decode image") from None
    except Exception as error:  # hostile files make Pillow raise many types (struct.error, ...)
        raise ImageError(f"cannot decode image: {error or type(error).__name__}") from None
    bgr = cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    return DecodedImage(np.asarray(bgr, dtype=np.uint8), image_format)


def _complete_jpeg(path: Path) -> bool:
    """A JPEG that ends with its end-of-image marker. libjpeg fills a truncated file with grey
    instead of failing; those go to Pillow, which refuses them."""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 64))
        tail = handle.read().rstrip(b"\0\r\n ")
    return tail.endswith(b"\xff\xd9")


def _decode_jpeg(path: Path) -> NDArray[np.uint8] | None:
    data = np.fromfile(path, dtype=np.uint8)
    pixels = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies the EXIF orientation
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    return np.asarray(pixels, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel; transparent areas go on white, 16-bit and CMYK are converted."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        grey = Image.fromarray((array * (255.0 / peak)).clip(0, 255).astype(np.uint8))
        return grey.convert("RGB")
    return image.convert("RGB")


def encode_jpeg(pixels: NDArray[np.uint8], quality: int = 92) -> bytes:
    """BGR pixels -> JPEG bytes."""
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(pixels), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("cannot encode a JPEG crop")
    return bytes(encoded.tobytes())
