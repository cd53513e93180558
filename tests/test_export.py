"""Export: builtin-only TFLite for every model kind and quantization, checked against
Keras, LiteRT and TensorFlow Lite Micro on the bundled sample's test digits."""

import os
import re

import numpy as np
import pytest
from conftest import KINDS, previous_export, relative_difference

from kerasrnn.errors import ConfigError, ConversionError
from kerasrnn.export import config, convert, flatbuffer, graph
from kerasrnn.export.micro import run_micro
from kerasrnn.export.model_reader import read_model
from kerasrnn.export.runtime import Classifier, Stream
from kerasrnn.export.verification import verify
from kerasrnn.models import build_classifier

QUANTIZATIONS = config.QUANTIZATIONS
# Top-1 agreement with Keras, and the largest logit difference relative to the largest
# logit magnitude, per float quantization. float32 differs from Keras by round-off only
# (measured 1e-6 relative); float16 weights by about 1e-3.
TOLERANCE = {"none": (1.0, 1e-5), "float16": (0.99, 0.02)}


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_export_uses_builtin_ops_only(exported, kind, quantization):
    ops = exported[kind, quantization].operators
    assert ops and all(flatbuffer.is_builtin(op) for op in ops), ops
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops)


@pytest.mark.parametrize("quantization", ["none", "float16"])
@pytest.mark.parametrize("kind", KINDS)
def test_float_files_match_keras(exported, trained_models, test_digits, kind, quantization):
    images, _ = test_digits
    expected = trained_models[kind].predict(images, verbose=0)
    logits = Classifier(exported[kind, quantization].path).predict(images)
    agreement, relative = TOLERANCE[quantization]
    assert relative_difference(logits, expected) < relative
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= agreement


@pytest.mark.parametrize("quantization", ["dynamic", "int8"])
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_accuracy_within_1_5_points_of_keras(
    exported, trained_models, test_digits, kind, quantization
):
    images, labels = test_digits
    report = verify(exported[kind, quantization].path, trained_models[kind], (images, labels))
    assert abs(report.tflite_accuracy - report.keras_accuracy) <= 0.015, report.table()
    assert report.keras_accuracy > 0.8  # a trained model, or the comparison says nothing


@pytest.mark.parametrize("kind", KINDS)
def test_int8_file_takes_and_gives_int8(exported, kind):
    classifier = Classifier(exported[kind, "int8"].path)
    assert classifier.quantized and classifier.output_scale > 0


@pytest.mark.parametrize("quantization", ["none", "int8"])
@pytest.mark.parametrize("kind", KINDS)
def test_micro_matches_litert(exported, test_digits, kind, quantization):
    images, _ = test_digits
    path = exported[kind, quantization].path
    litert = Classifier(path).predict(images)
    micro = run_micro(path, images)
    assert micro.arena_bytes > 0
    if quantization == "none":  # the same float kernels up to round-off (measured 2e-6)
        assert relative_difference(micro.logits, litert) < 1e-5
    else:
        assert (micro.logits.argmax(1) == litert.argmax(1)).mean() >= 0.99
        scale = Classifier(path).output_scale
        steps = np.abs(micro.logits - litert) / scale  # in output quantization steps
        if kind == "lstm":
            # TFLM's and LiteRT's fused int8 LSTM kernels round the gates differently, and
            # a digit's difference compounds over its 28 steps. Over 1,000 digits, LSTM-32
            # trained with seeds 0-3: max 5, 2, 2, 4 steps; 99% of logits within 1; mean
            # 0.11-0.14. Bounds: 3% of the 255-step output range, and twice the mean.
            assert steps.max() <= 8.01
            assert steps.mean() <= 0.25
        else:  # int16 activations: measured at most 1 step
            assert steps.max() <= 2.01


