"""`export_model`, behind `kerasrnn export` and `kerasrnn run`: what it refuses and flags."""

import logging

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


def _written(size: int, parameters: int) -> TfliteFile:
    return TfliteFile("m.tflite", size, parameters, ("ADD",), "int8", "unrolled", {})


def _report(agreement: float) -> Report:
    return Report("m.tflite", 1, ["ADD"], 1000, 0.1, agreement, 0.9, 0.89)


@pytest.mark.parametrize(
    "written,report,warnings",
    [
        (_written(9_000, 12_000), _report(0.995), []),
        (_written(37_500, 28_600), _report(0.995), ["larger than the float32 parameters"]),
        (_written(9_000, 12_000), _report(0.924), ["agrees with Keras on only 92.4%"]),
    ],
)
def test_int8_files_that_fall_short_are_flagged_in_one_line(caplog, written, report, warnings):
    with caplog.at_level(logging.WARNING):
        _warn_about(written, report)
    assert len(caplog.records) == len(warnings)
    for record, text in zip(caplog.records, warnings):
        assert text in record.getMessage() and "\n" not in record.getMessage()
