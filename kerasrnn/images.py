"""Reading digits for prediction: NumPy arrays and image files (no TensorFlow)."""

from __future__ import annotations

import os

import numpy as np

from kerasrnn.errors import DataError, InputError


def load_images(path: str) -> np.ndarray:
    """Loads digits as uint8 [n, 28, 28] (or the float array as stored).

    Args:
        path: a `.npy` file ([n, 28, 28] or [28, 28], uint8 0-255 or float in [0, 1]), or an
            image file (PNG, JPEG...), made grey, resized to 28x28 and, when it is dark on
            light like ink on paper, inverted to MNIST's light-on-dark.

    Returns:
        The images, [n, 28, 28].

    Raises:
        InputError: the file is missing, or neither a readable .npy array nor an image.
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
        image = Image.open(path).convert("L")
    except UnidentifiedImageError:
        raise InputError(f"{path} is neither a .npy array nor an image file") from None
    pixels = np.asarray(image.resize((28, 28), Image.BILINEAR), dtype=np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:  # dark ink on a light background
        pixels = 255 - pixels
    return pixels[None]
