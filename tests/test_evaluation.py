"""Loading saved classifiers: a hostile archive is refused before it is inflated."""

import zipfile

import pytest

from kerasrnn.errors import ModelFileError
from kerasrnn.evaluation import load_model


def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w") as member:
            for _ in range(64):
                member.write(bytes(1 << 20))  # 64 MiB of zeros: about 64 KB deflated
    with pytest.raises(
        ModelFileError, match=r"bomb.keras: the archive inflates to 67,108,866 bytes"
    ):
        load_model(str(path))
