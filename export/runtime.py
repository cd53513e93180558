"""The device runtime: run exported classifiers with NumPy and `ai_edge_litert` only.

This module never imports TensorFlow or Keras, so it runs where only the LiteRT runtime
is installed (`pip install ai-edge-litert numpy`). It is the one module that builds a
LiteRT interpreter (export checks converted files with `check_loads`).

    clf = Classifier("model.tflite")
    logits = clf.predict(images)          # images [n, 28, 28] in [0, 1] (or uint8 0-255)

    stream = Stream("model.step.tflite")  # one row at a time
    for row in image:
        logits = stream.push(row)

A damaged file is refused with a `ModelFileError` naming it, never believed and never a
crash (see `kerasrnn.export.integrity`: the digest, the structural check and the child
process that every file is loaded in first). Logits that are not finite are
an error, never a prediction.

Kernels (`config.RUNTIME_KERNELS`): LiteRT's XNNPACK delegate where the child process
ran the file with it, else LiteRT's builtin kernels ("auto", the default); or either one
by name.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from kerasrnn.config import check_choice, check_positive
from kerasrnn.errors import InputError, ModelFileError
from kerasrnn.export.config import RUNTIME_KERNELS
from kerasrnn.export.integrity import check_model, read_checked, xnnpack_failure

# The metadata entry of a streaming file that holds its initial state (float32 [state]).
INITIAL_STATE_METADATA = "kerasrnn.initial_state"
# The metadata entry of a classifier's class names, one per output, as a UTF-8 JSON list;
# written for datasets other than MNIST (a file without it classifies digits 0-9).
CLASS_NAMES_METADATA = "kerasrnn.class_names"
# The metadata entry of the values a file takes, float32 [low, high]: written for files of
# other data than pixels ((-inf, inf): any finite values); a file without it takes pixels.
INPUT_RANGE_METADATA = "kerasrnn.input_range"
PIXEL_RANGE = (0.0, 1.0)
_RESOLVERS = {
    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "xnnpack": OpResolverType.AUTO,
}
log = logging.getLogger(__name__)


def _interpreter(content: bytes, kernels: str = "builtin", threads: int = 1) -> Interpreter:
    """A LiteRT interpreter over `content`, its tensors allocated.

    Args:
        kernels: "builtin" or "xnnpack" (see `config.RUNTIME_KERNELS`).
        threads: the interpreter's threads (one gives the lowest batch-1 latency here).
    """
    interpreter = Interpreter(
        model_content=content,
        experimental_op_resolver_type=_RESOLVERS[kernels],
        num_threads=threads,
    )
    interpreter.allocate_tensors()
    return interpreter


def _delegated(interpreter: Interpreter) -> bool:
    """Whether a delegate (XNNPACK) runs any of the interpreter's operators: it takes none
    of a file whose tensors are all int16, say."""
    return any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def check_loads(content: bytes, kernels: str = "builtin") -> None:
    """Checks a model (`check_model`), then loads and runs it once on zeros, as a device
    would (used on freshly converted files, and in `integrity.probe`'s child process).

    Args:
        content: the model's bytes.
        kernels: "builtin" or "xnnpack" (see `config.RUNTIME_KERNELS`).

    Raises:
        ValueError: the model is malformed, or LiteRT rejects it.
        RuntimeError: LiteRT cannot allocate or run it.
    """
    check_model(schema.ModelT.InitFromPackedBuf(content, 0), len(content))
    _interpreter(content, kernels).invoke()


class Invoker:
    """A model's bytes in LiteRT, run on float inputs named as its tensors are (export's
    check that a converted file computes what the Keras model does).

    Args:
        content: the model's bytes.
        kernels: "builtin" or "xnnpack" (see `config.RUNTIME_KERNELS`).

    Raises:
        RuntimeError: LiteRT cannot prepare the model with these kernels.
    """

    def __init__(self, content: bytes, kernels: str = "builtin"):
        self._interpreter = _interpreter(content, kernels)

    def __call__(self, *positional: np.ndarray, **named: np.ndarray) -> dict[str, np.ndarray]:
        """One invoke on inputs given in the file's input order or by tensor name;
        returns every output by name, as float32 (dequantized)."""
        for _ in range(2):  # once more after resizing a dynamic batch
            details = self._interpreter.get_input_details()
            values = dict(zip((d["name"] for d in details), positional)) | named
            by_name = {d["name"]: d for d in details}
            resize = [n for n, v in values.items() if list(by_name[n]["shape"]) != list(v.shape)]
            for name in resize:
                self._interpreter.resize_tensor_input(by_name[name]["index"], values[name].shape)
            if not resize:
                break
            self._interpreter.allocate_tensors()
        for name, value in values.items():
            self._interpreter.set_tensor(by_name[name]["index"], quantize(value, by_name[name]))
        self._interpreter.reset_all_variables()
        self._interpreter.invoke()
        return {
            d["name"]: dequantize(self._interpreter.get_tensor(d["index"]), d)
            for d in self._interpreter.get_output_details()
        }


def _load(path: str, kernels: str, threads: int) -> tuple[bytes, Interpreter, str]:
    """Reads and checks a model file (`integrity.read_checked`), then builds its interpreter.

    Args:
        kernels: one of `config.RUNTIME_KERNELS`.
        threads: the interpreter's threads (a positive integer).

    Returns:
        (the file's bytes, its interpreter with tensors allocated, the kernels that run it:
        "xnnpack" where the delegate takes any of its operators, else "builtin").

    Raises:
        ConfigError: `kernels` or `threads` is not one of the choices.
        ModelFileError: the file is missing, damaged or changed, LiteRT cannot load it, or
            `kernels="xnnpack"` and XNNPACK cannot run it (the reason).
    """
    check_choice("kernels", kernels, RUNTIME_KERNELS)
    check_positive("threads", threads, integer=True)
    content, _ = read_checked(path)
    if kernels != "builtin":
        failure = xnnpack_failure(content, path)
        if failure is not None and kernels == "xnnpack":
            raise ModelFileError(
                f"{path}: XNNPACK cannot run it ({failure}); use kernels='builtin'"
            )
        if failure is not None:
            log.warning(
                "%s: XNNPACK cannot run it (%s); running it with LiteRT's builtin kernels",
                path,
                failure,
            )
        kernels = "builtin" if failure is not None else "xnnpack"
    try:
        interpreter = _interpreter(content, kernels, threads)
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: invalid or truncated TFLite model ({e})") from None
    return content, interpreter, "xnnpack" if _delegated(interpreter) else "builtin"


def _invoke(interpreter: Interpreter, path: str) -> None:
    """Runs the interpreter; LiteRT's failures become `ModelFileError`s naming the file."""
    try:
        interpreter.invoke()
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: LiteRT failed to run the model ({e})") from None


