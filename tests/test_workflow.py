"""`export_model`, behind `kerasrnn export` and `kerasrnn run`: what it refuses and flags."""

import logging
import os
import re
import stat

import pytest

from kerasrnn.config import DataConfig
from kerasrnn.errors import ConfigError
from kerasrnn.export.config import ExportConfig
from kerasrnn.export.convert import TfliteFile
from kerasrnn.export.verification import Report
from kerasrnn.export.workflow import _warn_about, export_model
from kerasrnn.models import build_classifier

SAMPLE = DataConfig(source="sample", max_examples=64)


@pytest.mark.parametrize(
    "out,config",
    [
        ("model.keras", ExportConfig()),  # --out onto its own input
        ("model.tflite", ExportConfig(stream=True)),  # ... or an extra onto it
    ],
)
def test_export_never_overwrites_the_model_it_reads(tmp_path, out, config):
    model_path = tmp_path / ("model.keras" if out == "model.keras" else "model.step.tflite")
    build_classifier(cell="elman", units=4).save(str(tmp_path / "model.keras"))
    if out != "model.keras":  # a .keras model saved under the stream file's name
        (tmp_path / "model.keras").rename(model_path)
    before = model_path.read_bytes()
    with pytest.raises(ConfigError, match=f"is the model {model_path} itself: choose another"):
        export_model(str(model_path), str(tmp_path / out), config, SAMPLE)
    assert model_path.read_bytes() == before


def _written(size: int, parameters: int, activations=None, target="litert") -> TfliteFile:
    return TfliteFile(
        "m.tflite", size, parameters, ("ADD",), "int8", "unrolled", {}, target, activations, "why"
    )


def _report(agreement: float) -> Report:
    return Report("m.tflite", 1, ["ADD"], 1000, 0.1, agreement, 0.9, 0.89)


@pytest.mark.parametrize(
    "written,report,config,warnings",
    [
        (_written(9_000, 12_000), _report(0.995), ExportConfig(), []),
        (
            _written(37_500, 28_600),
            _report(0.995),
            ExportConfig(),
            ["larger than the float32 parameters"],
        ),
        (
            _written(9_000, 12_000),
            _report(0.924),
            ExportConfig(),
            ["agrees with Keras on only 92.4%"],
        ),
        (
            _written(9_000, 12_000, activations="int16"),
            _report(0.999),
            ExportConfig(),
            ["int16 activations, which XNNPACK has no kernels for"],
        ),
        (
            _written(9_000, 12_000, activations="int8"),
            _report(0.990),
            ExportConfig(),
            ["agree with Keras on 99.00% of the test sequences"],
        ),
        (
            _written(9_000, 12_000, activations="int8"),
            _report(0.999),
            ExportConfig(c_array=True),
            ["its C array holds a file made for LiteRT"],
        ),
        (
            _written(9_000, 12_000, activations="int16", target="micro"),
            _report(0.999),
            ExportConfig(c_array=True, target="micro"),
            [],
        ),
    ],
)
def test_int8_files_that_fall_short_are_flagged_in_one_line(
    caplog, written, report, config, warnings
):
    with caplog.at_level(logging.WARNING):
        _warn_about(written, report, config)
    assert len(caplog.records) == len(warnings)
    for record, text in zip(caplog.records, warnings):
        assert text in record.getMessage() and "\n" not in record.getMessage()


def _put_a_users_file(path, what: str) -> None:
    """Puts at `path` something a user owns that an export must never replace."""
    if what == "a text file":
        path.write_text("my notes\n")
    elif what == "another run's model":
        build_classifier(cell="elman", units=4).save(str(path.with_suffix(".keras")))
        path.with_suffix(".keras").rename(path)
    elif what == "a symbolic link":
        (path.parent / "notes.txt").write_text("my notes\n")
        path.symlink_to(path.parent / "notes.txt")
    elif what == "a pipe":
        os.mkfifo(path)
    elif what == "a device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("creating a device node needs root")
    else:
        path.mkdir()


def _state(folder) -> dict:
    """Each entry of a folder: its type, and a regular file's bytes."""
    return {
        p.name: (stat.S_IFMT(os.lstat(p).st_mode), p.read_bytes() if p.is_file() else None)
        for p in folder.iterdir()
    }


@pytest.mark.parametrize(
    "what,message",
    [
        ("a text file", "is not a .tflite that kerasrnn wrote"),
        ("another run's model", "is not a .tflite that kerasrnn wrote"),
        ("a symbolic link", "is a symbolic link"),
        ("a pipe", "is a device, pipe or socket"),
        ("a device", "is a device, pipe or socket"),
        ("a folder", "is a folder"),
    ],
)
@pytest.mark.parametrize("output", ["m.tflite", "m.step.tflite", "m.verify.json"])
def test_export_never_replaces_a_users_file(tmp_path, what, message, output):
    build_classifier(cell="elman", units=4).save(str(tmp_path / "model.keras"))
    out = tmp_path / "out"
    out.mkdir()
    _put_a_users_file(out / output, what)
    before = _state(out)
    if output.endswith(".json") and message.startswith("is not"):
        message = "is not a verification report that kerasrnn wrote"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(out / output))} exists and {message}"):
        export_model(
            str(tmp_path / "model.keras"), str(out / "m.tflite"), ExportConfig(stream=True), SAMPLE
        )
    assert _state(out) == before


def test_export_replaces_its_own_files(tmp_path):
    build_classifier(cell="elman", units=4).save(str(tmp_path / "model.keras"))
    config = ExportConfig(micro=False)
    for _ in range(2):
        export_model(str(tmp_path / "model.keras"), str(tmp_path / "m.tflite"), config, SAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.tflite",
        "m.verify.json",
        "model.keras",
    ]
