"""Training: `fit`, the one place a model is trained, with the explicit GradientTape
backpropagation-through-time loop (or Keras `fit`, for comparison); the optimizer and its
learning-rate schedule; and what makes a run repeat: seeds, deterministic ops, and the
random state a resumed run restores."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras
import tensorflow as tf

from kerasrnn.config import TrainConfig
from kerasrnn.distribute import local_copy, model_strategy, scope
from kerasrnn.errors import DataError
from kerasrnn.evaluation import evaluate

log = logging.getLogger(__name__)

# The schedules (`TrainConfig.schedule`) as (share of the steps spent warming up, first
# rate / peak, last rate / peak): a linear warm-up to `learning_rate`, then a cosine decay.
# "onecycle" is Smith and Topin's one-cycle policy with the settings of fastai and
# PyTorch's OneCycleLR (30% warm-up from peak/25, down to peak/25/1e4), without the
# momentum cycle.
SCHEDULE_SHAPES = {
    "cosine": (0.05, 0.0, 0.0),
    "onecycle": (0.3, 1 / 25, 1 / 25 / 1e4),
}

# A function of the epoch giving that epoch's batches (see `data.epochs`).
EpochBatches = Callable[[int], tf.data.Dataset]


def make_reproducible(config: TrainConfig) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras with `config.seed` (call it before the
    model is built) and, with `config.deterministic`, makes TensorFlow's ops deterministic
    too, for the rest of the process."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
        log.info(
            "deterministic: TensorFlow ops run deterministically (slower); the same seed "
            "gives the same weights on this machine and software, resumed or not"
        )


def learning_rate(
    config: TrainConfig, steps_per_epoch: int | None = None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate `config` asks for: a float, or a schedule over the optimizer's
    steps (see `SCHEDULE_SHAPES`) spanning `config.epochs` epochs.

    Args:
        config: see `TrainConfig`.
        steps_per_epoch: batches per epoch (a schedule needs it; see `steps_per_epoch`).

    Raises:
        ValueError: a schedule without `steps_per_epoch`.
    """
    if config.schedule == "constant":
        return config.learning_rate
    if not steps_per_epoch:
        raise ValueError(
            f"the {config.schedule!r} schedule needs steps_per_epoch (batches per epoch) to "
            f"span the training, got {steps_per_epoch!r}: pass "
            f"steps_per_epoch=training.steps_per_epoch(train_batches), or "
            f"schedule='constant'"
        )
    warmup_share, first, last = SCHEDULE_SHAPES[config.schedule]
    total = steps_per_epoch * config.epochs
    warmup = round(total * warmup_share)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate * first,
        decay_steps=max(1, total - warmup),
        alpha=last,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def compile_model(
    model: keras.Model, config: TrainConfig, steps_per_epoch: int | None = None
) -> keras.Model:
    """Attaches Adam (AdamW with `config.weight_decay`), the logits cross-entropy and
    accuracy to `model`.

    With `loop="fit"` the optimizer clips by global norm itself; the BPTT loop clips
    explicitly in its train step, so its optimizer does not. Keras `fit` runs several
    steps a call as the BPTT loop does (see `fit_steps_per_execution`).

    Args:
        model: a classifier.
        config: see `TrainConfig`.
        steps_per_epoch: batches per epoch, which a learning-rate schedule needs.

    Returns:
        The same model, compiled.
    """
    rate = learning_rate(config, steps_per_epoch)
    clip = config.clipnorm if config.loop == "fit" else None
    if config.weight_decay:
        # Decoupled decay (w -= rate * weight_decay * w each step) of every variable.
        optimizer = keras.optimizers.AdamW(
            rate, weight_decay=config.weight_decay, global_clipnorm=clip
        )
    else:
        optimizer = keras.optimizers.Adam(rate, global_clipnorm=clip)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=config.jit_compile,
        steps_per_execution=fit_steps_per_execution(config, steps_per_epoch),
    )
    return model


def fit_steps_per_execution(config: TrainConfig, steps_per_epoch: int | None) -> int:
    """The steps a call Keras `fit` can run: the largest divisor of `steps_per_epoch` up
    to `config.steps_per_execution` (1 for the BPTT loop, which reads its own setting).

    Keras `fit` (3.15) reads `steps_per_execution` batches at every call, even past an
    epoch's end: unless they divide its steps, an epoch would take batches of the next
    one. Logs a line when it must run fewer than asked.
    """
    if config.loop != "fit" or config.steps_per_execution == 1:
        return 1
    if not steps_per_epoch:
        log.info("loop='fit' without steps_per_epoch: one step per call")
        return 1
    count = max(
        n
        for n in range(1, min(config.steps_per_execution, steps_per_epoch) + 1)
        if steps_per_epoch % n == 0
    )
    if count != config.steps_per_execution:
        log.info(
            "loop='fit': %d steps per call instead of steps_per_execution=%d, the most that "
            "divide an epoch's %d steps (Keras would read past the epoch's end)",
            count,
            config.steps_per_execution,
            steps_per_epoch,
        )
    return count


