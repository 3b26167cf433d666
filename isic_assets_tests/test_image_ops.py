"""Decode, resize and the optional dermoscopy steps, on small real images made in each test."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps

from isic_assets.core.transform import image_ops
from isic_assets.core.transform.image_ops import (
    ImageDecodeError,
    TransformSettings,
    apply_exif_orientation,
    choose_dct_factor,
    decode_downscaled,
    decode_image,
    encode_jpeg,
    remove_hair,
    resize,
    resize_exact,
    shades_of_gray,
    transform_bytes,
)

RED, GREEN, BLUE, GREY = (220, 30, 30), (30, 200, 40), (30, 40, 220), (128, 128, 128)


def _jpeg(
    rgb: np.ndarray, quality: int = 95, exif_orientation: int | None = None, **options: object
) -> bytes:
    buffer = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, subsampling=0, **options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _solid(width: int, height: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.full((height, width, 3), colour, dtype=np.uint8)


def _textured(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Skin-like smooth shading plus mid-frequency texture and noise: a fair resampling test."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(60, 220, (6, 8, 3)), (width, height), interpolation=cv2.INTER_CUBIC)
    texture = cv2.resize(
        rng.normal(0, 25, (height // 8, width // 8, 3)), (width, height), interpolation=cv2.INTER_LINEAR
    )
    noise = rng.normal(0, 4, (height, width, 3))
    return np.clip(coarse + texture + noise, 0, 255).astype(np.uint8)


def _near(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 25) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tolerance))


def _decoded(jpeg: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(jpeg, colorspace="RGB")


# --- resize modes ------------------------------------------------------------------------------


def test_pad_keeps_aspect_and_centres_the_picture_between_black_bands() -> None:
    """A 2:1 picture padded to a square must keep its shape: black bands above and below only."""
    data = _jpeg(_solid(400, 200, RED))
    jpeg, pixels = transform_bytes(data, TransformSettings(size=100, mode="pad"))
    out = _decoded(jpeg)
    assert out.shape == pixels.shape == (100, 100, 3)
    assert _near(out[10, 50], (0, 0, 0)) and _near(out[90, 50], (0, 0, 0))  # bands
    assert _near(out[50, 2], RED) and _near(out[50, 97], RED)  # full width, no side bands
    rows_with_picture = np.flatnonzero(pixels[:, 50, 0] > 100)
    assert (rows_with_picture.min(), rows_with_picture.max()) == (25, 74)


def test_pad_of_a_portrait_picture_puts_the_bands_left_and_right() -> None:
    """Portrait images (or landscape ones after EXIF rotation) pad sideways."""
    _, pixels = transform_bytes(_jpeg(_solid(60, 120, GREEN)), TransformSettings(size=64, mode="pad"))
    columns = np.flatnonzero(pixels[32, :, 1] > 100)
    assert (columns.min(), columns.max()) == (16, 47)
    assert pixels[:, :10].max() == 0 and pixels[:, -10:].max() == 0


def test_center_crop_keeps_the_centre_and_drops_the_edges() -> None:
    """A stripe in the middle stays in the middle; stripes at the far ends are cropped away."""
    picture = _solid(300, 100, GREY)
    picture[:, 140:160] = GREEN
    picture[:, :40] = BLUE
    picture[:, 260:] = BLUE
    _, pixels = transform_bytes(_jpeg(picture), TransformSettings(size=100, mode="center_crop"))
    assert pixels.shape == (100, 100, 3)
    assert _near(pixels[50, 50], GREEN)
    green_columns = np.flatnonzero(pixels[50, :, 1] > 150)
    assert green_columns.min() >= 38 and green_columns.max() <= 61
    assert not any(_near(pixels[50, x], BLUE, 60) for x in range(100))


def test_stretch_fills_the_square_and_keeps_left_and_right_halves() -> None:
    """Stretch ignores aspect: no borders, each half of the source fills half the output."""
    picture = _solid(300, 100, RED)
    picture[:, 150:] = BLUE
    _, pixels = transform_bytes(_jpeg(picture), TransformSettings(size=64, mode="stretch"))
    assert pixels.shape == (64, 64, 3)
    assert _near(pixels[0, 5], RED) and _near(pixels[63, 5], RED)
    assert _near(pixels[0, 58], BLUE) and _near(pixels[63, 58], BLUE)


@pytest.mark.parametrize("width,height", [(1001, 333), (333, 1001), (17, 5), (5, 17), (641, 479), (3, 3)])
@pytest.mark.parametrize("mode", ["pad", "center_crop", "stretch"])
def test_every_mode_gives_a_square_of_the_right_size_for_odd_aspects(
    width: int, height: int, mode: str
) -> None:
    """Odd sizes and extreme aspects (a dermoscope strip, a thumbnail) must never be off by one."""
    white = _solid(width, height, (255, 255, 255))
    out = resize(white, 96, mode)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    content = np.argwhere(out[..., 0] > 128)
    content_h, content_w = content.max(axis=0) - content.min(axis=0) + 1
    if mode == "pad":
        scale = 96 / max(width, height)
        assert (content_w, content_h) == (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        assert (content_w, content_h) == (96, 96)


def test_a_tiny_image_is_upscaled_smoothly_not_in_blocks() -> None:
    """Small inputs (old ISIC thumbnails) are enlarged with interpolation; nearest-neighbour blocks
    (what INTER_AREA degenerates to when zooming) would give only 20 distinct values per row."""
    ramp = np.tile(np.linspace(0, 255, 20, dtype=np.float64), (10, 1))
    picture = np.repeat(ramp[..., None], 3, axis=2).astype(np.uint8)
    _, pixels = transform_bytes(_jpeg(picture, quality=100), TransformSettings(size=64, mode="stretch"))
    assert pixels.shape == (64, 64, 3)
    assert len(np.unique(pixels[32, :, 0])) >= 50
    assert np.all(np.diff(pixels[32, 4:60, 0].astype(int)) >= -2)  # still a ramp


def test_resize_picks_linear_up_to_2x_a_doubling_box_up_to_4x_and_area_beyond() -> None:
    """docs/PERFORMANCE.md 2: INTER_LINEAR aliases beyond a 2x shrink and non-integer INTER_AREA is slow;
    up to 4x, linear to twice the target then an exact 2:1 box is both fast and clean."""
    picture = _textured(300, 200)
    linear = cv2.resize(picture, (200, 150), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(resize_exact(picture, 200, 150), linear)
    doubled = cv2.resize(picture, (200, 128), interpolation=cv2.INTER_LINEAR)
    two_step = cv2.resize(doubled, (100, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_exact(picture, 100, 64), two_step)
    area = cv2.resize(picture, (64, 40), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_exact(picture, 64, 40), area)


def test_the_doubling_box_stays_close_to_a_float_area_reference() -> None:
    """The fast 2-4x path must not cost quality: MAD well under one grey level on texture."""
    picture = _textured(750, 500, seed=4)
    reference = cv2.resize(picture.astype(np.float32), (256, 256), interpolation=cv2.INTER_AREA)
    error = np.abs(resize_exact(picture, 256, 256).astype(np.float32) - reference)
    assert error.mean() < 0.6 and np.percentile(error, 99) < 3


def test_mixed_shrink_and_enlarge_filters_each_axis_correctly() -> None:
    """A long strip stretched to a square shrinks one axis >2x and enlarges the other: the enlarged
    axis must be interpolated (many distinct values), the shrunk one averaged (no aliasing of a
    1-pixel stripe pattern, which would survive point sampling at full contrast)."""
    stripes = np.zeros((10, 600, 3), np.uint8)
    stripes[:, ::2] = 255
    stripes[:, :, :] = np.where(np.arange(10)[:, None, None] >= 5, stripes, stripes // 2)
    out = resize_exact(stripes, 64, 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 5:59].std(axis=1).max() < 20  # averaged along x (point sampling: std ~127)
    assert len(np.unique(out[:, 32, 0])) >= 5  # smooth transition along y


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,mode,factor",
    [
        (6000, 4000, "stretch", 8),
        (1024, 768, "stretch", 2),
        (1024, 768, "pad", 4),
        (1024, 768, "center_crop", 2),
        (600, 450, "stretch", 1),
        (4000, 3000, "pad", 8),
        (200, 100, "pad", 1),
    ],
)
def test_dct_factor_is_the_largest_power_of_two_that_still_covers_the_target(
    width: int, height: int, mode: str, factor: int
) -> None:
    """pad needs only the long side at the target, crop only the short side, stretch both."""
    assert choose_dct_factor(width, height, 256, mode) == factor


def test_power_of_two_decode_matches_a_full_decode_within_one_and_a_half_grey_levels() -> None:
    """The DCT-scaled decode must look like full decode + INTER_AREA (docs/PERFORMANCE.md 2: MAD ~0.4-0.6)."""
    data = _jpeg(_textured(1600, 1200, seed=3), quality=90)
    small = decode_downscaled(data, 256, mode="stretch")
    assert small.shape == (300, 400, 3)  # decoded at 1/4: the fast path really ran
    fast = resize(small, 256, "stretch")
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    reference = cv2.resize(full, (256, 256), interpolation=cv2.INTER_AREA)
    mad = np.abs(fast.astype(np.int16) - reference.astype(np.int16)).mean()
    assert mad < 1.5


def test_exif_orientation_6_is_rotated_clockwise() -> None:
    """Cameras store portrait shots sideways with Orientation=6; the output must be upright."""
    picture = _solid(40, 20, RED)
    picture[:, 20:] = BLUE  # left red, right blue as stored
    data = _jpeg(picture, exif_orientation=6)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    upright = decode_downscaled(data, 40, exif_orientation=6)
    assert upright.shape == (40, 20, 3)
    assert _near(upright[5, 10], RED) and _near(upright[35, 10], BLUE)  # left went to the top


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    """All eight EXIF orientations (flips and transposes too) must agree with Pillow's reference."""
    rng = np.random.default_rng(orientation)
    picture = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    assert np.array_equal(apply_exif_orientation(picture, orientation), expected)
    assert np.array_equal(decode_downscaled(buffer.getvalue(), 4, orientation), expected)


