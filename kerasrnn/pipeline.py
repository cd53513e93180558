"""The end-to-end job behind `kerasrnn run`: train, evaluate, export float and int8, verify."""

from __future__ import annotations

import logging
import os

from kerasrnn import data
from kerasrnn._io import write_json
from kerasrnn._lock import folder_lock
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig
from kerasrnn.errors import ConfigError, FirmwareError
from kerasrnn.export.config import ExportConfig, FirmwareConfig
from kerasrnn.export.firmware import (
    PROJECT_MARKER,
    build_firmware,
    check_tools,
    mark_project_folder,
)
from kerasrnn.export.workflow import export_model
from kerasrnn.training_run import TrainResult, train

log = logging.getLogger(__name__)


def run(
    model_config: ModelConfig,
    data_config: DataConfig,
    train_config: TrainConfig,
    out_dir: str,
    resume: bool = False,
    firmware: FirmwareConfig | None = None,
    target: str = "litert",
) -> dict:
    """Trains into `out_dir`, then exports and verifies `model.tflite` (float32) and
    `model_int8.tflite` (full integer, with its streaming model; for target "micro" also
    its C arrays), both made for `target` (see `ExportConfig.target`), and with
    `firmware` builds and runs the int8 file as firmware (`out_dir/firmware-TARGET`).

    Returns:
        The summary also written to `out_dir/pipeline.json`: test accuracy, per exported
        file its size, operators, parity, accuracy and TFLM arena, and the firmware's
        result (None when its toolchain is missing, which a warning names).

    Raises:
        ConfigError: `train_config` asks for a multi-worker strategy (train with
            `training_run.train` on every worker, then export the chief's model.keras).
        RunFolderError: another process trains or exports into `out_dir` (see
            `kerasrnn._lock`); what it already wrote is kept.
    """
    if train_config.strategy == "multi-worker":
        raise ConfigError(
            "run trains and exports in one process: a multi-worker run trains with train "
            "(kerasrnn train) on every worker, then the chief's model.keras is exported "
            "(kerasrnn export)"
        )
    result = train(model_config, data_config, train_config, out_dir, resume=resume)
    # The exports are the run folder's writes too: one process at a time (another
    # `kerasrnn run --resume` of the folder is refused until this one ends).
    with folder_lock(result.run_dir, "run folder"):
        return _export(result, data_config, firmware, target)


def _export(
    result: TrainResult, data_config: DataConfig, firmware: FirmwareConfig | None, target: str
) -> dict:
    """The export stage of `run`, into the trained run's folder; returns its summary."""
    summary = {
        "run_dir": result.run_dir,
        "parameters": result.test["parameters"],
        "epochs": result.test["epochs"],
        "test_accuracy": result.test["test_accuracy"],
        "exports": {},
    }
    model_path = os.path.join(result.run_dir, "model.keras")
    for name, config in (
        ("model.tflite", ExportConfig("none", target=target)),
        (
            "model_int8.tflite",
            ExportConfig("int8", target=target, stream=True, c_array=target == "micro"),
        ),
    ):
        written, report, extras = export_model(
            model_path, os.path.join(result.run_dir, name), config, data_config
        )
        summary["exports"][name] = {
            "quantization": written.quantization,
            "form": written.form,
            "why": written.why,
            "size_bytes": written.size_bytes,
            "size_ratio": round(written.size_ratio, 3),
            "operators": list(written.operators),
            "max_abs_logit_diff": report.max_abs_logit_diff,
            "top1_agreement": report.top1_agreement,
            "accuracy": report.tflite_accuracy,
            "micro": report.micro,
            **extras,
        }
    if firmware is not None:
        summary["firmware"] = _firmware(
            os.path.join(result.run_dir, "model_int8.tflite"),
            result.run_dir,
            firmware,
            data_config,
        )
    sizes = {name: e["size_bytes"] for name, e in summary["exports"].items()}
    if sizes["model_int8.tflite"] > sizes["model.tflite"]:
        log.warning(
            "model_int8.tflite (%s bytes) is larger than model.tflite (%s bytes), and "
            "the C array holds the int8 file: at this size the float32 file is the "
            "smaller one to deploy",
            f"{sizes['model_int8.tflite']:,}",
            f"{sizes['model.tflite']:,}",
        )
    write_json(os.path.join(result.run_dir, "pipeline.json"), summary)
    return summary


def _firmware(
    tflite_path: str, run_dir: str, config: FirmwareConfig, data_config: DataConfig
) -> dict | None:
    """Builds (and runs) the int8 file as firmware; None, with a warning, without tools."""
    try:
        check_tools(config)
    except FirmwareError as e:
        log.warning("no firmware row: %s", e)
        return None
    images, _ = data.load_arrays(data_config, "test")
    project = os.path.join(run_dir, f"firmware-{config.target}")
    marker = os.path.join(project, PROJECT_MARKER)
    if os.path.isfile(os.path.join(project, "report.json")) and not os.path.exists(marker):
        mark_project_folder(project)  # this run's own, built before folders were marked
    return build_firmware(tflite_path, project, config, images).as_dict()


def summary_table(summary: dict) -> str:
    """One table: the Keras model, then each exported file."""
    lines = [
        (
            f"Keras model: {summary['parameters']:,} parameters "
            f"({4 * summary['parameters']:,} bytes float32), {summary['epochs']} epochs, "
            f"test accuracy {summary['test_accuracy']:.2%}"
        ),
        (
            f"{'file':<20} {'bytes':>8} {'ratio':>6} {'accuracy':>9} {'top-1 agree':>12} "
            f"{'max |diff|':>10} {'TFLM arena':>11} {'TFLM agree':>11}"
        ),
    ]
    for name, e in summary["exports"].items():
        micro = e["micro"] or {}
        lines.append(
            f"{name:<20} {e['size_bytes']:>8,} {e['size_ratio']:>6.2f} "
            f"{e['accuracy']:>9.2%} {e['top1_agreement']:>12.2%} "
            f"{e['max_abs_logit_diff']:>10.3g} {micro.get('arena_bytes', 0):>11,} "
            f"{micro.get('top1_agreement', 0):>11.2%}"
        )
    lines += [f"{name}: {e['form']} ({e['why']})" for name, e in summary["exports"].items()]
    firmware = summary.get("firmware")
    if firmware:
        exact = {a["reference"]: f"{a['exact']}/{a['digits']}" for a in firmware["agreement"]}
        flash = f"{firmware['flash_bytes']:,}" if firmware["flash_bytes"] is not None else "-"
        ram = f"{firmware['ram_bytes']:,}" if firmware["ram_bytes"] is not None else "-"
        lines.append(
            f"firmware {firmware['target']}: flash {flash} bytes, RAM {ram} bytes, arena "
            f"{firmware['arena_bytes']:,}; output bytes identical to "
            + ", ".join(f"{ref} on {n} digits" for ref, n in exact.items())
        )
    lines.append(f"run folder: {summary['run_dir']}")
    return "\n".join(lines)
