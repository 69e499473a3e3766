import numpy as np
import pytest
from PIL import Image

import aligngpt.data.images as images_module
from aligngpt.data.images import (
    CorruptImageError,
    ImageNotFoundError,
    ImageTooLargeError,
    ImageUnreadableError,
    UnsafeImagePathError,
    load_image,
    resolve_image_path,
    to_rgb,
)


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(folder / "ok.png")
    (tmp_path / "secret.png").write_bytes((folder / "ok.png").read_bytes())
    return folder


@pytest.mark.parametrize(
    "bad", ["../secret.png", "a/../../secret.png", "/etc/passwd", "C:\\x.png", "\\\\srv\\x.png", ""]
)
def test_unsafe_paths_are_refused_without_being_opened(root, monkeypatch, bad):
    def never(*args, **kwargs):
        raise AssertionError("an unsafe path was opened")

    monkeypatch.setattr(images_module.Image, "open", never)
    with pytest.raises(UnsafeImagePathError):
        load_image(root, bad)


def test_symlink_leading_outside_the_root_is_refused_unless_allowed(root):
    (root / "link.png").symlink_to(root.parent / "secret.png")
    with pytest.raises(UnsafeImagePathError, match="outside the image root"):
        load_image(root, "link.png")
    assert load_image(root, "link.png", allow_symlink_escape=True).size == (4, 3)
    assert resolve_image_path(root, "sub/x.png") == root / "sub" / "x.png"


def test_missing_unreadable_corrupt_and_truncated_files(root):
    with pytest.raises(ImageNotFoundError):
        load_image(root, "absent.png")
    (root / "folder.png").mkdir()
    with pytest.raises(ImageUnreadableError):
        load_image(root, "folder.png")
    (root / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match="junk.jpg"):
        load_image(root, "junk.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name in ("full.png", "full.jpg"):
        Image.fromarray(noise).save(root / name)
        data = (root / name).read_bytes()
        (root / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(CorruptImageError, match=f"cut_{name}"):
            load_image(root, f"cut_{name}")
        assert load_image(root, f"cut_{name}", decode=False).size == (64, 64)  # header-only check passes


def test_pixel_limit_is_a_clear_error_and_configurable(root, monkeypatch):
    Image.new("L", (100, 80)).save(root / "big.png")
    with pytest.raises(ImageTooLargeError, match="100x80 = 8000 pixels, above the limit of 7999"):
        load_image(root, "big.png", max_pixels=7999)
    assert load_image(root, "big.png", max_pixels=8000).size == (100, 80)
    # PIL's own global bomb check (here: tiny) neither fires nor leaks: our per-call limit replaces it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_image(root, "big.png", max_pixels=None).size == (100, 80)
    assert Image.MAX_IMAGE_PIXELS == 1000


def _rgb(image):
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(int)


def test_alpha_is_composited_on_the_background():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 0, 0, 0))
    rgba.putpixel((1, 0), (200, 0, 0, 128))
    px = _rgb(rgba)
    assert px[0, 0].tolist() == [255, 255, 255]
    np.testing.assert_allclose(px[0, 1], [200 * 128 / 255 + 255 * 127 / 255, 127, 127], atol=1)
    la = Image.new("LA", (1, 1), (0, 0))
    assert _rgb(la)[0, 0].tolist() == [255, 255, 255]


def test_palette_transparency_is_composited(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "t.gif", transparency=0)
    reloaded = Image.open(tmp_path / "t.gif")
    assert "transparency" in reloaded.info
    assert _rgb(reloaded).tolist() == [[[255, 255, 255], [255, 0, 0]]]


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    deep = Image.open(tmp_path / "deep.png")
    assert deep.mode.startswith("I")
    assert _rgb(deep)[0, :, 0].tolist() == [0, 100, 255]
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert _rgb(as_int32)[0, :, 0].tolist() == [0, 100, 255]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert _rgb(as_float)[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "RGB", "I;16B"])
@pytest.mark.parametrize("size", [(1, 1), (2000, 1), (1, 3000)])
def test_every_mode_and_odd_shape_converts(mode, size):
    assert _rgb(Image.new(mode, size)).shape == (size[1], size[0], 3)


def test_cmyk_matches_pil_conversion():
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert _rgb(cmyk)[0, 0].tolist() == [255, 0, 0]
