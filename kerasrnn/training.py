"""Training: an explicit GradientTape BPTT loop (and Keras `fit` for comparison)."""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from kerasrnn import data, plots
from kerasrnn._io import atomic_write, write_json
from kerasrnn.models import ModelConfig, build_classifier
from kerasrnn.rundir import RunDirectory, RunRecorder

log = logging.getLogger(__name__)
LOOPS = ("bptt", "fit")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a model is trained.

    Attributes:
        epochs: the most epochs to run.
        learning_rate: Adam's step size.
        clipnorm: global-norm gradient clipping threshold (None: no clipping).
        loop: "bptt" (the explicit GradientTape loop) or "fit" (Keras `model.fit`).
        jit_compile: compile the steps with XLA.
        patience: early stopping after this many epochs without a lower validation
            loss (None: train all epochs). The best epoch's weights are kept.
        seed: seeds weights, dropout and shuffling.
        verbose: 1 shows a progress bar, 0 is silent.
    """

    epochs: int = 10
    learning_rate: float = 2e-3
    clipnorm: float | None = 1.0
    loop: str = "bptt"
    jit_compile: bool = False
    patience: int | None = 3
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.clipnorm is not None and self.clipnorm <= 0:
            raise ValueError(f"clipnorm must be positive or None, got {self.clipnorm}")
        if self.patience is not None and self.patience <= 0:
            raise ValueError(f"patience must be positive or None, got {self.patience}")


@dataclasses.dataclass
class TrainResult:
    """What `train` produced: the model (best epoch's weights), history and test scores."""

    model: keras.Model
    history: list[dict]
    test: dict
    run_dir: str


def compile_model(model: keras.Model, config: TrainConfig) -> keras.Model:
    """Attaches Adam, the logits cross-entropy and accuracy to `model`.

    With `loop="fit"` the optimizer clips by global norm itself; the BPTT loop clips
    explicitly in its train step, so its optimizer does not.
    """
    clip = config.clipnorm if config.loop == "fit" else None
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, global_clipnorm=clip),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=config.jit_compile,
    )
    return model


def _steps(dataset: tf.data.Dataset) -> int | None:
    n = int(dataset.cardinality())
    return n if n >= 0 else None