def _tensor_types(path):
    """The schema's type names of a file's main graph: {"inputs": [...], "outputs": [...],
    "weights": {types of FULLY_CONNECTED weight matrices}, "activations": {...}}."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    with open(path, "rb") as f:
        model = flatbuffer.unpack(f.read())
    graph_ = model.subgraphs[0]

    def typed(indices):
        return [names[graph_.tensors[i].type] for i in indices]

    constant = {
        i
        for i, t in enumerate(graph_.tensors)
        if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)
    }
    produced = {i for op in graph_.operators for i in op.outputs}
    matrices = {
        op.inputs[1]
        for op in graph_.operators
        if flatbuffer.operator_name(model, op) == "FULLY_CONNECTED"
    }
    return {
        "inputs": typed(graph_.inputs),
        "outputs": typed(graph_.outputs),
        "weights": set(typed(matrices)),
        "activations": set(typed(produced - constant)),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_int8_file_keeps_int16_activations_inside(exported, kind):
    types = _tensor_types(exported[kind, "int8"].path)
    assert types["inputs"] == ["INT8"] and types["outputs"] == ["INT8"]
    assert types["weights"] <= {"INT8"} and "FLOAT32" not in types["activations"]
    if kind == "lstm":  # the fused op: int8 weights, its cell state int16 (a variable)
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in exported[kind, "int8"].operators
        assert "int16 cell state" in exported[kind, "int8"].form
    else:
        assert "INT16" in types["activations"]
        assert "int16 activations" in exported[kind, "int8"].form


def test_all_int8_activations_run_in_micro(exported, trained_models, test_digits):
    images, labels = test_digits
    written = exported["elman", "int8 activations"]
    types = _tensor_types(written.path)
    assert types["activations"] == {"INT8"} and "int8 activations" in written.form
    litert = Classifier(written.path).predict(images)
    micro = run_micro(written.path, images)
    keras_accuracy = (trained_models["elman"].predict(images, verbose=0).argmax(1) == labels).mean()
    assert abs((litert.argmax(1) == labels).mean() - keras_accuracy) <= 0.015
    # int8 kernels round differently in LiteRT and TFLM, and the int8 state carries it
    # (measured 98.2-99.5% agreement; README "int8 activations")
    assert (micro.logits.argmax(1) == litert.argmax(1)).mean() >= 0.97


def test_litert_int8_file_joins_elman_steps_and_pins_their_ranges(exported):
    """int8 activations for LiteRT (`calibration`): each step one FULLY_CONNECTED of the
    joined [x_t, h] (no ADD), its pre-activation clipped where TANH saturates, and the
    CONCATENATION and the input in TANH's own int8 range, so that nothing is requantized."""
    with open(exported["elman", "int8 activations"].path, "rb") as f:
        model = flatbuffer.unpack(f.read())
    subgraph = model.subgraphs[0]
    names = [flatbuffer.operator_name(model, op) for op in subgraph.operators]
    assert names.count("CONCATENATION") == 27 and names.count("TANH") == 28
    assert "ADD" not in names and "QUANTIZE" not in names
    image = subgraph.tensors[subgraph.inputs[0]].quantization
    assert (image.scale[0], image.zeroPoint[0]) == (1 / 128, 0)
    for op, name in zip(subgraph.operators, names):
        if name == "TANH":  # at most [-3.2, 3.2] in 255 steps
            assert subgraph.tensors[op.inputs[0]].quantization.scale[0] <= 6.4 / 255 + 1e-7


def test_stacked_int8_activations_never_requantize_h(exported, trained_models, test_digits):
    """A stacked Elman's first layer returns its sequence: a PACK of TANH outputs that the
    second layer's UNPACK reads. With TANH's fixed int8 range passed along
    (`calibration._pin_fixed_outputs`) no h is rounded again by a QUANTIZE (there were 81)."""
    images, _ = test_digits
    written = exported["stacked", "int8 activations"]
    assert written.activations == "int8"
    assert "PACK" in written.operators and "QUANTIZE" not in written.operators
    keras_top1 = trained_models["stacked"].predict(images, verbose=0).argmax(1)
    litert_top1 = Classifier(written.path).predict(images).argmax(1)
    # int8 h; measured 97.7-97.8% (README, `benchmarks/int8_agreement.py`, seeds 0 and 1)
    assert (litert_top1 == keras_top1).mean() >= 0.96


