"""The device runtime: NumPy + ai_edge_litert only, clear errors, never a crash."""

import logging
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from conftest import relative_difference
from hostile import drop_digest, endless_loop

from kerasrnn.errors import InputError, ModelFileError
from kerasrnn.export import flatbuffer, integrity, runtime
from kerasrnn.export.integrity import DIGEST_METADATA, verify_digest
from kerasrnn.export.runtime import Classifier, Stream

# Run code where `import tensorflow` (or keras) raises, as on a device with LiteRT only.
_NO_TENSORFLOW = textwrap.dedent("""
    import sys
    for name in ("tensorflow", "keras", "tf_keras"):
        sys.modules[name] = None  # any import of these now raises ImportError
""")


def run_without_tensorflow(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _NO_TENSORFLOW + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def files(exported, trained_models, test_digits):
    """The session's elman-64 as float32, int8, streaming and dynamic-batch files, with
    Keras's logits."""
    model = trained_models["elman"]
    images = (test_digits[0][:64] * 255).round().astype(np.uint8)
    return {
        "float": exported["elman", "none"].path,
        "int8": exported["elman", "int8"].path,
        "int8 activations": exported["elman", "int8 activations"].path,
        "stream": exported["elman", "stream"].path,
        "dynamic": exported["elman", "dynamic batch"].path,
        "keras_logits": model.predict(images.astype(np.float32) / 255, verbose=0),
        "images": images,
    }


def test_a_file_stores_its_class_names_and_the_classifier_reads_them(
    files, trained_models, tmp_path
):
    from kerasrnn.config import CLASS_NAMES
    from kerasrnn.errors import ConfigError
    from kerasrnn.export.convert import to_tflite

    names = CLASS_NAMES["fashion_mnist"]
    path = str(tmp_path / "named.tflite")
    to_tflite(trained_models["elman"], path, class_names=names, target="micro")  # as files'
    named, plain = Classifier(path), Classifier(files["float"])
    assert named.class_names == names
    assert plain.class_names == tuple("0123456789")  # a file without names: digits
    np.testing.assert_array_equal(named.predict(files["images"]), plain.predict(files["images"]))
    with pytest.raises(ConfigError, match=r"name each of the model's 10 classes, got 2"):
        to_tflite(trained_models["elman"], str(tmp_path / "two.tflite"), class_names=("a", "b"))
    assert not os.path.exists(tmp_path / "two.tflite")


def test_runtime_works_where_tensorflow_cannot_be_imported(files, tmp_path):
    np.save(tmp_path / "images.npy", files["images"])
    result = run_without_tensorflow(
        """
        import sys, numpy as np
        try:
            import tensorflow
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        from kerasrnn.export.runtime import Classifier, Stream
        images = np.load(sys.argv[3])
        np.save(sys.argv[4], Classifier(sys.argv[1]).predict(images))
        stream = Stream(sys.argv[2])
        for row in images[0]:
            logits = stream.push(row)
        np.save(sys.argv[5], logits)
        assert not any(m.split(".")[0] in ("tensorflow", "keras") and sys.modules[m] is not None
                       for m in sys.modules)
    """,
        files["float"],
        files["stream"],
        str(tmp_path / "images.npy"),
        str(tmp_path / "out.npy"),
        str(tmp_path / "stream.npy"),
    )
    assert result.returncode == 0, result.stderr
    assert relative_difference(np.load(tmp_path / "out.npy"), files["keras_logits"]) < 1e-5
    assert relative_difference(np.load(tmp_path / "stream.npy"), files["keras_logits"][0]) < 1e-5


def test_int8_model_quantizes_and_dequantizes(files):
    from kerasrnn.export.runtime import Classifier

    logits = Classifier(files["int8"]).predict(files["images"])
    assert logits.dtype == np.float32 and logits.shape == (64, 10)
    # the int8 file agrees with Keras on 99.5% of the sample's test digits (README): at most
    # one of these 64 may differ
    assert (logits.argmax(1) != files["keras_logits"].argmax(1)).sum() <= 1


@pytest.mark.parametrize("n", [1, 3, 8])
def test_any_batch_size_on_a_batch_1_file(files, n):
    from kerasrnn.export.runtime import Classifier

    logits = Classifier(files["float"]).predict(files["images"][:n])
    assert relative_difference(logits, files["keras_logits"][:n]) < 1e-5


def test_uint8_and_float_images_give_the_same_logits(files):
    from kerasrnn.export.runtime import Classifier

    classifier = Classifier(files["float"])
    # uint8 / 255 in float32 and in float64 may round one ulp apart: round-off only
    assert (
        relative_difference(
            classifier.predict(files["images"]), classifier.predict(files["images"] / 255.0)
        )
        < 1e-6
    )


_BAD_BYTES = {
    "empty": b"",
    "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
}


@pytest.mark.parametrize(
    "kind,message",
    [
        ("empty", "too short for a TFLite model"),
        ("random", "not a TFLite model"),
        ("wrong_magic", r"not a TFLite model \(file identifier b'XXXX'"),
        ("truncated", "invalid or truncated TFLite model"),
        ("missing", "no such model file"),
    ],
)
def test_bad_model_files_give_a_clear_error_not_a_crash(files, tmp_path, kind, message):
    with open(files["float"], "rb") as f:
        content = f.read()
    path = tmp_path / f"{kind}.tflite"
    if kind == "wrong_magic":
        path.write_bytes(content[:4] + b"XXXX" + content[8:])
    elif kind == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif kind != "missing":
        path.write_bytes(_BAD_BYTES[kind])
    result = run_without_tensorflow(
        """
        import sys
        from kerasrnn.export.runtime import Classifier
        from kerasrnn.errors import ModelFileError
        try:
            Classifier(sys.argv[1])
        except ModelFileError as e:
            print(e)
    """,
        str(path),
    )
    assert result.returncode == 0, f"process died: {result.returncode} {result.stderr}"
    assert re.search(message, result.stdout), result.stdout


@pytest.mark.parametrize(
    "images,message",
    [
        (np.zeros((2, 27, 28), np.uint8), r"images must have shape \[n, 28, 28\]"),
        (np.zeros((2, 28, 28), np.int64), "must be uint8 .* or float in \\[0, 1\\], got int64"),
        (np.full((1, 28, 28), np.nan, np.float32), "pixels contain NaN"),
        (np.full((1, 28, 28), 255.0, np.float32), r"float pixels must lie in \[0, 1\]"),
    ],
)
def test_bad_inputs_give_a_clear_error(files, images, message):
    from kerasrnn.export.runtime import Classifier

    with pytest.raises(InputError, match=message):
        Classifier(files["float"]).predict(images)


def test_stream_rejects_a_wrong_row_and_a_whole_sequence_file(files):
    from kerasrnn.errors import ModelFileError
    from kerasrnn.export.runtime import Stream

    with pytest.raises(InputError, match=r"a row must have shape \[28\], got \[27\]"):
        Stream(files["stream"]).push(np.zeros(27, np.uint8))
    with pytest.raises(ModelFileError, match="not a kerasrnn streaming model"):
        Stream(files["float"])


def test_stream_reset_starts_a_new_sequence(files):
    from kerasrnn.export.runtime import Stream

    stream = Stream(files["stream"])
    first = [stream.push(row) for row in files["images"][0]][-1]
    stream.reset()
    again = [stream.push(row) for row in files["images"][0]][-1]
    np.testing.assert_array_equal(first, again)
    assert os.path.exists(files["stream"])


def without_digest(path: str, folder, edit=None) -> str:
    """A copy of an exported file as another tool would write it (no kerasrnn digest),
    with `edit(model)` applied to its schema objects; returns the copy's path."""
    with open(path, "rb") as f:
        model = flatbuffer.unpack(f.read())
    drop_digest(model)
    if edit is not None:
        edit(model)
    copy = os.path.join(folder, f"foreign-{os.path.basename(path)}")
    with open(copy, "wb") as f:
        f.write(flatbuffer.pack(model))
    return copy


def load(kind: str, path: str):
    return Stream(path) if kind == "stream" else Classifier(path)


def sealed(path: str) -> str:
    """Writes a digest into a file, as anyone can (`flatbuffer.seal`); returns its path."""
    with open(path, "rb") as f:
        content = flatbuffer.seal(f.read())
    with open(path, "wb") as f:
        f.write(content)
    return path


@pytest.mark.parametrize("kind", ["float", "int8", "stream"])
def test_a_file_with_a_digest_is_still_probed_in_a_child_once_per_process(
    files, kind, monkeypatch, caplog
):
    with open(files[kind], "rb") as f:
        assert re.fullmatch("[0-9a-f]{64}", verify_digest(f.read(), files[kind]))
    monkeypatch.setattr(integrity, "_CHECKED", {})
    children = []
    real_run = subprocess.run

    def counting_run(*args, **kwargs):
        children.append(args)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    load(kind, files[kind])
    load(kind, files[kind])  # the same bytes: checked once
    assert len(children) == 1
    assert not caplog.records


@pytest.mark.parametrize("kind", ["float", "int8", "stream"])
@pytest.mark.parametrize("where", ["weights", "digest", "digest's name 1", "digest's name 2"])
def test_a_file_changed_after_export_is_refused_naming_it(files, tmp_path, kind, where):
    with open(files[kind], "rb") as f:
        content = bytearray(f.read())
    digest = content.index(verify_digest(bytes(content), files[kind]).encode())
    # the metadata entry and the file's description both name the digest
    names = [m.start() for m in re.finditer(re.escape(DIGEST_METADATA.encode()), content)]
    assert len(names) == 2
    offset = {
        "weights": len(content) // 2,
        "digest": digest + 10,
        "digest's name 1": names[0] + 3,
        "digest's name 2": names[1] + 3,
    }[where]
    content[offset] ^= 0x10
    path = tmp_path / "changed.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=f"{re.escape(str(path))}: the file was changed"):
        load(kind, str(path))


def test_a_file_without_a_digest_loads_with_one_notice(files, tmp_path, caplog):
    path = without_digest(files["float"], tmp_path)
    with caplog.at_level(logging.WARNING):
        logits = Classifier(path).predict(files["images"])
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} carries no kerasrnn digest, so changes to it cannot be detected "
        f"(files from `kerasrnn export` carry one)"
    ]
    np.testing.assert_array_equal(logits, Classifier(files["float"]).predict(files["images"]))