def fit_bptt(model: keras.Model, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset,
             config: TrainConfig, callbacks=(), initial_epoch: int = 0) -> None:
    """Trains a compiled model with an explicit backpropagation-through-time loop.

    Keras callbacks (`on_train_begin`, `on_epoch_begin`, `on_epoch_end` with the logs
    loss, accuracy, val_loss, val_accuracy, `on_train_end`) run as under `fit`, and
    `model.stop_training` ends training early.

    Args:
        model: a model compiled by `compile_model`.
        train_ds, val_ds: batches of (x [batch, steps, features], y [batch]); with
            val_ds None no validation is run (e.g. a final fit on train+validation).
        config: see `TrainConfig`.
        callbacks: Keras callbacks.
        initial_epoch: the first epoch to run (0-based; later when resuming).
    """
    optimizer, loss_fn = model.optimizer, model.loss
    loss_mean = keras.metrics.Mean()
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    clipnorm = config.clipnorm

    @tf.function(jit_compile=config.jit_compile)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)  # unrolls through all time steps
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)  # backprop through time
        if clipnorm is not None:
            grads, _ = tf.clip_by_global_norm(grads, clipnorm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        loss_mean.update_state(loss, sample_weight=tf.shape(y)[0])
        accuracy.update_state(y, logits)

    callbacks = keras.callbacks.CallbackList(list(callbacks), model=model)
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, config.epochs):
        callbacks.on_epoch_begin(epoch)
        loss_mean.reset_state()
        accuracy.reset_state()
        progbar = keras.utils.Progbar(_steps(train_ds), verbose=config.verbose,
                                      stateful_metrics=["loss", "accuracy"])
        for step, (x, y) in enumerate(train_ds):
            train_step(x, y)
            if config.verbose:  # reading the metrics waits for the step; only for display
                progbar.update(step + 1, [("loss", float(loss_mean.result())),
                                          ("accuracy", float(accuracy.result()))])
        logs = {"loss": float(loss_mean.result()), "accuracy": float(accuracy.result())}
        if val_ds is not None:
            logs.update({f"val_{k}": v for k, v in evaluate(model, val_ds).items()})
        if config.verbose:
            print(f"epoch {epoch + 1}/{config.epochs}: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)


def evaluate(model: keras.Model, dataset: tf.data.Dataset) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a logits model over a dataset.

    Returns:
        {"loss": float, "accuracy": float}.
    """
    return scores(*predict_logits(model, dataset))


def evaluate_file(model_path: str, data_config: data.DataConfig) -> dict:
    """Loads a saved classifier and scores it on the test split.

    The sequence view follows the model's input shape ([28, 28]: rows) unless
    `data_config.view` asks for `permuted`.

    Returns:
        {"loss": float, "accuracy": float, "examples": int}.
    """
    model = load_model(model_path)
    view = data.view_for_shape(model.input_shape[1:], data_config.view)
    labels, logits = predict_logits(model, data.pipeline(
        dataclasses.replace(data_config, view=view), "test"))
    return {**scores(labels, logits), "examples": len(labels)}


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` classifier, with a clear error for a missing or invalid file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ValueError(f"{path} is not a loadable .keras model: {e}") from None


def scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy of logits [n, classes] against labels [n]."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    return {"loss": float(loss), "accuracy": float((logits.argmax(-1) == labels).mean())}


def predict_logits(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs the model over a dataset of (x, y) batches.

    Returns:
        (labels int32 [n], logits float32 [n, classes]).
    """
    labels, logits = [], []
    for x, y in dataset:  # one pass, so shuffled datasets keep labels and logits paired
        logits.append(model.predict_on_batch(x))  # Keras's cached, compiled predict step
        labels.append(y.numpy())
    return np.concatenate(labels), np.concatenate(logits)


def train(model_config: ModelConfig, data_config: data.DataConfig, config: TrainConfig,
          out_dir: str, resume: bool = False, callbacks=()) -> TrainResult:
    """Trains a classifier into a run folder (see `kerasrnn.rundir`), resumable.

    Args:
        model_config: the architecture.
        data_config: the data; `validation` is carved from the training split.
        config: see `TrainConfig`.
        out_dir: the run folder.
        resume: continue the run in `out_dir` from its last finished epoch.
        callbacks: extra Keras callbacks (for example Keras Tuner's).

    Returns:
        A `TrainResult`; the model holds the best epoch's weights.

    Raises:
        RunExistsError: `out_dir` holds a run and `resume` is false, or a different run.
    """
    data_config = dataclasses.replace(data_config, source=data.resolve_source(data_config))
    model_config = dataclasses.replace(model_config, input_shape=data.input_shape(data_config.view))
    run = RunDirectory(out_dir)
    run.begin({"model": dataclasses.asdict(model_config), "data": dataclasses.asdict(data_config),
               "train": {k: v for k, v in dataclasses.asdict(config).items() if k != "verbose"}},
              resume)
    keras.utils.set_random_seed(config.seed)
    model = compile_model(build_classifier(model_config), config)
    train_ds = data.pipeline(data_config, "train")
    val_ds = data.pipeline(data_config, "validation")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                     epoch=tf.Variable(0, dtype=tf.int64))
    initial_epoch = 0
    latest = tf.train.latest_checkpoint(run.checkpoint_dir) if resume else None
    if latest:
        model.optimizer.build(model.trainable_variables)
        checkpoint.restore(latest).assert_existing_objects_matched()
        initial_epoch = int(checkpoint.epoch.numpy())
        log.info("resuming %s after epoch %d", out_dir, initial_epoch)
    num_samples = int(train_ds.unbatch().reduce(0, lambda n, _: n + 1))
    recorder = RunRecorder(run, checkpoint, run.read_history()[:initial_epoch], num_samples,
                           config.patience)
    if initial_epoch < config.epochs and not recorder.should_stop():
        callbacks = [recorder, *callbacks]
        if config.loop == "bptt":
            fit_bptt(model, train_ds, val_ds, config, callbacks, initial_epoch)
        else:
            model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                      initial_epoch=initial_epoch, callbacks=callbacks, verbose=config.verbose)
    recorder.restore_best()
    return _finish(run, model, data_config, recorder.history)


def _finish(run: RunDirectory, model: keras.Model, data_config: data.DataConfig,
            history: list[dict]) -> TrainResult:
    """Saves the model, scores it on the test split and draws the figures."""
    atomic_write(run.model_path, model.save)
    labels, logits = predict_logits(model, data.pipeline(data_config, "test"))
    test = {f"test_{k}": v for k, v in scores(labels, logits).items()}
    test.update({"test_examples": len(labels), "parameters": int(model.count_params()),
            "epochs": len(history)})
    write_json(run.summary_path, test)
    plots.training_curves(history, run.curves_path)
    counts = plots.confusion_matrix(labels, logits.argmax(-1), logits.shape[-1])
    plots.confusion_matrix_png(counts, run.confusion_path,
                               f"test accuracy {test['test_accuracy']:.2%}")
    return TrainResult(model, history, test, run.path)
