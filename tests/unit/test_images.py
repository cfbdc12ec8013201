import numpy as np
import pytest
from PIL import Image

from core.images import (
    ImageError,
    PixelBudget,
    convert,
    decode_image,
    decode_plain_png,
    open_image,
    scale,
)
from tests.support.data import tiny_images
from tests.support.images import encode, png_declaring

IMAGE = tiny_images(1, seed=5)[0][0]  # 28×28, light band on a dark, noisy background
ORIENTED = Image.Exif()
ORIENTED[0x0112] = 6  # orientation 6: the stored pixels are turned a quarter left


def budget() -> PixelBudget:
    """The service's default limits: 4 million pixels a picture, 16 million a request."""
    return PixelBudget(per_image=4_000_000, total=16_000_000)


def decode(data: bytes):
    return decode_image(data, budget())


def test_scale_maps_0_255_to_0_1_as_float32():
    scaled = scale(np.array([[0, 51, 255]], dtype=np.uint8))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0.0, 0.2, 1.0]], rtol=1e-7)


def test_a_28x28_grayscale_png_keeps_its_exact_pixels():
    np.testing.assert_array_equal(decode(encode(IMAGE)), IMAGE)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_convert_to_the_same_grayscale(mode):
    image = Image.fromarray(IMAGE).convert(mode)
    np.testing.assert_array_equal(decode(encode(image)), IMAGE)


def test_16_bit_levels_are_scaled_to_8_bits():
    wide = Image.fromarray(IMAGE.astype(np.uint16) * 257)
    assert wide.mode == "I;16"
    np.testing.assert_array_equal(decode(encode(wide)), IMAGE)


@pytest.mark.parametrize(("format", "tolerance"), [("WEBP", 0), ("GIF", 0), ("JPEG", 12)])
def test_other_formats(format, tolerance):
    options = (
        {"lossless": True} if format == "WEBP" else {"quality": 95} if format == "JPEG" else {}
    )
    decoded = decode(encode(IMAGE, format, **options)).astype(int)
    assert np.abs(decoded - IMAGE.astype(int)).max() <= tolerance


def test_dark_on_light_pictures_are_inverted():
    np.testing.assert_array_equal(decode(encode(255 - IMAGE)), IMAGE)


@pytest.mark.parametrize(("low", "high", "inverted"), [(100, 200, True), (0, 254, False)])
def test_inversion_follows_the_median_of_the_border_exactly(low, high, inverted):
    # Half the 108 border pixels low, half high: the median is their mean, 150 or 127.
    pixels = np.full((28, 28), 60, np.uint8)
    pixels[0], pixels[-1] = low, high
    pixels[1:-1, 0], pixels[1:-1, -1] = low, high
    expected = 255 - pixels if inverted else pixels
    np.testing.assert_array_equal(decode(encode(pixels)), expected)


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_the_exif_orientation_is_applied(format):
    # The stored pixels are turned a quarter left; viewers turn them back.
    stored = Image.fromarray(IMAGE).transpose(Image.Transpose.ROTATE_90)
    decoded = decode(encode(stored, format, exif=ORIENTED, quality=100)).astype(int)
    assert np.abs(decoded - IMAGE.astype(int)).max() <= (0 if format == "PNG" else 12)


def test_larger_pictures_are_scaled_down_by_area_averaging():
    big = Image.fromarray(IMAGE).resize((112, 112), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(decode(encode(big)), IMAGE)


def test_aspect_ratio_is_kept_and_the_object_centred():
    picture = np.zeros((60, 100), dtype=np.uint8)
    picture[10:30, 20:60] = 200  # a 40 wide, 20 high block
    rows, cols = np.nonzero(decode(encode(picture)))
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (7, 21, 0, 28)


def test_transparent_background_becomes_dark_background():
    triangle = np.tril(np.ones((20, 20), dtype=bool))
    for colour in (255, 30):  # a light object and a dark one, each on transparency
        rgba = np.zeros((40, 40, 4), dtype=np.uint8)
        rgba[10:30, 10:30][triangle] = (colour, colour, colour, 255)
        decoded = decode(encode(Image.fromarray(rgba, "RGBA")))
        assert decoded[0, 27] == 0 and decoded[27, 0] > 200, colour


def test_only_the_first_frame_of_an_animation_is_used():
    frames = [Image.fromarray(IMAGE), Image.fromarray(np.zeros_like(IMAGE))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(decode(data), IMAGE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 not a picture", "not an image in an accepted format"),
        (encode(IMAGE, "BMP"), "not an image in an accepted format"),
        (
            encode(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))[:2000],
            "truncated",
        ),
        (encode(IMAGE)[:16], "truncated"),  # cut inside the header
        (encode(IMAGE)[:200], "truncated"),  # a small grayscale PNG, the fast path's kind
        (encode(IMAGE, "JPEG")[:30], "truncated"),
        (png_declaring(100_000, 100_000), "too large"),
        (png_declaring(7_000, 7_000), "7000×7000 pixels; the limit is 4,000,000 pixels a picture"),
        (png_declaring(2_001, 2_000), "TRICKLAB_MAX_IMAGE_PIXELS"),
    ],
)
def test_unusable_files_are_refused_with_a_reason(data, message):
    with pytest.raises(ImageError, match=message):
        decode(data)


def _plain_pngs() -> list[bytes]:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (64, 40), dtype=np.uint8)
    smooth = np.add.outer(np.arange(28), np.arange(28)).astype(np.uint8) * 4
    return [
        encode(IMAGE),
        encode(255 - IMAGE),  # inverted on the way
        encode(smooth, optimize=True),  # other zlib settings, so other row filters
        encode(smooth, compress_level=0),
        encode(noise),  # not 28×28: trimmed, resized, centred
        encode(np.zeros((28, 28), np.uint8)),
        encode(IMAGE)[:-12],  # no IEND chunk: both decoders read the pixels
    ]


@pytest.mark.parametrize("data", _plain_pngs())
def test_plain_pngs_decode_fast_to_exactly_what_pillow_gives(data):
    fast = decode_plain_png(data, budget())
    assert fast is not None
    np.testing.assert_array_equal(fast, convert(open_image(data, budget())))


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.fromarray(IMAGE).convert("RGB")),
        encode(Image.fromarray(IMAGE).convert("P")),
        encode(Image.fromarray(IMAGE.astype(np.uint16) * 257)),
        encode(IMAGE, transparency=0),  # a tRNS chunk
        encode(IMAGE, exif=ORIENTED),  # an eXIf chunk, which turns the picture
        encode(np.zeros((300, 300), np.uint8)),  # over PLAIN_PNG_PIXELS
        encode(IMAGE, "JPEG"),
        encode(IMAGE)[:200],  # truncated: Pillow's reading says why
        png_declaring(28, 28)[:20],
    ],
)
def test_other_files_are_left_to_pillow(data):
    assert decode_plain_png(data, budget()) is None


def test_a_budget_bounds_each_picture_and_all_of_a_request_together():
    shared = PixelBudget(per_image=2_500_000, total=3_000_000)
    decode_image(encode(np.zeros((1_000, 1_000), np.uint8)), shared)
    decode_image(encode(IMAGE), shared)  # the fast path charges too
    assert shared.spent == 1_000_000 + 28 * 28
    with pytest.raises(ImageError, match="more than 3,000,000 pixels together"):
        open_image(png_declaring(1_500, 1_500), shared)  # refused from its header
    assert shared.spent == 1_000_000 + 28 * 28