def test_invalid_exif_orientation_leaves_the_image_as_stored() -> None:
    """Orientation 0 or 9 occur in the wild; like Pillow, treat them as 'no rotation'."""
    picture = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(apply_exif_orientation(picture, 0), picture)
    assert np.array_equal(apply_exif_orientation(picture, 9), picture)


def test_png_takes_the_general_path_and_is_box_reduced() -> None:
    """Non-JPEG inputs decode through Pillow; large ones are reduced by the same power of two."""
    picture = _textured(1200, 900)
    small = decode_downscaled(_png(Image.fromarray(picture)), 256, mode="stretch")
    assert small.shape == (450, 600, 3)
    expected = cv2.resize(picture, (600, 450), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - expected.astype(int)).max() <= 1


def test_png_with_transparency_is_composited_on_black() -> None:
    """Transparent pixels must not leak whatever colour hides under alpha=0."""
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 5:, 3] = 255
    out = decode_image(_png(Image.fromarray(rgba, "RGBA")))
    assert out[:, :5].max() == 0 and out[:, 5:].min() == 200


def test_greyscale_and_16_bit_png_become_rgb() -> None:
    """Greyscale and 16-bit PNGs are legal inputs; 16-bit must be scaled, not clipped at 255."""
    grey = decode_image(_png(Image.fromarray(np.full((4, 6), 77, np.uint8), "L")))
    assert grey.shape == (4, 6, 3) and np.all(grey == 77)
    wide = Image.fromarray(np.full((4, 6), 40000, np.uint16))
    assert np.all(decode_image(_png(wide)) == 40000 >> 8)


