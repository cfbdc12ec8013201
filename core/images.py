"""The one way pixels become model input, for training and prediction alike.

Training images are 28×28 uint8 grayscale, light objects on a dark background, scaled to
[0, 1] by `scale`. An uploaded picture is first brought into that form by `decode_image`:

1. the first frame is read (GIF, WebP); JPEG orientation tags are applied;
2. transparent pixels become background;
3. it is converted to grayscale (ITU-R 601-2 luma, as Pillow's "L" mode; 16-bit levels are
   divided by 257);
4. dark-on-light pictures (the usual photo of a garment on a white background) are inverted,
   judged by the median of the outermost ring of pixels: above 127 means a light background;
5. a 28×28 picture keeps its pixels as they are; any other size is trimmed to the bounding box
   of its non-background pixels, resized (area-averaged) so the longer side is 28, keeping
   the aspect ratio, and centred on a black 28×28 canvas, as Fashion-MNIST's own images were
   made.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import pyspng
from PIL import Image, ImageOps

SIDE = 28
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Pixels this close to the background (after inversion) count as background when trimming.
TRIM_THRESHOLD = 16
# The largest plain PNG decoded by libspng, not Pillow (a 256×256 picture, well under 1 ms).
PLAIN_PNG_PIXELS = 256 * 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PLAIN_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"pHYs", b"gAMA", b"sRGB", b"cHRM", b"tIME"})


class ImageError(ValueError):
    """The bytes are not a usable image; the message says why."""


@dataclass
class PixelBudget:
    """What decoding may cost, in pixels, judged from each picture's header before any
    decoding: a small file can declare a huge picture (a 163 KiB PNG can hold 40 million
    pixels), and a 28×28 result needs no huge source. `per_image` bounds each picture, and
    `total` all the pictures charged to this budget (one request's)."""

    per_image: int
    total: int
    spent: int = 0

    def charge(self, width: int, height: int) -> None:
        """Count a picture of this size, or raise ImageError naming the limit it passes."""
        pixels = width * height
        if pixels > self.per_image:
            raise ImageError(
                f"image too large: {width}×{height} pixels; the limit is {self.per_image:,} "
                "pixels a picture (TRICKLAB_MAX_IMAGE_PIXELS)"
            )
        if self.spent + pixels > self.total:
            raise ImageError(
                f"the pictures of this request hold more than {self.total:,} pixels together "
                "(TRICKLAB_MAX_REQUEST_PIXELS); send fewer or smaller pictures per request"
            )
        self.spent += pixels


def scale(pixels: np.ndarray) -> np.ndarray:
    """uint8 (or 0–255 float) pixels → float32 in [0, 1]: exactly what the model sees."""
    return np.asarray(pixels, dtype=np.float32) / np.float32(255.0)


def decode_image(data: bytes, budget: PixelBudget) -> np.ndarray:
    """Image file bytes → 28×28 uint8, light on dark (see the module docstring)."""
    pixels = decode_plain_png(data, budget)
    return pixels if pixels is not None else convert(open_image(data, budget))


def decode_plain_png(data: bytes, budget: PixelBudget) -> np.ndarray | None:
    """The common case, fast: a small 8-bit grayscale PNG without interlacing, transparency
    or metadata that changes the picture (what Fashion-MNIST's own images export as) →
    28×28 uint8 exactly as `decode_image` makes it; None for anything else, which Pillow then
    decodes. Such a PNG has one lossless reading, so libspng gives Pillow's pixels, in a fifth
    of the time (~5 µs for 28×28): after HTTP itself, the largest cost of a prediction."""
    # The IHDR chunk comes first: length 13, type, width, height, depth, colour type, and
    # compression, filter and interlace methods.
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    small = 0 < width * height <= PLAIN_PNG_PIXELS
    if not (small and depth == 8 and colour == 0 and interlace == 0 and _plain_chunks(data)):
        return None
    try:
        gray = pyspng.load(data)
    except RuntimeError:  # truncated or corrupt: Pillow's reading says why
        return None
    budget.charge(width, height)
    return _fit(gray)


def _plain_chunks(data: bytes) -> bool:
    """Whether every chunk is one that cannot change the pixels Pillow reads: no tRNS
    (transparency), no eXIf or text chunks (an EXIF orientation may hide in either)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind not in _PLAIN_CHUNKS:
            return False
        offset += 12 + length  # length, type, data, CRC
    return True


def open_image(data: bytes, budget: PixelBudget) -> Image.Image:
    """Reads only the header: cheap, and charges the budget (or refuses the picture) before
    any decoding."""
    if not data:
        raise ImageError("the file is empty")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)  # header only
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError:  # Pillow's own, far higher limit
        raise ImageError(
            f"image too large: its header declares far over the limit of {budget.per_image:,} "
            "pixels a picture (TRICKLAB_MAX_IMAGE_PIXELS)"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:  # a header cut short or garbled
        raise ImageError(f"corrupt or truncated image: {error}") from None
    budget.charge(*image.size)
    return image


def convert(image: Image.Image) -> np.ndarray:
    """An opened image → 28×28 uint8, light on dark (see the module docstring)."""
    try:
        image.seek(0)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        gray = _grayscale(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt or truncated image: {error}") from None
    return _fit(gray)


def _grayscale(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I"):  # 16-bit grayscale PNG: map 0–65535 onto 0–255
        wide = np.asarray(image, dtype=np.float64) / 257
        return np.round(wide).clip(0, 255).astype(np.uint8)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.uint8)
    rgba = image.convert("RGBA")
    luma = np.asarray(rgba.convert("L"), dtype=np.float32)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    # Put transparent areas on whichever background contrasts with the drawn object.
    opaque = alpha > 0.5
    object_is_light = opaque.any() and float(luma[opaque].mean()) >= 128
    background = 0.0 if object_is_light else 255.0
    return np.round(luma * alpha + background * (1 - alpha)).astype(np.uint8)


def _median_above_127(ring: np.ndarray) -> bool:
    # np.median, exactly, in a sixth of the time: the mean of the middle two of an even count.
    ordered = np.sort(ring)
    return int(ordered[(ordered.size - 1) // 2]) + int(ordered[ordered.size // 2]) > 2 * 127


def _fit(gray: np.ndarray) -> np.ndarray:
    if _median_above_127(np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])):
        gray = 255 - gray
    if gray.shape == (SIDE, SIDE):
        return gray
    rows, cols = np.nonzero(gray > TRIM_THRESHOLD)
    if rows.size:
        gray = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = gray.shape
    factor = SIDE / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = Image.fromarray(gray).resize(size, Image.Resampling.BOX)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(resized, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)