@pytest.mark.parametrize(
    "quantization, fusable, loopable, target, steps, form",
    [
        ("none", False, True, "litert", 28, "unrolled"),
        ("int8", True, True, "litert", 28, "unrolled"),  # the fused int8 LSTM is slow
        ("none", False, True, "litert", 784, "loop"),
        ("none", False, False, "litert", 784, "unrolled"),
        ("int8", False, True, "litert", 784, "unrolled"),  # the int8 converter cannot loop
        ("none", False, True, "micro", 28, "loop"),
        ("int8", True, True, "micro", 28, "fused"),
        ("int8", False, True, "micro", 28, "unrolled"),
    ],
)
def test_auto_form_is_the_fastest_for_litert_and_the_smallest_for_micro(
    quantization, fusable, loopable, target, steps, form
):
    assert convert.choose_form(quantization, "auto", fusable, loopable, target, steps) == form
    assert convert.choose_form(quantization, "unrolled", fusable, loopable, target) == "unrolled"


def test_auto_activations_try_int8_first_for_litert_only():
    trials = convert.activation_trials
    assert trials("int8", "auto", "litert", "unrolled") == ("int8", "int16")
    assert trials("int8", "auto", "micro", "unrolled") == ("int16",)
    assert trials("int8", "int8", "micro", "unrolled") == ("int8",)
    assert trials("int8", "auto", "litert", "fused") == (None,)  # the op's own int8 scheme
    assert trials("none", "auto", "litert", "loop") == (None,)
    # a stream (16 probes) and a one-output model (no agreement to hold) keep int16
    assert trials("int8", "auto", "litert", "unrolled", measured=False) == ("int16",)


@pytest.mark.parametrize(
    "bound, gain, activations",
    [(0.0, 0.001, "int8"), (1.01, -1.0, "int16"), (1.01, 1.0, "int8, int16 no better")],
)
def test_litert_int8_keeps_int8_activations_unless_int16_agrees_better(
    trained_models, calibration, tmp_path, monkeypatch, bound, gain, activations
):
    """The default int8 file for LiteRT: int8 activations (XNNPACK's kernels) where they keep
    `FAST_INT8_AGREEMENT` with Keras on the probes; else int16 where int16 agrees with Keras
    on `INT16_MIN_GAIN` more of them (gain -1: always, 1: never); saying why."""
    monkeypatch.setattr(convert, "FAST_INT8_AGREEMENT", bound)
    monkeypatch.setattr(convert, "INT16_MIN_GAIN", gain)
    path = str(tmp_path / "e.tflite")
    written = convert.to_tflite(trained_models["elman"], path, "int8", calibration[:300])
    chosen = activations.split(",")[0]
    assert (written.target, written.activations) == ("litert", chosen)
    assert written.form == f"unrolled, batch 1, {chosen} activations"
    assert written.why.startswith("unrolled: the fastest form for LiteRT with XNNPACK; ")
    if activations == "int8":
        assert "int8 activations: XNNPACK's kernels, " in written.why
        assert Classifier(path).kernels == "xnnpack"
    elif activations == "int16":
        assert re.search(
            r"int16 activations: int8 ones were passed over, they agreed with Keras on "
            r"\d+\.\d% of the probes, below 101\.0%",
            written.why,
        )
        assert Classifier(path).kernels == "builtin"  # XNNPACK has no int16 kernels
    else:  # int16 converted and measured, and passed over
        assert re.search(
            r"int8 activations: XNNPACK's kernels, \d+\.\d\d% top-1 agreement with Keras on "
            r"the probes, below 101\.0%, but int16 ones agreed on \d+\.\d\d%, not 100\.0 "
            r"points more",
            written.why,
        )
        assert Classifier(path).kernels == "xnnpack"


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_files_are_smaller_than_float(exported, kind):
    # float16 and dynamic keep the WHILE loop; int8 is unrolled (see choose_form), so its
    # size is reported by benchmarks/export_sizes.py rather than bounded here.
    float_size = exported[kind, "none"].size_bytes
    for quantization in ("float16", "dynamic"):
        assert exported[kind, quantization].size_bytes < 0.7 * float_size, quantization


@pytest.mark.parametrize("kind", KINDS)
def test_float_file_is_close_to_its_parameter_bytes(exported, kind):
    # the WHILE loop: graph overhead is a few KB, whatever the length
    exported_file = exported[kind, "none"]
    assert exported_file.form.startswith("WHILE loop")
    assert exported_file.size_bytes - exported_file.parameter_bytes < 6000


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_whole_sequence(exported, test_digits, kind):
    images, _ = test_digits
    stream = Stream(exported[kind, "stream"].path)
    expected = Classifier(exported[kind, "none"].path)
    for image in images[:20]:
        stream.reset()
        for row in image:
            logits = stream.push(row)
        whole = expected.predict(image)[0]
        assert relative_difference(logits, whole) < 1e-5
    assert stream.steps == 28