def steps_per_epoch(train: tf.data.Dataset | EpochBatches) -> int:
    """Batches per epoch of `train` (see `fit`), counted by reading one epoch when
    TensorFlow cannot tell.

    Raises:
        ValueError: `train` repeats forever.
    """
    ds = train(0) if callable(train) else train
    steps = int(ds.cardinality())
    if steps == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the training batches repeat forever: pass the batches of one epoch")
    if steps == tf.data.UNKNOWN_CARDINALITY:
        steps = int(ds.reduce(0, lambda n, _: n + 1))
    return steps


def random_states(model: keras.Model) -> list:
    """The states of the model's random generators (its dropout layers' seeds), which
    advance at every training step. Keras keeps them out of `model.weights` and out of a
    checkpoint of the model: a resumable run checkpoints them beside it, or the epochs
    after a resume would draw the first epochs' dropout masks again."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset | EpochBatches,
    val_ds: tf.data.Dataset | None,
    config: TrainConfig,
    callbacks=(),
    initial_epoch: int = 0,
) -> None:
    """Trains a compiled model with the loop `config.loop` names.

    Keras callbacks run as under `model.fit` (epoch logs: loss, accuracy, val_loss,
    val_accuracy), and `model.stop_training` ends training early: set within an epoch
    (by `on_train_batch_end`), after that group of steps, the epoch then ending as a
    whole one does (validation, `on_epoch_end`), as under Keras `fit`. Both loops read the
    same batches in the same order: the epochs are one dataset, read by one iterator.

    A model made and compiled in a strategy's scope (see `kerasrnn.distribute`) trains
    under that strategy: each batch is the global batch, split between the replicas.
    Call `fit` outside the scope.

    Args:
        model: a model compiled by `compile_model`.
        train_ds: batches of (x [batch, steps, features], y [batch]), all of one size
            but an epoch's last (as `Dataset.batch` makes them): a function of the
            epoch giving its batches (`data.epochs`: the order depends on the epoch
            alone, so a resumed run sees the batches an uninterrupted one would), or one
            dataset read once per epoch (its own reshuffling decides the order).
        val_ds: validation batches alike, or None (no validation, e.g. a final fit on
            train+validation).
        config: see `TrainConfig` (`make_reproducible` applies its seed and
            `deterministic`, before the model is built).
        callbacks: Keras callbacks.
        initial_epoch: the first epoch to run (0-based; later when resuming).
    """
    if initial_epoch >= config.epochs:
        return
    steps = steps_per_epoch(train_ds)
    batches = _epoch_stream(train_ds, initial_epoch, config.epochs)
    if model_strategy(model) is not None:
        batches = _sharded_by_data(batches)
        if val_ds is not None:
            val_ds = _sharded_by_data(val_ds)
    if config.loop == "fit":
        model.fit(
            batches,
            steps_per_epoch=steps,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            callbacks=list(callbacks),
            verbose=config.verbose,
            shuffle=False,
        )
    else:
        _fit_bptt(model, batches, steps, val_ds, config, list(callbacks), initial_epoch)


def _epoch_stream(train_ds, first: int, last: int) -> tf.data.Dataset:
    """The batches of epochs `first` to `last - 1`, one after the other, as one dataset.

    Keras `fit` makes a fresh iterator of a dataset at each epoch and one more at each
    epoch's end; read through one iterator (with `steps_per_epoch`), the epochs cannot
    depend on how many iterators were made.
    """
    datasets = [train_ds(epoch) if callable(train_ds) else train_ds for epoch in range(first, last)]
    while len(datasets) > 1:  # pairwise: a batch passes log2(epochs) concatenations
        pairs = [a.concatenate(b) for a, b in zip(datasets[::2], datasets[1::2])]
        datasets = pairs + datasets[len(pairs) * 2 :]
    return datasets[0].prefetch(tf.data.AUTOTUNE)


def _sharded_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` for a strategy to split: every worker reads each batch and keeps its own
    replicas' shares of it (TensorFlow's default shards by file, and these examples come
    from memory)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _fit_bptt(model, batches, steps, val_ds, config: TrainConfig, callbacks, initial_epoch):
    """The explicit backpropagation-through-time loop (see `fit`)."""
    strategy = model_strategy(model)
    with scope(strategy):  # under a strategy, the metrics' totals sum over the replicas
        loss_mean = keras.metrics.Mean(name="loss")
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if strategy is None:
        train_step = _one_device_step(model, loss_mean, accuracy, config)
        train_steps = _steps_of_one_batch_size(train_step, loss_mean, accuracy)
        scored = model  # what validation reads
    else:
        batches = strategy.experimental_distribute_dataset(batches)
        train_step = _replicated_step(model, loss_mean, accuracy, config)
        train_steps = _steps_in_one_call(train_step, loss_mean, accuracy)
        scored = local_copy(model)

    callbacks = keras.callbacks.CallbackList(
        callbacks,
        add_progbar=config.verbose != 0,
        model=model,
        verbose=config.verbose,
        epochs=config.epochs,
        steps=steps,
    )
    model.stop_training = False
    callbacks.on_train_begin()
    logs = {}
    batches = iter(batches)
    for epoch in range(initial_epoch, config.epochs):
        callbacks.on_epoch_begin(epoch)
        loss_mean.reset_state()
        accuracy.reset_state()
        step_logs = _running(loss_mean, accuracy)
        for first in range(0, steps, config.steps_per_execution):
            count = min(config.steps_per_execution, steps - first)
            callbacks.on_train_batch_begin(first)
            step_logs = train_steps(batches, count, ends_epoch=first + count == steps)
            callbacks.on_train_batch_end(first + count - 1, step_logs)
            if model.stop_training:  # a callback stopped it within the epoch, as Keras fit
                break
        logs = {key: float(value) for key, value in step_logs.items()}
        if val_ds is not None:
            if scored is not model:
                scored.set_weights(model.get_weights())
            logs.update({f"val_{k}": v for k, v in evaluate(scored, val_ds).items()})
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)


def _steps_in_one_call(train_step, loss_mean, accuracy):
    """Runs `train_step` on the next `count` batches of an iterator in one graph call.

    The graph reads the batches from the iterator itself, as Keras `fit` does with
    `steps_per_execution`: the steps are those of one call per batch, without the return
    to Python between them.

    Args:
        train_step: a function of one batch (x, y), or of a distributed batch, that trains
            on it and updates `loss_mean` and `accuracy`.

    Returns:
        A function (iterator, count, ends_epoch) -> the running {"loss", "accuracy"}
        after the steps, computed in the graph: the progress bar reads them only when it
        redraws (every 50 ms), so the steps never wait for a display. `ends_epoch` (the
        group holds the epoch's last batch) is for `_steps_of_one_batch_size`.
    """

    @tf.function
    def train_steps(iterator, count):
        for _ in tf.range(count):
            train_step(*next(iterator))
        return _running(loss_mean, accuracy)

    # The count is a tensor, so that an epoch's shorter last group runs the same trace.
    return lambda iterator, count, ends_epoch: train_steps(iterator, tf.constant(count))


def _steps_of_one_batch_size(train_step, loss_mean, accuracy):
    """`_steps_in_one_call` on one device, with `train_step` traced for the size of the
    batches instead of an unknown size.

    A dataset types its batches [None, steps, features]. Traced for that, the gradient
    of every broadcast op of the unrolled steps (each bias, h0, the gates' products)
    works out at run time which axes to sum, several small ops per step; traced for
    [64, steps, features], those fold away: `kerasrnn train` ran 1.09x (simple), 1.07x
    (elman), 1.09x (LSTM) and 1.2x (GRU) as fast on a 2-core CPU
    (`benchmarks/training_speed.py --levers`).

    The size is the run's first batch's, which every batch of an epoch but its last has
    (as `Dataset.batch` makes them): the graph's loop runs those, and the first and each
    epoch's last batch run in a call of their own, traced for their own size.

    Returns:
        A function (iterator, count, ends_epoch) -> the running {"loss", "accuracy"}
        after the steps; `ends_epoch`: the group holds the epoch's last batch.
    """
    size = None  # the batches' size, once the first is read

    @tf.function
    def full_batches(iterator, count, batch_size):
        for _ in tf.range(count):
            x, y = next(iterator)
            x = tf.ensure_shape(x, [batch_size, *x.shape[1:]], name=_OF_THE_FIRST_SIZE)
            train_step(x, tf.ensure_shape(y, [batch_size], name=_OF_THE_FIRST_SIZE))
        return _running(loss_mean, accuracy)

    def train_steps(iterator, count, ends_epoch):
        nonlocal size
        if size is None:
            x, y = next(iterator)
            size = int(tf.shape(y)[0])
            logs = train_step(x, y)
            count -= 1
        in_loop = count - 1 if ends_epoch and count else count
        if in_loop:
            try:  # the count is a tensor, so that groups of any length run the same trace
                logs = full_batches(iterator, tf.constant(in_loop), size)
            except tf.errors.InvalidArgumentError as error:
                if _OF_THE_FIRST_SIZE not in error.message:
                    raise
                raise DataError(
                    f"the training batches are of uneven sizes: every batch of an epoch but "
                    f"its last must have the first batch's size ({size}), as Dataset.batch "
                    f"makes them"
                ) from None
        if ends_epoch and count:
            logs = train_step(*next(iterator))
        return logs

    return train_steps


# The name of the checks that a batch the graph's loop reads has the first batch's size
# (either may fail first: TensorFlow runs them side by side).
_OF_THE_FIRST_SIZE = "batch_of_the_first_batch_size"


def _running(loss_mean, accuracy) -> dict:
    """The running {"loss", "accuracy"} of the epoch so far."""
    return {"loss": loss_mean.result(), "accuracy": accuracy.result()}


def _one_device_step(model, loss_mean, accuracy, config: TrainConfig):
    """`_fit_bptt`'s training step on one device: BPTT through the unrolled steps, the
    gradient clipped by global norm, the optimizer's update and the running metrics,
    which it returns (computed in its graph: a step called on its own, as an epoch's last
    batch is, needs no further op to read them)."""
    optimizer, loss_fn, clipnorm = model.optimizer, model.loss, config.clipnorm

    # Its own function, so that XLA compiles the step and not the loop that reads the
    # batches (`_steps_of_one_batch_size`), which XLA cannot compile.
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
        return _running(loss_mean, accuracy)

    return train_step


def _replicated_step(model, loss_mean, accuracy, config: TrainConfig):
    """`_fit_bptt`'s training step for a distributed batch of the model's strategy:
    each replica runs BPTT on its share of the global batch (`replica_gradients`), the
    optimizer sums the replicas' gradients and applies the sum on every replica, and the
    metrics' totals sum over the replicas, so that the step computes what one device
    computes on the whole batch."""
    strategy, optimizer = model.distribute_strategy, model.optimizer
    if not optimizer.built:  # its variables are made here, not inside the replicas
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    def replica_step(x, y):
        _, per_example, logits, grads = replica_gradients(model, x, y, config.clipnorm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduced
        loss_mean.update_state(per_example)
        accuracy.update_state(y, logits)

    # Called in `_steps_in_one_call`'s graph on the distributed iterator's batches, whose
    # batch dimension is unknown: one trace for every batch size (no XLA under a
    # strategy, see `TrainConfig`). An epoch's last batch may leave a replica no example,
    # and a trace for that static empty shape fails in Keras's LSTM cell.
    def train_step(x, y):
        strategy.run(replica_step, args=(x, y))

    return train_step


def replica_gradients(model: keras.Model, x, y, clipnorm: float | None):
    """One replica's share of a training step on the global batch, in a strategy's
    replica context (`strategy.run`).

    The loss is the replica's per-example cross-entropies summed and divided by the
    size of the global batch (`tf.nn.compute_average_loss`), so that the replicas' losses
    and gradients sum to the mean loss of the whole batch and its gradient. With
    `clipnorm`, each replica's gradient is scaled by the factor that clips the norm of
    that sum, as one device clips the whole batch's gradient: it costs one more
    all-reduce of the gradients, since the norm of a sum is not the sum of norms.

    Args:
        model: a classifier made in the strategy's scope.
        x: this replica's sequences [local batch, steps, features].
        y: their labels [local batch].
        clipnorm: see `TrainConfig`.

    Returns:
        (this replica's share of the loss, per-example losses [local batch], logits
        [local batch, classes], this replica's share of each gradient).
    """
    context = tf.distribute.get_replica_context()
    # The global batch's size, summed: an epoch's last batch may split unevenly.
    size = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
    with tf.GradientTape() as tape:
        logits = model(x, training=True)  # unrolls through all time steps
        per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=tf.cast(size, tf.int32))
    grads = tape.gradient(loss, model.trainable_variables)  # backprop through time
    if clipnorm is not None:
        norm = tf.linalg.global_norm(context.all_reduce(tf.distribute.ReduceOp.SUM, grads))
        grads = [g * (clipnorm / tf.maximum(norm, clipnorm)) for g in grads]
    return loss, per_example, logits, grads