def test_cmyk_jpeg_decodes_like_pillow() -> None:
    """CMYK JPEGs (Adobe, inverted) are sent to Pillow, which knows the inversion."""
    picture = _textured(64, 48)
    buffer = io.BytesIO()
    Image.fromarray(picture).convert("CMYK").save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decode_downscaled(data, 16, mode="stretch").shape == (24, 32, 3)  # draft at 1/2
    assert np.abs(decode_image(data).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "data,fragment",
    [
        (b"", "empty"),
        (b"\xff\xd8\xff\xe0 definitely not a jpeg", "JPEG"),
        (b"GIF89a-ish but not an image", "not a decodable image"),
    ],
)
def test_undecodable_bytes_raise_a_clear_error(data: bytes, fragment: str) -> None:
    """Bad bytes raise ImageDecodeError with the cause, so the runner can quarantine them."""
    with pytest.raises(ImageDecodeError, match=fragment):
        decode_downscaled(data, 64)


def test_a_truncated_jpeg_is_rejected_not_grey_filled() -> None:
    """libjpeg would pad a cut-off file with grey; strict decoding turns that into an error."""
    data = _jpeg(_textured(320, 240), quality=90)
    with pytest.raises(ImageDecodeError, match="Premature end"):
        decode_downscaled(data[: len(data) // 2], 64)


# --- colour constancy and hair removal ---------------------------------------------------------


def test_shades_of_gray_removes_a_colour_cast() -> None:
    """A scene under a warm illuminant (blue and green dimmed) gets its channels back in balance."""
    neutral = _textured(128, 128, seed=7).astype(np.float64)
    neutral = np.repeat(neutral.mean(axis=2, keepdims=True), 3, axis=2)  # grey-world scene
    cast = np.clip(neutral * np.array([1.0, 0.75, 0.5]), 0, 255).astype(np.uint8)
    before = cast.reshape(-1, 3).mean(axis=0)
    after = shades_of_gray(cast).reshape(-1, 3).mean(axis=0)
    assert before.max() / before.min() > 1.8
    assert after.max() / after.min() < 1.05


def test_shades_of_gray_leaves_a_neutral_image_alone() -> None:
    """A grey illuminant means unit gains: the step must not shift colours that are already right."""
    grey_scene = np.repeat(_textured(64, 64, seed=1)[..., :1], 3, axis=2)
    assert np.abs(shades_of_gray(grey_scene).astype(int) - grey_scene.astype(int)).max() <= 1


def _skin_with_hairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    skin = np.clip(np.full((128, 128, 3), (200, 150, 130), float) + rng.normal(0, 2, (128, 128, 3)), 0, 255)
    skin = skin.astype(np.uint8)
    hairs = np.zeros((128, 128), np.uint8)
    cv2.line(hairs, (5, 10), (120, 100), 255, 2)
    cv2.line(hairs, (10, 120), (110, 20), 255, 1)
    picture = skin.copy()
    picture[hairs > 0] = (35, 25, 20)
    return picture, hairs


def test_remove_hair_brightens_the_hairs_and_leaves_the_skin() -> None:
    """Thin dark lines are inpainted with the surrounding skin; pixels away from them do not change."""
    picture, hairs = _skin_with_hairs()
    cleaned = remove_hair(picture)
    on_hair = hairs > 0
    assert picture[on_hair].mean() < 40
    assert cleaned[on_hair].mean() > 140
    far = cv2.dilate(hairs, np.ones((7, 7), np.uint8)) == 0
    assert np.array_equal(cleaned[far], picture[far])


def test_remove_hair_without_hairs_changes_nothing() -> None:
    """Hairless skin (most images) must come out identical."""
    picture, _ = _skin_with_hairs()
    skin = np.full_like(picture, (200, 150, 130))
    assert np.array_equal(remove_hair(skin), skin)


def test_optional_steps_run_in_transform_bytes_only_when_enabled() -> None:
    """The settings switch the steps: off by default, on when asked, and they change the output."""
    picture, _ = _skin_with_hairs()
    data = _jpeg(picture)
    _, plain = transform_bytes(data, TransformSettings(size=128, mode="stretch"))
    _, hairless = transform_bytes(data, TransformSettings(size=128, mode="stretch", hair_removal=True))
    _, balanced = transform_bytes(data, TransformSettings(size=128, mode="stretch", color_constancy=True))
    assert hairless.mean() > plain.mean() + 2
    means = balanced.reshape(-1, 3).mean(axis=0)
    assert (
        means.max() / means.min()
        < plain.reshape(-1, 3).mean(axis=0).max() / plain.reshape(-1, 3).mean(axis=0).min()
    )


# --- encoding and settings ---------------------------------------------------------------------


def test_encode_jpeg_writes_420_at_the_requested_quality() -> None:
    """q95 4:2:0 is the documented output (docs/PERFORMANCE.md 4); lower quality means fewer bytes."""
    picture = _textured(128, 96)
    high, low = encode_jpeg(picture, 95), encode_jpeg(picture, 60)
    assert simplejpeg.decode_jpeg_header(high)[3] == "420"
    assert len(low) < len(high)
    assert np.abs(_decoded(high).astype(int) - picture.astype(int)).mean() < 4  # noisy chroma, 4:2:0


def test_fingerprint_is_stable_and_changes_with_any_setting_or_the_code_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fingerprint is the incremental key: equal settings agree, any change disagrees."""
    base = TransformSettings().fingerprint()
    assert base == TransformSettings().fingerprint() and len(base) == 16
    variants = [
        TransformSettings(size=224),
        TransformSettings(mode="stretch"),
        TransformSettings(jpeg_quality=90),
        TransformSettings(color_constancy=True),
        TransformSettings(hair_removal=True),
    ]
    assert len({base, *(v.fingerprint() for v in variants)}) == 6
    monkeypatch.setattr(image_ops, "TRANSFORM_CODE_VERSION", "test-bump")
    assert TransformSettings().fingerprint() != base


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"mode": "fit"}, {"jpeg_quality": 101}, {"size": 25.5}])
def test_invalid_settings_are_refused(kwargs: dict) -> None:
    """A typo in the launchpad must fail at once, not after hours of processing."""
    with pytest.raises(ValueError):
        TransformSettings(**kwargs)