def _int8_tensor(model: schema.ModelT) -> schema.TensorT:
    """The first int8 tensor with quantization parameters."""
    return next(
        t
        for t in model.subgraphs[0].tensors
        if t.type == schema.TensorType.INT8 and t.quantization.scale is not None
    )


def _shrink_add_output_scale(model: schema.ModelT) -> None:
    """Divides the output scale of the first ADD by a million: LiteRT's ADD Prepare then
    meets a multiplier above 1 and aborts the process (QuantizeMultiplierSmallerThanOneExp)."""
    graph = model.subgraphs[0]
    add = next(op for op in graph.operators if flatbuffer.operator_name(model, op) == "ADD")
    quantization = graph.tensors[add.outputs[0]].quantization
    quantization.scale = quantization.scale / 1e6


@pytest.mark.parametrize("digest", ["recomputed digest", "no digest"])
def test_a_file_that_aborts_litert_is_refused_not_a_crash(files, tmp_path, digest):
    path = without_digest(files["int8"], tmp_path, _shrink_add_output_scale)
    if digest == "recomputed digest":
        sealed(path)
    result = run_without_tensorflow(
        """
        import sys
        from kerasrnn.export.runtime import Classifier
        from kerasrnn.errors import ModelFileError
        try:
            Classifier(sys.argv[1])
        except ModelFileError as e:
            print(e)
    """,
        path,
    )
    assert result.returncode == 0, f"process died: {result.returncode} {result.stderr}"
    assert f"{path}: invalid TFLite model: LiteRT crashed on it (signal 6: Aborted)" in (
        result.stdout
    )