def test_int8_streaming_agrees_with_keras(exported, trained_models, test_digits):
    images, _ = test_digits
    model = trained_models["elman"]
    path = exported["elman", "int8 stream"].path
    types = _tensor_types(path)
    assert types["inputs"] == ["INT8", "INT16"]  # row, state: the state keeps 16 bits
    assert sorted(types["outputs"]) == ["INT16", "INT8"]
    stream = Stream(path)
    predictions = []
    for image in images[:500]:
        stream.reset()
        for row in image:
            logits = stream.push(row)
        predictions.append(logits.argmax())
    expected = model.predict(images[:500], verbose=0).argmax(1)
    # Calibrated on 64 streamed images, the step file agrees a little less than the
    # whole-sequence int8 file (99.0-99.5%): measured 98-99% on 200 digits over seeds 0-1
    # (97.5% once); a broken state would agree on far fewer.
    assert (np.array(predictions) == expected).mean() >= 0.97


def test_stream_tells_state_from_logits_by_name(test_digits, tmp_path):
    # 10 units: the state and the logits have the same shape
    model = build_classifier(cell="elman", units=10)
    stream = Stream(convert.to_tflite(model, str(tmp_path / "s.tflite"), stream=True).path)
    image = test_digits[0][0]
    for row in image:
        logits = stream.push(row)
    assert relative_difference(logits, model.predict(image[None], verbose=0)[0]) < 1e-5


def test_graph_forms_agree_with_keras(trained_models, test_digits):
    import tensorflow as tf

    images, _ = test_digits
    for kind, model in trained_models.items():
        weights = read_model(model)
        expected = model.predict(images[:16], verbose=0)
        for form in graph.FORMS:
            if form == "fused" and not graph.can_fuse(weights, 16):
                with pytest.raises(ConfigError, match="fused form needs LSTM layers only"):
                    graph.sequence_function(weights, 16, form)
                continue
            logits = graph.sequence_function(weights, 16, form)(tf.constant(images[:16]))
            assert relative_difference(logits.numpy(), expected) < 1e-5, (kind, form)
        joined = graph.sequence_function(weights, 16, "unrolled", joined=True)
        assert relative_difference(joined(tf.constant(images[:16])).numpy(), expected) < 1e-5


def test_dynamic_batch_file_takes_any_batch(exported, test_digits):
    images, _ = test_digits
    path = exported["gru", "dynamic batch"].path
    classifier = Classifier(path)
    assert classifier.batch_size == -1
    for n in (1, 7, 64):
        assert classifier.predict(images[:n]).shape == (n, 10)


def test_pixel_view_model_exports(tmp_path, test_digits):
    model = build_classifier(cell="elman", units=8, view="pixels")
    written = convert.to_tflite(model, str(tmp_path / "p.tflite"))
    assert written.form.startswith("WHILE loop")  # 784 steps: too long to unroll for LiteRT
    path = written.path
    images, _ = test_digits
    x = images[:4].reshape(4, 784, 1)
    assert relative_difference(Classifier(path).predict(x), model.predict(x, verbose=0)) < 1e-5


@pytest.mark.parametrize(
    "kind, quantization, gates, form",
    [
        ("elman", "none", 1, "WHILE loop"),
        ("lstm", "int8", 4, "fused"),
        ("gru", "none", 3, "WHILE loop"),
    ],
)
def test_multiply_accumulates_count_every_step_of_the_recurrence(
    exported, kind, quantization, gates, form
):
    """A model of 28 x 28 digits: every step multiplies the row and the state by the gates'
    weights (a WHILE body counted once per step of its trip count, a fused LSTM once per
    step of its sequence), then the head."""
    written = exported[kind, quantization]
    assert written.form.startswith(form)
    with open(written.path, "rb") as f:
        macs = flatbuffer.multiply_accumulates(f.read())
    _, units, _ = KINDS[kind]
    assert macs == 28 * gates * (28 * units + units * units) + units * 10


