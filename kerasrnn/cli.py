"""The `kerasrnn` command line: a thin layer that parses flags into configs and calls the API."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import importlib.util
import json
import logging
import os
import signal
import sys

import numpy as np

from kerasrnn import __version__, config
from kerasrnn._terminal import PrintableFormatter, printable
from kerasrnn.cell_kinds import CELL_KINDS
from kerasrnn.config import DataConfig, ModelConfig, TrainConfig, TuneConfig
from kerasrnn.errors import ConfigError, KerasRnnError
from kerasrnn.export.config import (
    ACTIVATION_CHOICES,
    FIRMWARE_BUILDS,
    FIRMWARE_KERNELS,
    FIRMWARE_OPTIMIZATIONS,
    FIRMWARE_TARGETS,
    QUANTIZATIONS,
    RUNTIME_KERNELS,
    TARGETS,
    ExportConfig,
    FirmwareConfig,
)
from kerasrnn.images import load_images
from kerasrnn.search_space import SearchSpace


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except the None or False of an unset option."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _say(text: str) -> None:
    """Prints a command's result, each line `printable`: a model's names and a file's name
    show as text, never as terminal control (a value that may hold a newline is made
    `printable` where it enters its line)."""
    print("\n".join(printable(line) for line in text.split("\n")))


def _default(config_class, field: str):
    """The default of a config dataclass's field: the CLI's defaults come from there."""
    return next(f.default for f in dataclasses.fields(config_class) if f.name == field)


# --npz of the commands that train and score classifiers.
_NPZ_HELP = (
    "your own labelled sequences instead of MNIST, of any shape: a .npz with x float "
    "[n, steps, features] and int labels y (optional x_test, y_test: the test split, "
    "else the validation split is). Replaces --data"
)


def _add_data_flags(parser: argparse.ArgumentParser, npz_help: str = _NPZ_HELP) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--npz", help=npz_help)
    group.add_argument(
        "--data",
        dest="source",
        default=_default(DataConfig, "source"),
        choices=[source for source in config.SOURCES if source != "npz"],  # --npz FILE
        help="where the images come from (auto: TFDS if prepared or "
        "downloadable, else the bundled sample)",
    )
    group.add_argument(
        "--dataset",
        default=_default(DataConfig, "dataset"),
        choices=config.DATASETS,
        help="MNIST, or Fashion-MNIST (same format, ten kinds of clothing)",
    )
    group.add_argument("--data-dir", help="IDX folder (--data idx) or TFDS data_dir (--data tfds)")
    group.add_argument(
        "--manual-dir", help="--data tfds: prepare TFDS offline from this folder of original files"
    )
    group.add_argument(
        "--view",
        default=_default(DataConfig, "view"),
        choices=config.VIEWS,
        help="sequence view: 28 rows, 784 pixels, permuted pixels",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=_default(DataConfig, "batch_size"),
        help="examples per batch",
    )
    group.add_argument("--max-examples", type=int, help="use only the first N examples per split")


def _data_config(args) -> DataConfig:
    if args.npz and args.source != "auto":
        raise ConfigError(f"--npz {args.npz} replaces --data {args.source}: give one")
    return DataConfig(
        source="npz" if args.npz else args.source,
        npz=args.npz,
        dataset=args.dataset,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        view=args.view,
        batch_size=args.batch_size,
        max_examples=args.max_examples,
    )


def _add_augment_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("augmentation (training batches only)")
    group.add_argument(
        "--shift",
        type=int,
        default=_default(DataConfig, "shift"),
        help="move each training image up to N pixels each way, anew every epoch",
    )
    group.add_argument(
        "--flip",
        action="store_true",
        help="mirror half of the training images left to right (clothing, not digits)",
    )


def _training_data_config(args) -> DataConfig:
    """The data flags plus the augmentation flags of a command that trains."""
    return dataclasses.replace(_data_config(args), shift=args.shift, flip=args.flip)


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--cell",
        default=_default(ModelConfig, "cell"),
        choices=list(CELL_KINDS),
        help="; ".join(f"{k.name}: {k.description}" for k in CELL_KINDS.values()),
    )
    model.add_argument(
        "--units", type=int, default=_default(ModelConfig, "units"), help="hidden units per layer"
    )
    model.add_argument(
        "--layers",
        type=int,
        default=_default(ModelConfig, "layers"),
        help="stacked recurrent layers",
    )
    model.add_argument(
        "--dropout",
        type=float,
        default=_default(ModelConfig, "dropout"),
        help="dropout between layers and before the output",
    )
    model.add_argument(
        "--activation",
        default=_default(ModelConfig, "activation"),
        choices=config.ACTIVATIONS,
        help="recurrent activation (simple, elman); lmu: of its output",
    )
    model.add_argument(
        "--recurrent-init",
        default=_default(ModelConfig, "recurrent_initializer"),
        choices=config.RECURRENT_INITIALIZERS,
        help="W_hh initializer; identity with relu is the IRNN",
    )
    model.add_argument(
        "--hidden",
        type=int,
        default=_default(ModelConfig, "hidden"),
        help="units of a Dense(relu) layer before the logits (0: none)",
    )
    model.add_argument(
        "--memory-order",
        type=int,
        default=_default(ModelConfig, "memory_order"),
        help="lmu: the Legendre coefficients its memory keeps",
    )
    model.add_argument(
        "--theta",
        type=float,
        default=_default(ModelConfig, "theta"),
        help="lmu: the steps its memory spans (default: the whole sequence)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs", type=int, default=_default(TrainConfig, "epochs"), help="the most epochs"
    )
    train.add_argument(
        "--learning-rate",
        type=float,
        default=_default(TrainConfig, "learning_rate"),
        help="Adam's step size (the peak of a schedule)",
    )
    train.add_argument(
        "--schedule",
        default=_default(TrainConfig, "schedule"),
        choices=config.SCHEDULES,
        help="learning rate over the steps: constant; cosine (5%% linear warm-up, then "
        "cosine decay to 0); onecycle (30%% warm-up from rate/25, then down to rate/25e4)",
    )
    train.add_argument(
        "--weight-decay",
        type=float,
        default=_default(TrainConfig, "weight_decay"),
        help="AdamW's decoupled weight decay; 0: plain Adam",
    )
    train.add_argument(
        "--clipnorm",
        type=float,
        default=_default(TrainConfig, "clipnorm"),
        help="0 disables clipping",
    )
    train.add_argument(
        "--loop",
        default=_default(TrainConfig, "loop"),
        choices=config.LOOPS,
        help="explicit GradientTape BPTT loop, or Keras model.fit",
    )
    train.add_argument("--xla", action="store_true", help="compile the steps with XLA")
    train.add_argument(
        "--steps-per-execution",
        type=int,
        default=_default(TrainConfig, "steps_per_execution"),
        metavar="N",
        help="training steps per call into TensorFlow's graph (the same maths; the "
        "progress bar moves N steps at a time)",
    )
    train.add_argument(
        "--patience",
        type=int,
        default=_default(TrainConfig, "patience"),
        help="stop after this many epochs without a higher validation accuracy (default: "
        "off, the schedule sets the length; 0: off)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=_default(TrainConfig, "seed"),
        help="seeds weights, dropout and shuffling",
    )
    train.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic TensorFlow ops too (slower): bit-exact repeats and resumes",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_configs(args) -> tuple[ModelConfig, TrainConfig]:
    model = ModelConfig(
        cell=args.cell,
        units=args.units,
        layers=args.layers,
        dropout=args.dropout,
        activation=args.activation,
        recurrent_initializer=args.recurrent_init,
        hidden=args.hidden,
        memory_order=args.memory_order,
        theta=args.theta,
    )
    train = TrainConfig(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        clipnorm=args.clipnorm or None,
        loop=args.loop,
        jit_compile=args.xla,
        steps_per_execution=args.steps_per_execution,
        patience=args.patience or None,
        seed=args.seed,
        deterministic=args.deterministic,
        verbose=0 if args.quiet else 1,
    )
    return model, train


def _add_strategy_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several devices")
    group.add_argument(
        "--strategy",
        default=_default(TrainConfig, "strategy"),
        choices=config.STRATEGIES,
        help="train under tf.distribute: mirrored (this machine's GPUs, or its CPU split "
        "into --devices) or multi-worker (the workers TF_CONFIG names)",
    )
    group.add_argument(
        "--devices",
        type=int,
        help="replicas of --strategy mirrored (default: every GPU, or the CPU)",
    )


# Each command imports what it needs when it runs: `kerasrnn --help` and `predict` (the
# device side) start without TensorFlow, and the others check their flags before starting
# it (`_start_tensorflow`), so that a bad flag is refused at once, not seconds later.


def cmd_train(args) -> None:
    model_config, train_config = _train_configs(args)
    train_config = dataclasses.replace(train_config, strategy=args.strategy, devices=args.devices)
    data_config = _training_data_config(args)
    _start_tensorflow(args)
    from kerasrnn.training_run import train

    result = train(
        model_config,
        data_config,
        train_config,
        args.out,
        resume=args.resume,
        histograms=args.histograms,
    )
    if not result.test:  # a multi-worker run's worker other than the chief
        epochs = len(result.history)
        _say(f"worker done ({epochs} epochs); the chief writes the run folder {args.out}")
        return
    _say(
        f"test loss {result.test['test_loss']:.4f}, test accuracy "
        f"{result.test['test_accuracy']:.2%} on {result.test['test_examples']} test "
        f"{'sequences' if args.npz else 'images'} "
        f"({result.test['epochs']} epochs, {result.test['parameters']} parameters)"
    )
    _say(f"run folder: {result.run_dir}")


def cmd_evaluate(args) -> None:
    data_config = _data_config(args)
    _start_tensorflow(args)
    from kerasrnn.evaluation import evaluate_file

    scores = evaluate_file(args.model, data_config)
    _say(
        json.dumps(scores)
        if args.json
        else f"test loss {scores['loss']:.4f}, test accuracy {scores['accuracy']:.2%} "
        f"on {scores['examples']} test {'sequences' if args.npz else 'images'}"
    )


def cmd_run(args) -> None:
    model_config, train_config = _train_configs(args)
    firmware = None
    if args.firmware:
        firmware = FirmwareConfig(tflm_dir=args.tflm_dir, target=args.firmware)
    data_config = _training_data_config(args)
    _start_tensorflow(args)
    from kerasrnn.pipeline import run, summary_table

    summary = run(
        model_config,
        data_config,
        train_config,
        args.out,
        resume=args.resume,
        firmware=firmware,
        target=args.target or ("micro" if firmware else "litert"),
    )
    _say(summary_table(summary))


def cmd_export(args) -> None:
    export_config = ExportConfig(
        quantization=args.quantize,
        activations=args.activations,
        target=args.target,
        batch_size=None if args.dynamic_batch else 1,
        stream=args.stream,
        micro=not args.no_micro,
        c_array=args.c_array,
        format=args.format,
        min_agreement=args.min_agreement,
        per_channel=args.per_channel,
    )
    data_config = _data_config(args)
    _start_tensorflow(args)
    from kerasrnn.export.workflow import export_model, export_saved_model

    if export_config.format == "saved_model":
        path = export_saved_model(args.model, args.out)
        _say(f'wrote {path}: a SavedModel, signature "serving_default" (float32 logits)')
        return
    sequences = None
    if args.npz:
        from kerasrnn.sequences import load_npz

        sequences = load_npz(args.npz)
    written, report, extras = export_model(
        args.model, args.out, export_config, data_config, sequences
    )
    _say(
        f"wrote {written.path}: {written.size_bytes:,} bytes, {written.size_ratio:.2f}x the "
        f"{written.parameter_bytes:,} bytes of float32 parameters ({written.form})"
    )
    _say(f"why: {written.why}")
    _say(report.table())
    for kind, paths in extras.items():
        _say(f"{kind}: {paths if isinstance(paths, str) else ', '.join(paths)}")


def cmd_firmware(args) -> None:
    firmware_config = FirmwareConfig(
        tflm_dir=args.tflm_dir,
        target=args.target,
        digits=args.digits,
        run=args.run,
        kernels=args.kernels,
        cmsis_nn_dir=args.cmsis_nn_dir,
        build=args.build,
        optimize=args.optimize,
    )
    data_config = _data_config(args)  # refuses --npz with --data
    _start_tensorflow(args)
    from kerasrnn.data import load_sequences
    from kerasrnn.export.firmware import build_firmware

    if args.npz:
        from kerasrnn.sequences import load_npz

        images = load_npz(args.npz).test[0]
    else:  # in the model's view: 784 pixels for --view pixels or permuted
        images, _ = load_sequences(data_config, "test")
    _say(build_firmware(args.model, args.out, firmware_config, images).table())


def cmd_predict(args) -> None:
    try:
        from kerasrnn.export.runtime import Classifier
    except ModuleNotFoundError as e:
        if e.name != "ai_edge_litert":
            raise
        raise KerasRnnError(
            "kerasrnn predict needs the LiteRT runtime, which is not installed: "
            "pip install ai-edge-litert"
        ) from None

    classifier = Classifier(args.model, kernels=args.kernels)
    logits = classifier.predict(load_images(args.images))
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    names = classifier.class_names
    kind = "digit " if names == tuple(str(k) for k in range(len(names))) else ""
    for i, p in enumerate(probabilities):
        _say(f"{i}: {kind}{printable(names[int(p.argmax())])} ({p.max():.1%})")


def cmd_tune(args) -> None:
    if args.quiet:  # the search logs a line per finished trial (kerasrnn.tuning)
        logging.getLogger("kerasrnn.tuning").setLevel(logging.WARNING)
    space = SearchSpace.parse(args.set or [], args.range or [])
    tune_config = TuneConfig(
        tuner=args.tuner,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        patience=args.patience or None,
        loop=args.loop,
        max_bytes=args.max_bytes,
        size_measure=args.size_measure,
        time_budget_s=args.time_budget,
        seed=args.seed,
    )
    data_config = _training_data_config(args)
    _start_tensorflow(args)
    from kerasrnn.tuning import tune
    from kerasrnn.tuning_results import report

    outcome = tune(
        space,
        data_config,
        tune_config,
        args.out,
        role=args.role,
        oracle=args.oracle,
        worker_id=args.worker_id,
        retrain=not args.no_retrain,
    )
    _say(report(outcome))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerasrnn",
        description="Recurrent MNIST classifiers, from first principles to a microcontroller.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kerasrnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TF logs")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter),
    )

    p = commands.add_parser(
        "train",
        help="train a classifier into a run folder",
        description="Train an N-to-1 classifier and evaluate it on the test split.",
    )
    _add_train_flags(p)
    _add_strategy_flags(p)
    _add_data_flags(p)
    _add_augment_flags(p)
    p.add_argument("--out", required=True, help="the run folder, e.g. runs/elman64")
    p.add_argument(
        "--histograms",
        action="store_true",
        help="also log a TensorBoard histogram of every trainable variable each epoch",
    )
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="print a saved model's test loss and accuracy")
    p.add_argument("model", help="a .keras file")
    _add_data_flags(p)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser(
        "run",
        help="train, evaluate, export float and int8, verify",
        description="The whole job: train into --out, evaluate, export "
        "model.tflite and model_int8.tflite (with streaming "
        "model and C array), verify each against Keras and "
        "TensorFlow Lite Micro, and print one summary.",
    )
    _add_train_flags(p)
    _add_data_flags(p)
    _add_augment_flags(p)
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument(
        "--firmware",
        choices=FIRMWARE_TARGETS,
        help="also build and run the int8 file as firmware for this target "
        "(needs the toolchain and --tflm-dir; skipped with a warning without)",
    )
    p.add_argument(
        "--tflm-dir",
        default=os.path.join("..", "shared", "tflm"),
        help="the TFLM source tree for --firmware",
    )
    _add_target_flag(p, None, "micro with --firmware, else litert; micro adds the C arrays")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser(
        "export",
        help="convert a .keras model to builtin-only TFLite",
        description="Convert to a .tflite that runs on LiteRT and "
        "TensorFlow Lite Micro, then verify it; or write a SavedModel for serving "
        "(--format saved_model).",
    )
    p.add_argument(
        "model",
        help="a .keras file: from `kerasrnn train`, or any recurrent Keras model (the "
        "README's table of layers)",
    )
    from kerasrnn.export.config import FORMATS

    p.add_argument(
        "--format",
        default=_default(ExportConfig, "format"),
        choices=FORMATS,
        help="tflite: a .tflite file, verified, with the extras below; saved_model: a "
        "TensorFlow SavedModel folder for serving (float32, any batch size; never "
        "written over an existing path)",
    )
    p.add_argument(
        "--quantize",
        default=_default(ExportConfig, "quantization"),
        choices=QUANTIZATIONS,
        help="none: float32; float16 weights; dynamic: int8 weights; int8: full integer",
    )
    _add_target_flag(p, _default(ExportConfig, "target"), "litert")
    p.add_argument(
        "--activations",
        default=_default(ExportConfig, "activations"),
        choices=ACTIVATION_CHOICES,
        help="int8 only: activations inside the graph (int16: LiteRT and TFLM agree; "
        "int8: every tensor int8, XNNPACK's fast kernels; auto: the target's choice) "
        "(default: auto)",
    )
    p.add_argument(
        "--out", required=True, help="the .tflite file to write (saved_model: the folder)"
    )
    p.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="dynamic batch size (LiteRT only; default: batch 1, runs on MCUs)",
    )
    p.add_argument("--stream", action="store_true", help="also write NAME.step.tflite")
    p.add_argument(
        "--c-array",
        action="store_true",
        help="also write NAME.h/.cc, the file as a C array for TFLM firmware (with "
        "--stream also NAME.step.h/.cc); never over another file's",
    )
    p.add_argument("--no-micro", action="store_true", help="skip the TFLM check")
    p.add_argument(
        "--min-agreement",
        type=float,
        default=_default(ExportConfig, "min_agreement"),
        help="dynamic/int8: the least top-1 agreement with Keras on the test data of a "
        "file that is written (default: 0.9; below 0.99 an int8 file is flagged)",
    )
    p.add_argument(
        "--per-channel",
        action="store_true",
        help="int8: weight scales per output channel (closer to Keras for some models; "
        "a larger file and arena)",
    )
    _add_data_flags(
        p,
        "your own data for a model of any input shape: a .npz with x float "
        "[n, steps, features], y int labels or float targets (optional x_test, y_test); "
        "x calibrates int8, x_test (else x) verifies. Replaces --data",
    )
    p.set_defaults(func=cmd_export)

    p = commands.add_parser(
        "firmware",
        help="compile a .tflite into Cortex-M firmware with TFLM (and run it under QEMU)",
        description="Compile a batch-1 .tflite with TensorFlow Lite Micro into firmware for "
        "an MPS2 board (or the host), and with --run run it under QEMU and compare its "
        "output bytes with the Python TFLM interpreter and LiteRT.",
    )
    p.add_argument("model", help="a batch-1 .tflite: a classifier or a NAME.step.tflite")
    p.add_argument(
        "--tflm-dir",
        required=True,
        help="a TFLM checkout or a tree made by its create_tflm_tree.py",
    )
    p.add_argument(
        "--target",
        default=_default(FirmwareConfig, "target"),
        choices=FIRMWARE_TARGETS,
        help="cortex-m3 (QEMU mps2-an385), cortex-m4 (mps2-an386), cortex-m7 (mps2-an500), "
        "cortex-m33 (mps2-an505), cortex-m55 (mps3-an547) or host (g++)",
    )
    p.add_argument(
        "--kernels",
        default=_default(FirmwareConfig, "kernels"),
        choices=FIRMWARE_KERNELS,
        help="cmsis-nn: Arm's CMSIS-NN for every operator it has a kernel for, TFLM's "
        "reference kernels for the rest; reference: reference kernels only; auto (default): "
        "cmsis-nn when a CMSIS-NN tree is found, else reference, saying so",
    )
    p.add_argument(
        "--cmsis-nn-dir",
        help="the CMSIS-NN tree (default: found inside the TFLM tree, where its build "
        "downloads it, or beside it as cmsis-nn/)",
    )
    p.add_argument(
        "--build",
        default=_default(FirmwareConfig, "build"),
        choices=FIRMWARE_BUILDS,
        help="release (default): no error messages or debug checks, as TFLM's release "
        "build; debug: TFLM's messages say why a model fails (about 20 KiB more flash)",
    )
    p.add_argument(
        "--optimize",
        default=_default(FirmwareConfig, "optimize"),
        choices=FIRMWARE_OPTIMIZATIONS,
        help="speed (default): kernels at -O2, the interpreter at -Os, as TFLM builds; "
        "size: -Os throughout",
    )
    p.add_argument("--out", required=True, help="the firmware project folder")
    p.add_argument(
        "--run",
        action="store_true",
        help="run it (under QEMU for the boards), fit the arena, compare outputs",
    )
    p.add_argument(
        "--digits",
        type=int,
        default=_default(FirmwareConfig, "digits"),
        help="test digits embedded and run",
    )
    _add_data_flags(
        p,
        "the sequences to embed and run, for a model of any input shape: x_test "
        "(else x) of a .npz as `kerasrnn export --npz` reads it. Replaces --data",
    )
    p.set_defaults(func=cmd_firmware)

    p = commands.add_parser(
        "tune",
        help="search hyperparameters with Keras Tuner (resumable, distributed)",
        description="Search the space of build_classifier with Keras Tuner. Re-running the "
        "same command continues an interrupted search. Distributed: start one "
        "--role chief and any number of --role worker with the same --oracle.",
    )
    p.add_argument("--out", required=True, help="the search folder")
    p.add_argument(
        "--tuner",
        default=_default(TuneConfig, "tuner"),
        choices=config.TUNERS,
        help="the Keras Tuner algorithm (bayesian needs the tuning extra)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="fix a hyperparameter, e.g. --set cell=elman (repeatable)",
    )
    p.add_argument(
        "--range",
        action="append",
        metavar="NAME=LOW:HIGH|A,B",
        help="narrow one, e.g. --range units=32:256 or --range cell=lstm,gru",
    )
    p.add_argument(
        "--max-trials",
        type=int,
        default=_default(TuneConfig, "max_trials"),
        help="trials to run (random, bayesian)",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=_default(TuneConfig, "max_epochs"),
        help="per-trial epoch cap",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=_default(TuneConfig, "patience"),
        help="early stopping in a trial; 0: off",
    )
    p.add_argument(
        "--loop",
        default=_default(TuneConfig, "loop"),
        choices=config.LOOPS,
        help="train trials with the BPTT loop or Keras fit",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        help="edge objective: best val_accuracy among models of at most this size",
    )
    p.add_argument(
        "--size-measure",
        default=_default(TuneConfig, "size_measure"),
        choices=config.SIZE_MEASURES,
        help="what counts against --max-bytes",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop cleanly after the running trial once this much time passed",
    )
    p.add_argument(
        "--seed", type=int, default=_default(TuneConfig, "seed"), help="the search's seed"
    )
    p.add_argument(
        "--role",
        choices=config.ROLES,
        help="distributed tuning (or set KERASTUNER_* environment variables)",
    )
    p.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address")
    p.add_argument("--worker-id", help="this worker's id (default: worker-PID)")
    p.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip retraining the best model on train+validation",
    )
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    _add_data_flags(p)
    _add_augment_flags(p)
    p.set_defaults(func=cmd_tune)

    p = commands.add_parser("predict", help="classify digits with a .tflite (LiteRT only)")
    p.add_argument("model", help="a .tflite file from `kerasrnn export`")
    p.add_argument("images", help="images.npy ([n, 28, 28] or [28, 28]) or a digit .png")
    p.add_argument(
        "--kernels",
        default="auto",
        choices=RUNTIME_KERNELS,
        help="LiteRT's kernels: auto (XNNPACK where it runs the file, else builtin), "
        "xnnpack, builtin (default: auto)",
    )
    p.set_defaults(func=cmd_predict)
    return parser


def _add_target_flag(p, default: str | None, default_text: str) -> None:
    p.add_argument(
        "--target",
        default=default,
        choices=TARGETS,
        help="the runtime the .tflite files are made for: litert (LiteRT with XNNPACK, "
        "`kerasrnn predict`: the fastest file that keeps the accuracy, unrolled, int8 "
        "activations where they agree with Keras on 99.5%% of the probes) or micro "
        "(TensorFlow Lite Micro: the smallest file and arena, int16 activations, the "
        f"fused LSTM) (default: {default_text})",
    )


def _start_tensorflow(args) -> None:
    """Imports TensorFlow for a command whose flags are checked, with its C++ start-up
    chatter (oneDNN, CUDA probing) hidden unless --debug: TF writes those lines straight
    to file descriptor 2 before any log level applies.

    Raises:
        KerasRnnError: TensorFlow is not installed (a device's runtime-only install).
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise KerasRnnError(
            f"kerasrnn {args.command} needs TensorFlow, which is not installed here "
            "(a runtime-only install runs `kerasrnn predict`): install the full "
            "package with its dependencies, e.g. pip install . in the checkout"
        )
    if args.debug:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # probes CUDA now, while stderr is hidden
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# The OSErrors a user fixes (a full disk, a folder they may not write, a missing file),
# with what to do: `_error_line` names the path and the cause, as for a KerasRnnError.
_USER_FIXABLE_OS_ERRORS = {
    errno.ENOSPC: "free some space, or write elsewhere",
    errno.EDQUOT: "free some space, or write elsewhere",
    errno.EACCES: "choose a path you may write, or change its permissions",
    errno.EPERM: "choose a path you may write, or change its permissions",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOENT: None,
    errno.ENOTDIR: None,
    errno.EISDIR: None,
}


def _error_line(e: Exception, out: str | None) -> str:
    """What a failed command prints after "kerasrnn: ".

    "error: ..." for what the user can fix: a `KerasRnnError`, or an OSError of
    `_USER_FIXABLE_OS_ERRORS` (its path, or the --out folder `out` when it names none, and
    its cause); "unexpected error: ..." with the way to the traceback for anything else.
    """
    if isinstance(e, KerasRnnError):
        return f"error: {e}"
    if isinstance(e, OSError) and e.errno in _USER_FIXABLE_OS_ERRORS:
        cause = os.strerror(e.errno)
        cause = cause[0].lower() + cause[1:]
        if e.filename is not None:
            paths = [os.fsdecode(p) for p in (e.filename, e.filename2) if p is not None]
            line = f"{' -> '.join(paths)}: {cause}"
        else:  # a write's error names no file: say which output it was writing
            line = f"{cause} (writing into {out})" if out else cause
        hint = _USER_FIXABLE_OS_ERRORS[e.errno]
        return f"error: {line}: {hint}" if hint else f"error: {line}"
    return f"unexpected error: {type(e).__name__}: {e} (run with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    """Runs the command line in this process; returns the exit status (130 when interrupted
    by Ctrl-C). Training and tuning keep their folders resumable when interrupted.

    SIGINT is handled as before once it returns: a caller's Ctrl-C (and the processes it
    starts, which inherit an ignored SIGINT) still work after a command run from Python.
    """
    previous = signal.getsignal(signal.SIGINT)
    try:
        return _command(argv)
    finally:
        if previous is not None:  # None: a handler installed outside Python, left as is
            signal.signal(signal.SIGINT, previous)


def run() -> None:
    """The `kerasrnn` program (and `python -m kerasrnn`): the command, then exit with its
    status. Once the command is over, SIGINT is ignored until the process ends: a late
    Ctrl-C, while it exits, cannot turn a printed success into a death by signal, nor an
    interruption into a traceback."""
    sys.exit(_command(None))


def _command(argv: list[str] | None) -> int:
    """The command of `argv` (None: the program's arguments); its exit status, with SIGINT
    ignored from the moment the command is over."""
    args = build_parser().parse_args(argv)
    if not args.debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler = logging.StreamHandler()
    handler.setFormatter(PrintableFormatter("kerasrnn: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, handlers=[handler])
    # The package says what it is doing (export's stages, a resumed run); TF's retracing
    # advice is for library authors, not for CLI users.
    logging.getLogger("kerasrnn").setLevel(logging.INFO)
    if not args.debug:
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:  # one line, whatever went wrong
        if args.debug:  # the traceback, which shows a Ctrl-C behind the error too
            raise
        if _caused_by_ctrl_c(e):
            return _interrupted()
        print(f"kerasrnn: {printable(_error_line(e, getattr(args, 'out', None)))}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0


def _interrupted() -> int:
    """Says that Ctrl-C ended the command; its exit status, 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("kerasrnn: interrupted", file=sys.stderr)
    return 130


def _caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether Ctrl-C is behind `error`: a KeyboardInterrupt that Python wrapped on its way
    out (one raised inside an import's class body comes out as a RuntimeError), or that
    was being handled when `error` was raised."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    run()
