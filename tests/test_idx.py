import gzip
import os
import stat
import subprocess
import sys
import zlib

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


_READ_IN_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GiB: a runaway read fails
from kerasrnn import idx
from kerasrnn.errors import IdxError
try:
    idx.read_images(sys.argv[1])
except IdxError as e:
    print(e)
    with open("/proc/self/status") as f:  # VmHWM: this process's peak resident memory
        print(next(line.split()[1] for line in f if line.startswith("VmHWM")))
    sys.exit(3)
"""


def _read_in_child(path: str) -> tuple[str, int]:
    """Reads `path` as images in a child process with 2 GiB of address space and 60 s.

    Returns:
        (the IdxError message, the child's peak resident memory in MiB).
    """
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", _READ_IN_CHILD, path],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert child.returncode == 3, child.stderr[-2000:]
    message, peak_kib = child.stdout.splitlines()
    return message, int(peak_kib) // 1024


def test_fifo_is_refused_unread(tmp_path):
    path = str(tmp_path / "train-images-idx3-ubyte")
    os.mkfifo(path)  # reading it would wait for a writer forever
    message, _ = _read_in_child(path)
    assert (
        message
        == f"{path}: not a regular file (a FIFO, device or socket); give the path of an IDX file"
    )


def test_symlink_to_dev_zero_is_refused_unread(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.symlink_to("/dev/zero")  # endless zeros: reading them grew past 6 GB
    message, _ = _read_in_child(str(path))
    assert "not a regular file" in message


def test_folder_is_refused(tmp_path):
    with pytest.raises(IdxError, match="not a regular file \\(a folder\\)"):
        idx.read_images(str(tmp_path))


def test_gzip_bomb_fails_fast_with_bounded_memory(tmp_path):
    # A valid header for one image, then 512 MiB of zeros: about 0.5 MB gzipped.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    path = tmp_path / "bomb.gz"
    with open(path, "wb") as f:
        f.write(compressor.compress(idx.encode(_images(1))))
        zeros = bytes(1 << 24)
        for _ in range(32):
            f.write(compressor.compress(zeros))
        f.write(compressor.flush())
    assert path.stat().st_size < 1 << 20
    message, peak_mib = _read_in_child(str(path))
    assert "oversized payload: the gzip data holds more than the 784 bytes" in message
    assert peak_mib < 256  # the bomb inflates to 512 MiB


def test_overflowing_dimensions_report_the_true_sizes(tmp_path):
    big = 2**32 - 1
    header = bytes([0, 0, 8, 3]) + np.array([big, big, big], ">u4").tobytes()
    path = _write_raw(tmp_path, header + bytes(784), "huge")
    with pytest.raises(
        IdxError, match=f"huge: truncated payload: header promises {big**3:,} bytes"
    ):
        idx.read_images(path)


def test_gzip_declaring_more_than_it_can_hold_is_refused_before_inflating(tmp_path):
    header = bytes([0, 0, 8, 3]) + np.array([2**31, 28, 28], ">u4").tobytes()
    path = _write_raw(tmp_path, gzip.compress(header + bytes(784)), "lie.gz")
    with pytest.raises(IdxError, match="more than a gzip file of [0-9,]+ bytes can hold"):
        idx.read_images(path)


def test_written_files_respect_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        idx.write(str(tmp_path / "l"), np.zeros(3, np.uint8))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "l").st_mode) == 0o600