def test_fused_stacked_lstm_starts_every_sequence_from_zero(tmp_path, test_digits):
    model = build_classifier(cell="lstm", units=8, layers=2)
    written = convert.to_tflite(model, str(tmp_path / "l.tflite"), form="fused")
    assert written.form.startswith("fused LSTM")
    assert written.operators.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1  # distinct names
    images = test_digits[0][:4]
    classifier = Classifier(written.path)
    first, again = classifier.predict(images), classifier.predict(images)
    np.testing.assert_array_equal(first, again)  # the op's state does not leak between calls
    assert relative_difference(first, model.predict(images, verbose=0)) < 1e-5
    assert relative_difference(run_micro(written.path, images).logits, first) < 1e-5


def test_verify_report_has_every_number(exported, trained_models, test_digits, tmp_path):
    report = verify(
        exported["elman", "int8"].path,
        trained_models["elman"],
        test_digits,
        micro=True,
        json_path=str(tmp_path / "r.json"),
        max_micro_examples=100,
    )
    assert report.examples == 1000 and report.micro["examples"] == 100
    assert report.micro["max_diff_steps"] is not None
    for line in ("operators", "top-1 agreement", "TFLM arena", "quantization steps"):
        assert line in report.table()
    assert os.path.getsize(tmp_path / "r.json") > 0


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"quantization": "int4"}, ConfigError, "quantization must be one of"),
        ({"quantization": "int8"}, ConfigError, "int8 quantization needs representative_data"),
        ({"batch_size": 0}, ConfigError, "batch_size must be a positive integer or None"),
        (
            {"quantization": "int8", "representative_data": np.full((2, 28, 28), 2.0)},
            ConfigError,
            r"images scaled to \[0, 1\]",
        ),
        ({"form": "spiral"}, ConfigError, r"form must be one of \('auto', 'loop'"),
        ({"activations": "int4"}, ConfigError, "activations must be one of"),
    ],
)
def test_bad_export_arguments(tmp_path, kwargs, error, message):
    model = build_classifier(cell="elman", units=4)
    with pytest.raises(error, match=message):
        convert.to_tflite(model, str(tmp_path / "x.tflite"), **kwargs)
    assert not os.listdir(tmp_path)  # nothing half-written


def test_unexportable_model_is_refused_before_the_converter_starts(tmp_path, monkeypatch):
    import keras

    def no_child(*args, **kwargs):
        raise AssertionError("the conversion child was started for a model it cannot convert")

    monkeypatch.setattr(convert, "run_child", no_child)
    model = keras.Sequential(
        [keras.Input((28, 28)), keras.layers.LSTM(4), keras.layers.LayerNormalization(name="norm")]
    )
    with pytest.raises(
        ConversionError, match=r"layer norm \(LayerNormalization\): this layer is not"
    ):
        convert.to_tflite(model, str(tmp_path / "x.tflite"))
    assert not (tmp_path / "x.tflite").exists()


def test_failed_export_keeps_the_previous_file(tmp_path):
    import keras

    target = tmp_path / "model.tflite"
    target.write_bytes(previous_export())
    inputs = keras.Input((28, 28))
    bad = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ConversionError, match="cannot export model .* no recurrent layer"):
        convert.to_tflite(bad, str(target))
    assert target.read_bytes() == previous_export()


def test_int8_interface_refuses_a_model_without_int16_activations(exported):
    from kerasrnn.export.integer_io import int8_interface

    with open(exported["elman", "none"].path, "rb") as f:
        content = f.read()
    with pytest.raises(ValueError, match="'sequence' should meet one QUANTIZE"):
        int8_interface(content, ["sequence"], ["logits"])
    with pytest.raises(ValueError, match="names given"):
        int8_interface(content, ["sequence", "state"], ["logits"])


def test_micro_arena_grows_until_a_784_step_model_fits(tmp_path):
    from kerasrnn.export import micro

    model = build_classifier(cell="elman", units=8, view="pixels")
    path = convert.to_tflite(model, str(tmp_path / "p.tflite")).path
    with open(path, "rb") as f:
        content = f.read()
    interpreter = micro.allocate(content, arena=1024)  # far too small a first guess
    assert micro.arena_used(interpreter) > 1024