def _shrink_fully_connected_output_scale(model: schema.ModelT) -> None:
    """Divides the output scale of the second FULLY_CONNECTED (the first step's recurrent
    product) by a million: a valid file that LiteRT's builtin kernels run (their
    requantization takes any multiplier) and XNNPACK refuses to prepare (its int8
    FULLY_CONNECTED takes requantization scales below 256 only)."""
    graph = model.subgraphs[0]
    fcs = [op for op in graph.operators if flatbuffer.operator_name(model, op) == "FULLY_CONNECTED"]
    quantization = graph.tensors[fcs[1].outputs[0]].quantization
    quantization.scale = quantization.scale / 1e6


def test_the_runtime_runs_xnnpack_where_it_takes_the_file(files):
    fast = Classifier(files["int8 activations"])
    assert fast.kernels == "xnnpack"
    builtin = Classifier(files["int8 activations"], kernels="builtin")
    assert builtin.kernels == "builtin"
    # the same int8 graph: XNNPACK and LiteRT's kernels round a few values differently
    # (README "int8 files keep a 16-bit state"), not the answers
    agree = fast.predict(files["images"]).argmax(1) == builtin.predict(files["images"]).argmax(1)
    assert agree.mean() >= 0.95
    # XNNPACK has no int16 kernels: it takes none of an int16-activation file's operators
    assert Classifier(files["int8"]).kernels == "builtin"
    assert Classifier(files["float"]).kernels == "xnnpack"


def test_the_runtime_falls_back_to_builtin_kernels_where_xnnpack_fails(files, tmp_path, caplog):
    path = sealed(
        without_digest(files["int8 activations"], tmp_path, _shrink_fully_connected_output_scale)
    )
    with caplog.at_level(logging.WARNING):
        classifier = Classifier(path)
    assert classifier.kernels == "builtin"
    (warning,) = [r.getMessage() for r in caplog.records if "XNNPACK" in r.getMessage()]
    assert re.fullmatch(
        f"{re.escape(path)}: XNNPACK cannot run it \\(.*failed to create XNNPACK runtime.*\\); "
        "running it with LiteRT's builtin kernels",
        warning,
    )
    assert np.isfinite(classifier.predict(files["images"])).all()
    with pytest.raises(ModelFileError, match=r"XNNPACK cannot run it \(RuntimeError: failed"):
        Classifier(path, kernels="xnnpack")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kernels": "gpu"}, r"kernels must be one of \('auto', 'xnnpack', 'builtin'\), got 'gpu'"),
        ({"threads": 0}, "threads must be a positive integer, got 0"),
    ],
)
def test_bad_runtime_options_are_refused(files, options, message):
    from kerasrnn.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Classifier(files["float"], **options)