def _check_finite(logits: np.ndarray, path: str) -> np.ndarray:
    """Returns `logits`, or raises `ModelFileError` when some are NaN or infinite."""
    if not np.isfinite(logits).all():
        raise ModelFileError(
            f"{path}: the model computed non-finite logits (NaN or infinity); its weights "
            f"are damaged or diverged"
        )
    return logits


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """float -> a tensor's dtype, using its (scale, zero point) when it is integer.

    Args:
        values: float values.
        detail: {"dtype": ..., "quantization": (scale, zero_point)}, as interpreters give.
    """
    if detail["dtype"] == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(
        detail["dtype"]
    )


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """A tensor's values -> float32 (see `quantize`)."""
    if detail["dtype"] == np.float32:
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


def _to_float(values, input_range: tuple[float, float] = PIXEL_RANGE) -> np.ndarray:
    """Validates input values and gives them as float32.

    Args:
        values: uint8 pixels 0-255 (scaled to [0, 1]; for pixel files only) or floats.
        input_range: what the file takes (`input_range_of`): pixels in [0, 1], or any
            finite values (-inf, inf).
    """
    array = np.asarray(values)
    pixels = input_range == PIXEL_RANGE
    noun = "pixels" if pixels else "inputs"
    if array.dtype == np.uint8 and pixels:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind != "f":
        expected = "uint8 (0-255) or float in [0, 1]" if pixels else "float"
        raise InputError(f"{noun} must be {expected}, got {array.dtype}")
    array = array.astype(np.float32)
    if np.isnan(array).any():
        raise InputError(f"{noun} contain NaN")
    if np.isinf(array).any():
        raise InputError(f"{noun} contain infinity")
    low, high = input_range
    if array.size and (array.min() < low or array.max() > high):
        raise InputError(
            f"float {noun} must lie in [{low:g}, {high:g}], got range "
            f"[{array.min():.3g}, {array.max():.3g}]"
        )
    return array


def input_range_of(content: bytes, path: str) -> tuple[float, float]:
    """The input range a verified file stores (`INPUT_RANGE_METADATA`); files without
    the entry take pixels in [0, 1]."""
    data = _metadata(content, INPUT_RANGE_METADATA)
    if data is None:
        return PIXEL_RANGE
    if data.size != 8:
        raise ModelFileError(f"{path}: damaged input range metadata")
    low, high = (float(v) for v in data.view(np.float32))
    if not low < high:
        raise ModelFileError(f"{path}: damaged input range metadata ({low}, {high})")
    return low, high


