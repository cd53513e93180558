"""Training: `fit`, the one place a model is trained, with the explicit GradientTape
backpropagation-through-time loop (or Keras `fit`, for comparison)."""

from __future__ import annotations

import keras
import tensorflow as tf

from kerasrnn.config import TrainConfig
from kerasrnn.evaluation import evaluate


def compile_model(model: keras.Model, config: TrainConfig) -> keras.Model:
    """Attaches Adam, the logits cross-entropy and accuracy to `model`.

    With `loop="fit"` the optimizer clips by global norm itself; the BPTT loop clips
    explicitly in its train step, so its optimizer does not.

    Returns:
        The same model, compiled.
    """
    clip = config.clipnorm if config.loop == "fit" else None
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate, global_clipnorm=clip),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=config.jit_compile,
    )
    return model


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    config: TrainConfig,
    callbacks=(),
    initial_epoch: int = 0,
) -> None:
    """Trains a compiled model with the loop `config.loop` names.

    Keras callbacks run as under `model.fit` (epoch logs: loss, accuracy, val_loss,
    val_accuracy), and `model.stop_training` ends training early.

    Args:
        model: a model compiled by `compile_model`.
        train_ds: batches of (x [batch, steps, features], y [batch]).
        val_ds: validation batches alike, or None (no validation, e.g. a final fit on
            train+validation).
        config: see `TrainConfig`.
        callbacks: Keras callbacks.
        initial_epoch: the first epoch to run (0-based; later when resuming).
    """
    if config.loop == "fit":
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            callbacks=list(callbacks),
            verbose=config.verbose,
            shuffle=False,
        )  # the dataset reshuffles itself every epoch
    else:
        _fit_bptt(model, train_ds, val_ds, config, list(callbacks), initial_epoch)


def _fit_bptt(model, train_ds, val_ds, config: TrainConfig, callbacks, initial_epoch) -> None:
    """The explicit backpropagation-through-time loop (see `fit`)."""
    optimizer, loss_fn = model.optimizer, model.loss
    loss_mean = keras.metrics.Mean(name="loss")
    accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
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
        # The running means, computed in the graph: the progress bar reads them only when
        # it redraws (every 50 ms), so the step never waits for a display.
        return {"loss": loss_mean.result(), "accuracy": accuracy.result()}

    steps = int(train_ds.cardinality())
    callbacks = keras.callbacks.CallbackList(
        callbacks,
        add_progbar=config.verbose != 0,
        model=model,
        verbose=config.verbose,
        epochs=config.epochs,
        steps=steps if steps >= 0 else None,
    )
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, config.epochs):
        callbacks.on_epoch_begin(epoch)
        loss_mean.reset_state()
        accuracy.reset_state()
        step_logs = {"loss": loss_mean.result(), "accuracy": accuracy.result()}
        for step, (x, y) in enumerate(train_ds):
            callbacks.on_train_batch_begin(step)
            step_logs = train_step(x, y)
            callbacks.on_train_batch_end(step, step_logs)
        logs = {key: float(value) for key, value in step_logs.items()}
        if val_ds is not None:
            logs.update({f"val_{k}": v for k, v in evaluate(model, val_ds).items()})
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
