import gzip

import numpy as np
import pytest

from kerasrnn import idx
from kerasrnn.errors import IdxError


def _images(n=5):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte", "x-images-idx3-ubyte.gz"])
def test_write_read_round_trip(tmp_path, name):
    images = _images()
    idx.write(str(tmp_path / name), images)
    np.testing.assert_array_equal(idx.read_images(str(tmp_path / name)), images)


def test_labels_round_trip(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    idx.write(str(tmp_path / "l.gz"), labels)
    np.testing.assert_array_equal(idx.read_labels(str(tmp_path / "l.gz")), labels)


def test_reads_the_bundled_sample():
    from kerasrnn.data import SAMPLE_DIR

    images, labels = idx.read_pair(
        f"{SAMPLE_DIR}/train-images-idx3-ubyte.gz", f"{SAMPLE_DIR}/train-labels-idx1-ubyte.gz"
    )
    assert images.shape == (4000, 28, 28) and labels.shape == (4000,)
    np.testing.assert_array_equal(np.bincount(labels), [400] * 10)


def _write_raw(tmp_path, data: bytes, name="f"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_wrong_magic_number_names_file_and_expected_magic(tmp_path):
    path = _write_raw(tmp_path, idx.encode(np.zeros(3, np.uint8)), "labels-as-images")
    with pytest.raises(IdxError, match=r"labels-as-images: magic number 2049, expected 2051"):
        idx.read_images(path)


def test_images_read_as_labels_is_rejected(tmp_path):
    path = _write_raw(tmp_path, idx.encode(_images(2)))
    with pytest.raises(IdxError, match="magic number 2051, expected 2049"):
        idx.read_labels(path)


def test_wrong_image_dimensions(tmp_path):
    path = _write_raw(tmp_path, idx.encode(np.zeros((2, 27, 28), np.uint8)))
    with pytest.raises(IdxError, match=r"image dimensions \(27, 28\), expected \(28, 28\)"):
        idx.read_images(path)


def test_truncated_payload(tmp_path):
    path = _write_raw(tmp_path, idx.encode(_images(3))[:-100], "cut")
    with pytest.raises(IdxError, match="cut: truncated payload"):
        idx.read_images(path)


def test_oversized_payload(tmp_path):
    path = _write_raw(tmp_path, idx.encode(_images(3)) + b"\0" * 7)
    with pytest.raises(IdxError, match="oversized payload: 7 bytes"):
        idx.read_images(path)


def test_truncated_header(tmp_path):
    path = _write_raw(tmp_path, idx.encode(_images(1))[:9])
    with pytest.raises(IdxError, match="truncated header"):
        idx.read_images(path)


def test_empty_file(tmp_path):
    path = _write_raw(tmp_path, b"")
    with pytest.raises(IdxError, match="0 bytes, too short"):
        idx.read_images(path)


def test_count_mismatch(tmp_path):
    idx.write(str(tmp_path / "i"), _images(4))
    idx.write(str(tmp_path / "l"), np.zeros(3, np.uint8))
    with pytest.raises(IdxError, match="4 images but .* 3 labels: image/label count mismatch"):
        idx.read_pair(str(tmp_path / "i"), str(tmp_path / "l"))


def test_label_outside_0_to_9(tmp_path):
    idx.write(str(tmp_path / "l"), np.array([1, 2, 12, 3], np.uint8))
    with pytest.raises(IdxError, match="label 12 at index 2 is outside 0-9"):
        idx.read_labels(str(tmp_path / "l"))


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(idx.encode(_images(3))))
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    path = _write_raw(tmp_path, bytes(data), "bad.gz")
    with pytest.raises(IdxError, match="bad.gz: corrupt gzip data"):
        idx.read_images(path)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx.encode(_images(3)))
    path = _write_raw(tmp_path, data[: len(data) // 2], "cut.gz")
    with pytest.raises(IdxError, match="cut.gz: corrupt gzip data"):
        idx.read_images(path)


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="nope: file not found"):
        idx.read_images(str(tmp_path / "nope"))


def test_write_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="must be uint8, got float32"):
        idx.write(str(tmp_path / "x"), np.zeros((1, 28, 28), np.float32))