@pytest.mark.parametrize("digest", ["recomputed digest", "no digest"])
def test_a_while_loop_that_never_ends_is_refused_after_the_probes_limit(
    files, tmp_path, monkeypatch, digest
):
    monkeypatch.setattr(integrity, "_PROBE_TIMEOUT_S", 3)
    path = without_digest(files["float"], tmp_path, endless_loop)  # the float file loops
    if digest == "recomputed digest":
        sealed(path)
    with pytest.raises(ModelFileError, match=rf"{re.escape(path)}: LiteRT did not load and run"):
        Classifier(path)


def test_a_huge_file_is_refused_before_it_is_read(files, tmp_path):
    with open(files["float"], "rb") as f:
        header = f.read(8)
    path = tmp_path / "huge.tflite"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(3 << 30)  # 3 GiB, sparse: nothing of it is on disk
    with pytest.raises(ModelFileError, match=r"3,221,225,472 bytes is larger than the 268,435,456"):
        Classifier(str(path))


# (what to damage in an int8 file, the attribute, its new value, the message)
_DAMAGE = {
    "nan scale": (lambda m: _int8_tensor(m).quantization, "scale", [math.nan], r"scales \[nan\]"),
    "zero scale": (lambda m: _int8_tensor(m).quantization, "scale", [0.0], r"scales \[0.0\]"),
    "zero point": (
        lambda m: _int8_tensor(m).quantization,
        "zeroPoint",
        [300],
        r"zero points \[300\] outside \[-128, 127\]",
    ),
    "operator input": (
        lambda m: m.subgraphs[0].operators[0],
        "inputs",
        [10**6],
        r"operator 0 of subgraph 0: inputs \[1000000\] out of range",
    ),
    "buffer index": (
        lambda m: m.subgraphs[0].tensors[0],
        "buffer",
        10**6,
        "tensor 0 of subgraph 0 refers to buffer 1000000",
    ),
    "negative dimension": (
        lambda m: m.subgraphs[0].tensors[0],
        "shape",
        [-3, 28],
        r"negative dimension in its shape \[-3, 28\]",
    ),
    "huge shape": (
        lambda m: m.subgraphs[0].tensors[0],
        "shape",
        [1 << 20, 1 << 20],
        r"of shape \[1048576, 1048576\] would need",
    ),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_damaged_fields_are_refused_before_litert_sees_them(files, tmp_path, monkeypatch, damage):
    target, attribute, value, message = _DAMAGE[damage]
    path = without_digest(files["int8"], tmp_path, lambda m: setattr(target(m), attribute, value))

    def litert(*args, **kwargs):
        raise AssertionError("LiteRT saw the damaged file")

    monkeypatch.setattr(subprocess, "run", litert)
    monkeypatch.setattr(runtime, "Interpreter", litert)
    with pytest.raises(ModelFileError, match=f"{re.escape(path)}: invalid .*{message}"):
        Classifier(path)


def _nan_logits_bias(model: schema.ModelT) -> None:
    """Sets the bias of the operator that computes the logits to NaN."""
    graph = model.subgraphs[0]
    op = next(op for op in graph.operators if graph.outputs[0] in op.outputs)
    buffer = model.buffers[graph.tensors[op.inputs[2]].buffer]
    buffer.data = np.full(len(buffer.data), 0xFF, np.uint8)  # 0xFFFFFFFF is a NaN


def test_non_finite_logits_are_an_error_not_a_prediction(files, tmp_path):
    path = without_digest(files["float"], tmp_path, _nan_logits_bias)
    with pytest.raises(ModelFileError, match=f"{re.escape(path)}: .*non-finite logits"):
        Classifier(path).predict(files["images"])
    np.save(tmp_path / "digits.npy", files["images"][:4])
    result = subprocess.run(
        [sys.executable, "-m", "kerasrnn", "predict", path, str(tmp_path / "digits.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1 and "digit" not in result.stdout, result.stdout
    assert re.search(r"kerasrnn: error: .*non-finite logits", result.stderr), result.stderr


@pytest.mark.parametrize("kind", ["float", "dynamic"])
def test_an_empty_batch_gives_an_empty_result(files, kind):
    logits = Classifier(files[kind]).predict(np.zeros((0, 28, 28), np.uint8))
    assert logits.shape == (0, 10) and logits.dtype == np.float32