def _as_batch(images, shape: tuple[int, int], input_range=PIXEL_RANGE) -> np.ndarray:
    """[n, steps, features] float32 from a batch or a single input of the model's shape.

    Models over 784 pixel steps also take [n, 28, 28] images, read in row-major order.
    """
    array = _to_float(images, input_range)
    if array.shape == shape:
        array = array[None]
    elif array.shape[-2:] == (28, 28) and shape == (784, 1):
        array = array.reshape(-1, *shape)
    if array.ndim != 3 or array.shape[1:] != shape:
        raise InputError(
            f"images must have shape [n, {shape[0]}, {shape[1]}] or "
            f"[{shape[0]}, {shape[1]}], got {list(np.shape(images))}"
        )
    return array


class Classifier:
    """Runs a whole-sequence classifier (.tflite from `kerasrnn export`).

    Args:
        path: the .tflite file (float32, float16, dynamic or int8).
        kernels: one of `config.RUNTIME_KERNELS` ("auto": XNNPACK where it runs the file,
            else LiteRT's builtin kernels, with a warning naming why).
        threads: the interpreter's threads (one gives the lowest batch-1 latency on the
            models measured in the README).

    Attributes:
        kernels: the kernels that run it: "xnnpack" where the delegate takes any of its
            operators (it takes none of an int16-activation file), else "builtin".

    Raises:
        ConfigError: `kernels` or `threads` is not one of the choices.
        ModelFileError: the file is missing, damaged, changed since export, or not a
            classifier LiteRT can run (or XNNPACK cannot, with `kernels="xnnpack"`).
    """

    def __init__(self, path: str, kernels: str = "auto", threads: int = 1):
        self.path = path
        content, self._interpreter, self.kernels = _load(path, kernels, threads)
        inputs, outputs = (
            self._interpreter.get_input_details(),
            self._interpreter.get_output_details(),
        )
        if (
            len(inputs) != 1
            or len(outputs) != 1
            or len(inputs[0]["shape"]) != 3
            or len(outputs[0]["shape"]) != 2
        ):
            raise ModelFileError(
                f"{path}: not a kerasrnn classifier (expected one "
                f"[batch, steps, features] input and one [batch, classes] output)"
            )
        self._input, self._output = inputs[0], outputs[0]
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.classes = int(self._output["shape"][-1])
        # what each output means, e.g. "T-shirt/top"; digits where the file names none
        self.class_names = _class_names(content, path, self.classes)
        # what the file takes: pixels in [0, 1] (or uint8), or any finite values
        self.input_range = input_range_of(content, path)
        self.batch_size = int(self._input["shape_signature"][0])  # -1: dynamic
        self.quantized = self._input["dtype"] != np.float32
        # the size of one output quantization step (None for float outputs)
        self.output_scale = (
            float(self._output["quantization"][0]) if self._output["dtype"] != np.float32 else None
        )

    def predict(self, images) -> np.ndarray:
        """Logits for a batch of any size.

        Args:
            images: [n, 28, 28] (or the model's [n, steps, features]), uint8 0-255 or float
                in [0, 1] (a file of other data: floats in its `input_range`); a single
                input [steps, features] is accepted too.

        Returns:
            float32 logits [n, classes] (dequantized for int8 models); [0, classes] for an
            empty batch.

        Raises:
            InputError: the images are malformed.
            ModelFileError: LiteRT failed to run the model, or it computed non-finite logits.
        """
        x = _as_batch(images, self.input_shape, self.input_range)
        if not len(x):
            return np.zeros((0, self.classes), np.float32)
        batch = self.batch_size if self.batch_size > 0 else len(x)
        if self.batch_size < 0:
            try:
                self._interpreter.resize_tensor_input(
                    self._input["index"], [len(x), *self.input_shape]
                )
                self._interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise ModelFileError(
                    f"{self.path}: LiteRT cannot take {len(x)} images ({e})"
                ) from None
            self._input, self._output = (
                self._interpreter.get_input_details()[0],
                self._interpreter.get_output_details()[0],
            )
        logits = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            padded = np.concatenate(
                [chunk, np.zeros((batch - len(chunk), *self.input_shape), np.float32)]
            )
            self._interpreter.set_tensor(self._input["index"], quantize(padded, self._input))
            self._interpreter.reset_all_variables()  # a fused LSTM's state: every batch starts at 0
            _invoke(self._interpreter, self.path)
            out = dequantize(self._interpreter.get_tensor(self._output["index"]), self._output)
            logits.append(out[: len(chunk)])
        return _check_finite(np.concatenate(logits), self.path)

    def classify(self, images) -> np.ndarray:
        """Predicted class ids [n]."""
        return self.predict(images).argmax(axis=-1)


