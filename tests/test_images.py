"""Reading digits for prediction: a drawn digit reads as MNIST's light-on-dark whatever
its background, and an image too large to be a digit is refused before it is decoded."""

import re

import numpy as np
import pytest
from conftest import png_header
from PIL import Image

from kerasrnn.errors import InputError
from kerasrnn.images import load_images


def _strokes() -> np.ndarray:
    """A 56x56 mask of a drawn "1": True on the stroke."""
    mask = np.zeros((56, 56), bool)
    mask[8:48, 24:32] = True
    return mask


def _save(path, mode: str) -> None:
    """Black strokes on a transparent background, in one of the modes that carry alpha."""
    alpha = np.where(_strokes(), 255, 0).astype(np.uint8)
    if mode == "P":  # a palette with one transparent entry
        image = Image.fromarray(np.where(_strokes(), 0, 1).astype(np.uint8), "P")
        image.putpalette([0, 0, 0, 0, 0, 0])  # transparent black, as drawing apps save it
        image.save(path, transparency=1)
        return
    rgba = np.stack([np.zeros_like(alpha)] * 3 + [alpha], axis=-1)
    Image.fromarray(rgba, "RGBA").convert(mode).save(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_black_strokes_on_transparent_read_as_ink_on_white_paper(tmp_path, mode):
    _save(tmp_path / "drawn.png", mode)
    Image.fromarray(np.where(_strokes(), 0, 255).astype(np.uint8)).save(tmp_path / "paper.png")
    [drawn] = load_images(str(tmp_path / "drawn.png"))
    [paper] = load_images(str(tmp_path / "paper.png"))
    np.testing.assert_array_equal(drawn, paper)
    assert drawn[:, 14].max() == 255 and drawn[0].max() == 0  # a light stroke on black


@pytest.mark.parametrize(
    "width,height,size",
    [
        (9000, 9000, "a 9000x9000 image (81,000,000 pixels)"),
        (20000, 20000, f"an image of more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels"),
    ],
)
def test_huge_image_is_refused_before_its_pixels_are_decoded(tmp_path, width, height, size):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(width, height))
    with pytest.raises(
        InputError, match=re.escape(f"huge.png is {size}, more than the 67,108,864")
    ):
        load_images(str(path))
