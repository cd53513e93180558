"""Parity and accuracy reports: a .tflite file against the Keras model it came from."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from kerasrnn._io import write_json
from kerasrnn.evaluation import load_model
from kerasrnn.export import flatbuffer
from kerasrnn.export.micro import run_micro
from kerasrnn.export.runtime import Classifier

# A report is a few kilobytes: a larger file at its path is not one.
_MAX_REPORT_BYTES = 1 << 20
log = logging.getLogger(__name__)


def _arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(float32 images [n, steps, features], int labels [n]) from arrays or a tf.data.Dataset."""
    if isinstance(dataset, tuple):
        images, labels = dataset
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        return images.astype(np.float32), np.asarray(labels)
    batches = list(dataset.as_numpy_iterator())
    return (
        np.concatenate([x for x, _ in batches]).astype(np.float32),
        np.concatenate([y for _, y in batches]),
    )


@dataclasses.dataclass
class Report:
    """A verification report (see `verify`); `as_dict()` is what gets saved as JSON.

    `kernels` names the LiteRT kernels that ran the file (`runtime.Classifier.kernels`);
    `form` and `why`, set by `workflow.export_model`, what the file is and why
    (`convert.TfliteFile`).
    """

    tflite_path: str
    size_bytes: int
    operators: list[str]
    examples: int
    max_abs_logit_diff: float
    top1_agreement: float
    keras_accuracy: float | None
    tflite_accuracy: float | None
    micro: dict | None = None
    kernels: str | None = None
    form: str | None = None
    why: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def is_report(cls, path: str) -> bool:
        """Whether a file is a saved report: a JSON object with every field of `Report` that
        has no default (reports written before the others existed are reports too)."""
        if os.path.getsize(path) > _MAX_REPORT_BYTES:
            return False
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return False
        fields = {
            field.name for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING
        }
        return isinstance(saved, dict) and fields <= saved.keys()

    def table(self) -> str:
        """The report as aligned text lines."""
        rows = [
            ("file", self.tflite_path),
            ("size", f"{self.size_bytes:,} bytes"),
            *([("form", self.form)] if self.form else []),
            *([("why", self.why)] if self.why else []),
            ("operators", ", ".join(self.operators)),
            *([("LiteRT kernels", self.kernels)] if self.kernels else []),
            ("examples", str(self.examples)),
            ("max |logit diff| vs Keras", f"{self.max_abs_logit_diff:.3g}"),
            ("top-1 agreement with Keras", f"{self.top1_agreement:.2%}"),
        ]
        if self.keras_accuracy is not None:
            rows.append(
                (
                    "accuracy: Keras / TFLite",
                    f"{self.keras_accuracy:.2%} / {self.tflite_accuracy:.2%}",
                )
            )
        if self.micro:
            m = self.micro
            rows += [
                ("TFLM arena", f"{m['arena_bytes']:,} bytes"),
                (
                    "TFLM vs LiteRT max |diff|",
                    f"{m['max_abs_diff']:.3g}"
                    + (
                        f" ({m['max_diff_steps']} quantization steps)"
                        if m.get("max_diff_steps") is not None
                        else ""
                    ),
                ),
                ("TFLM vs LiteRT top-1 agreement", f"{m['top1_agreement']:.2%}"),
            ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def verify(
    tflite_path: str,
    keras_model,
    dataset,
    micro: bool = False,
    json_path: str | None = None,
    max_micro_examples: int | None = None,
) -> Report:
    """Runs a .tflite file and its Keras model on the same digits and compares them.

    Args:
        tflite_path: the exported file (run with the LiteRT runtime, `Classifier`, on the
            kernels it chooses: XNNPACK where it runs the file).
        keras_model: the Keras classifier (or its .keras path).
        dataset: a `tf.data.Dataset` of (x, y) batches, or (inputs, labels) arrays; float
            targets (regression) report no accuracy.
        micro: also run the file in TensorFlow Lite Micro (batch-1 files) and compare it
            with LiteRT.
        json_path: where to save the report as JSON (optional).
        max_micro_examples: run TFLM on only the first N examples (it is slower).

    Returns:
        A `Report`; `print(report.table())` shows it.
    """
    model = load_model(keras_model) if isinstance(keras_model, str) else keras_model
    images, labels = _arrays(dataset)
    keras_logits = model.predict(images, verbose=0, batch_size=256)
    classifier = Classifier(tflite_path)
    tflite_logits = classifier.predict(images)
    with open(tflite_path, "rb") as f:
        content = f.read()
    report = Report(
        tflite_path=tflite_path,
        size_bytes=len(content),
        operators=flatbuffer.operators(content),
        examples=len(labels),
        max_abs_logit_diff=float(np.abs(tflite_logits - keras_logits).max()),
        top1_agreement=float((tflite_logits.argmax(-1) == keras_logits.argmax(-1)).mean()),
        keras_accuracy=_accuracy(keras_logits, labels),
        tflite_accuracy=_accuracy(tflite_logits, labels),
        kernels=classifier.kernels,
    )
    if micro:
        report.micro = _micro_report(
            tflite_path, images[:max_micro_examples], tflite_logits[:max_micro_examples], classifier
        )
    if json_path:
        write_json(json_path, report.as_dict())
    return report


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy against integer labels; None for regression targets."""
    if labels.dtype.kind not in "iu" or logits.shape[-1] < 2:
        return None
    return float((logits.argmax(-1) == labels).mean())


def _micro_report(tflite_path, images, litert_logits, classifier) -> dict:
    result = run_micro(tflite_path, images)
    out = {
        "arena_bytes": result.arena_bytes,
        "examples": len(images),
        "max_abs_diff": float(np.abs(result.logits - litert_logits).max()),
        "top1_agreement": float((result.logits.argmax(-1) == litert_logits.argmax(-1)).mean()),
        "max_diff_steps": None,
    }
    scale = classifier.output_scale
    if scale:  # int8: the same difference counted in output quantization steps
        out["max_diff_steps"] = round(out["max_abs_diff"] / scale)
    return out