def _metadata(content: bytes, name: str) -> np.ndarray | None:
    """The bytes of a verified file's metadata entry `name` (uint8 [n]), or None."""
    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == name.encode():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()  # 0 when it has no data
            return data if isinstance(data, np.ndarray) else np.zeros(0, np.uint8)
    return None


def _class_names(content: bytes, path: str, classes: int) -> tuple[str, ...]:
    """A classifier's class names (`CLASS_NAMES_METADATA`), or "0"... "9" without them."""
    data = _metadata(content, CLASS_NAMES_METADATA)
    if data is None:
        return tuple(str(k) for k in range(classes))
    try:
        names = json.loads(data.tobytes().decode("utf-8"))
    except ValueError:
        names = None
    if (
        not isinstance(names, list)
        or len(names) != classes
        or not all(isinstance(n, str) for n in names)
    ):
        raise ModelFileError(f"{path}: damaged class names metadata (not {classes} names)")
    return tuple(names)


def _initial_state(content: bytes, path: str) -> np.ndarray:
    """The initial state a streaming file stores in its metadata (float32 [state])."""
    data = _metadata(content, INITIAL_STATE_METADATA)
    if data is not None:
        if data.size == 0 or data.size % 4:
            raise ModelFileError(f"{path}: damaged initial state metadata")
        return data.view(np.float32).copy()
    raise ModelFileError(f"{path}: not a kerasrnn streaming model (no initial state metadata)")


class Stream:
    """Runs a streaming step model: push one row at a time, get the logits so far.

    Args:
        path: a step .tflite (`kerasrnn export --stream`), float32 or int8.
        kernels, threads: see `Classifier`.

    Raises:
        ConfigError, ModelFileError: see `Classifier`.
    """

    def __init__(self, path: str, kernels: str = "auto", threads: int = 1):
        self.path = path
        content, self._interpreter, self.kernels = _load(path, kernels, threads)
        inputs = {d["name"]: d for d in self._interpreter.get_input_details()}
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        if set(inputs) != {"row", "state"} or set(outputs) != {"logits", "state"}:
            raise ModelFileError(
                f"{path}: not a kerasrnn streaming model (inputs "
                f"{sorted(inputs)}, outputs {sorted(outputs)}; expected "
                f"['row', 'state'] and ['logits', 'state'])"
            )
        self._row, self._state_in = inputs["row"], inputs["state"]
        self._state_out, self._logits = outputs["state"], outputs["logits"]
        self.initial_state = _initial_state(content, path)
        self.input_range = input_range_of(content, path)
        shapes = [list(d["shape"]) for d in (self._row, self._state_in, self._state_out)]
        state = [1, len(self.initial_state)]
        if len(shapes[0]) != 2 or shapes[0][0] != 1 or shapes[1:] != [state, state]:
            raise ModelFileError(
                f"{path}: damaged streaming model (row {shapes[0]}, state in {shapes[1]}, "
                f"state out {shapes[2]}, initial state {state})"
            )
        self.features = int(shapes[0][1])
        self.reset()

    def reset(self) -> None:
        """Starts a new sequence."""
        self.state = self.initial_state[None].copy()
        self.steps = 0

    def push(self, row) -> np.ndarray:
        """Feeds one row [features] (uint8 0-255 or float in [0, 1]; a file of other data:
        floats in its `input_range`).

        Returns:
            float32 logits [classes] after this row.

        Raises:
            InputError: the row is malformed.
            ModelFileError: LiteRT failed to run the model, or it computed non-finite logits.
        """
        x = _to_float(row, self.input_range)
        if x.shape != (self.features,):
            raise InputError(f"a row must have shape [{self.features}], got {list(x.shape)}")
        x = x[None]
        self._interpreter.set_tensor(self._row["index"], quantize(x, self._row))
        self._interpreter.set_tensor(self._state_in["index"], quantize(self.state, self._state_in))
        _invoke(self._interpreter, self.path)
        self.state = dequantize(
            self._interpreter.get_tensor(self._state_out["index"]), self._state_out
        )
        self.steps += 1
        logits = dequantize(self._interpreter.get_tensor(self._logits["index"]), self._logits)[0]
        return _check_finite(logits, self.path)
