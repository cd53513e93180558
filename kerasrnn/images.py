"""Reading digits for prediction: NumPy arrays and image files (no TensorFlow)."""

from __future__ import annotations

import os

import numpy as np

from kerasrnn.errors import DataError, InputError

# The most pixels an image file may declare, checked before its pixels are decoded: a
# 48-megapixel phone photo of a digit fits, a decompression bomb (a small PNG that
# declares 20000x20000) is refused before it fills the memory.
MAX_IMAGE_PIXELS = 8192 * 8192
_SIDE = int(MAX_IMAGE_PIXELS**0.5)  # the square image of that many pixels, for messages


def load_images(path: str) -> np.ndarray:
    """Loads digits as uint8 [n, 28, 28] (or the float array as stored).

    Args:
        path: a `.npy` file ([n, 28, 28] or [28, 28], uint8 0-255 or float in [0, 1]), or an
            image file (PNG, JPEG...), laid onto white where it is transparent, made
            grey, resized to 28x28 and, when it is dark on light like ink on paper,
            inverted to MNIST's light-on-dark.

    Returns:
        The images, [n, 28, 28].

    Raises:
        InputError: the file is missing, neither a readable .npy array nor an image, or
            an image of more than `MAX_IMAGE_PIXELS` pixels.
        DataError: an image file, where Pillow is not installed.
    """
    if not os.path.isfile(path):
        raise InputError(f"image file {path} does not exist")
    if path.endswith(".npy"):
        try:
            images = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path} is not a readable .npy array: {e}") from None
        return images[None] if images.ndim == 2 else images
    try:  # Pillow reads image files only: a .npy needs nothing beyond NumPy
        from PIL import Image, UnidentifiedImageError
    except ModuleNotFoundError:
        raise DataError(
            f"reading the image file {path} needs Pillow, which is not installed: "
            "pip install pillow (or pass the digits as a .npy array)"
        ) from None

    try:
        image = Image.open(path)  # reads the header only: the pixels are decoded below
    except UnidentifiedImageError:
        raise InputError(f"{path} is neither a .npy array nor an image file") from None
    except Image.DecompressionBombError:  # Pillow's own bound, above ours
        raise _too_large(
            path, f"an image of more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        ) from None
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large(path, f"a {width}x{height} image ({width * height:,} pixels)")
        grey = _on_white(image)
    pixels = np.asarray(grey.resize((28, 28), Image.BILINEAR), dtype=np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:  # dark ink on a light background
        pixels = 255 - pixels
    return pixels[None]


def _too_large(path: str, what: str) -> InputError:
    """The refusal of an image that declares more than `MAX_IMAGE_PIXELS` pixels."""
    return InputError(
        f"{path} is {what}, more than the {MAX_IMAGE_PIXELS:,} ({_SIDE}x{_SIDE}) that kerasrnn "
        f"reads: scale it down first (28x28 is what the model sees)"
    )


def _on_white(image):
    """A Pillow image in grey ("L"), its transparent parts laid onto white: strokes drawn
    on a transparent background read as ink on paper, not as ink on black."""
    if not image.has_transparency_data:
        return image.convert("L")
    from PIL import Image

    image = image.convert("LA")  # grey is linear in RGB: compositing after it is the same
    white = Image.new("L", image.size, 255)
    return Image.composite(image.getchannel("L"), white, image.getchannel("A"))
