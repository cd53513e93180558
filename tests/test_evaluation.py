"""Loading saved classifiers: a hostile archive is refused before it is inflated."""

import struct
import zipfile

import pytest

from kerasrnn import evaluation
from kerasrnn.errors import ModelFileError
from kerasrnn.evaluation import load_model


def _zeros_archive(path, megabytes: int, compression=zipfile.ZIP_DEFLATED) -> None:
    """A .keras-like zip whose weights member is `megabytes` MiB of zeros (a few KB packed)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w") as member:
            for _ in range(megabytes):
                member.write(bytes(1 << 20))


def _understate_sizes(path) -> None:
    """Rewrites every size in the archive's local and central headers to 10 bytes."""
    data = bytearray(path.read_bytes())
    for signature, sizes_at in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
        at = data.find(signature)
        while at >= 0:
            struct.pack_into("<II", data, at + sizes_at, 10, 10)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.keras"
    _zeros_archive(path, 64)  # 64 MiB of zeros: about 64 KB deflated
    with pytest.raises(
        ModelFileError, match=r"bomb.keras: the archive inflates to more than 16,777,216 bytes"
    ):
        load_model(str(path))


def test_zip_bomb_whose_headers_understate_its_sizes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "_MAX_SMALL_ARCHIVE", 1 << 20)
    path = tmp_path / "liar.keras"
    _zeros_archive(path, 4)
    _understate_sizes(path)
    assert sum(m.file_size for m in zipfile.ZipFile(path).infolist()) == 20
    with pytest.raises(
        ModelFileError, match=r"liar.keras: the archive inflates to more than 1,048,576 bytes"
    ):
        load_model(str(path))


def test_member_compressed_otherwise_than_keras_writes_is_refused_unread(tmp_path):
    path = tmp_path / "bzip2.keras"
    _zeros_archive(path, 1, zipfile.ZIP_BZIP2)
    _understate_sizes(path)  # zipfile would inflate a whole bzip2 chunk before cutting it
    with pytest.raises(ModelFileError, match=r"bzip2.keras: config.json is compressed with bzip2"):
        load_model(str(path))
