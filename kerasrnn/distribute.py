"""Training on several devices: the `tf.distribute` strategy that `TrainConfig.strategy`
names, and what a run under it needs (which process writes the run folder, a one-device
copy of the model for scoring).

    none          one device, no strategy (the default)
    mirrored      `tf.distribute.MirroredStrategy` on this machine's GPUs (`devices` of
                  them), or on its CPU split into `devices` logical devices
    multi-worker  `tf.distribute.MultiWorkerMirroredStrategy` across the processes that
                  the TF_CONFIG environment variable names, each on its GPUs or its CPU

Both are synchronous data parallelism: every replica holds the weights, reads its share
of each batch, and the gradients are summed across replicas before each update. The
strategy is made first in a process: logical devices and collective ops must be set up
before TensorFlow starts its devices, and cannot change afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile

import keras
import tensorflow as tf

from kerasrnn.config import TrainConfig
from kerasrnn.errors import ConfigError, RunFolderError

log = logging.getLogger(__name__)

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy | None:
    """The strategy `config.strategy` names, or None for "none".

    Call it before anything else runs TensorFlow in the process (`training_run.train`
    does, first). A process makes one strategy of each kind and reuses it: collective
    ops are configured once.

    Raises:
        ConfigError: more devices than this machine has, TensorFlow already started with
            fewer CPU devices than asked for, or a missing or malformed TF_CONFIG.
    """
    if config.strategy == "none":
        return None
    if config.strategy == "mirrored":
        return _mirrored(config.devices)
    return _multi_worker(_cluster_task(os.environ.get("TF_CONFIG")))


@functools.cache
def _mirrored(devices: int | None) -> tf.distribute.MirroredStrategy:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = devices or len(gpus)
        if count > len(gpus):
            raise ConfigError(
                f"devices={count} (--devices), but this machine has {len(gpus)} GPU(s): "
                f"ask for at most {len(gpus)}"
            )
        names = [f"/gpu:{i}" for i in range(count)]
    else:
        names = _cpu_devices(devices or 1)
    strategy = tf.distribute.MirroredStrategy(names)
    log.info("training on %d replicas: %s", strategy.num_replicas_in_sync, ", ".join(names))
    return strategy


def _cpu_devices(count: int) -> list[str]:
    """The names of `count` logical CPU devices, splitting the CPU into as many when
    TensorFlow has not started its devices yet.

    Raises:
        ConfigError: TensorFlow has started with fewer CPU devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    if count > 1:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * count
            )
        except RuntimeError:  # TensorFlow has started: its devices are fixed now
            pass
    names = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(names) < count:
        raise ConfigError(
            f"devices={count} (--devices): TensorFlow has already started in this process "
            f"with {len(names)} CPU device(s), and cannot split the CPU into {count} any "
            f"more; train in a new process, before anything else runs TensorFlow"
        )
    return names[:count]


def _cluster_task(tf_config: str | None) -> tuple[str, int, int]:
    """Checks TF_CONFIG, the multi-worker strategy's cluster description.

    Returns:
        (this task's type, its index, the number of tasks).

    Raises:
        ConfigError: TF_CONFIG is missing, not JSON, or names no task of its cluster.
    """
    how = f"set TF_CONFIG on every worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}'"
    if not tf_config:
        raise ConfigError(
            f"strategy 'multi-worker' (--strategy multi-worker) reads its cluster from the "
            f"TF_CONFIG environment variable, which is not set: {how}"
        )
    try:
        parsed = json.loads(tf_config)
        cluster, task = parsed["cluster"], parsed["task"]
        task_type, index = task["type"], task["index"]
        tasks = {name: list(cluster.get(name, ())) for name in ("chief", "worker")}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"TF_CONFIG is not a cluster and task ({type(e).__name__}: {e}) in {tf_config!r}: {how}"
        ) from None
    if len(tasks["chief"]) > 1 or not any(tasks.values()):
        raise ConfigError(
            f"TF_CONFIG's cluster must list workers (and at most one chief), got {cluster!r}: {how}"
        )
    if task_type not in tasks or not isinstance(index, int) or index < 0:
        raise ConfigError(
            f"TF_CONFIG's task must be a 'worker' or the 'chief' with an index, got {task!r}: {how}"
        )
    if index >= len(tasks[task_type]):
        raise ConfigError(
            f"TF_CONFIG's task is {task_type} {index}, but its cluster lists "
            f"{len(tasks[task_type])} {task_type}(s): {cluster!r}"
        )
    return task_type, index, sum(len(hosts) for hosts in tasks.values())


@functools.cache
def _multi_worker(task: tuple[str, int, int]) -> tf.distribute.MultiWorkerMirroredStrategy:
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"strategy 'multi-worker' cannot start ({e}): make it first in a new process, "
            f"before anything else runs TensorFlow"
        ) from None
    task_type, index, count = task
    log.info(
        "training as %s %d of %d workers, %d replicas in all",
        task_type,
        index,
        count,
        strategy.num_replicas_in_sync,
    )
    return strategy


def scope(strategy: tf.distribute.Strategy | None):
    """`strategy.scope()`, or a context that does nothing for None: the model and its
    optimizer are made in it, so that their variables are mirrored on every replica."""
    return strategy.scope() if strategy else contextlib.nullcontext()


def model_strategy(model: keras.Model) -> tf.distribute.Strategy | None:
    """The strategy `model` was made under (see `scope`), or None."""
    with model.distribute_strategy.scope():
        return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes the run folder: every process but a multi-worker
    run's workers other than the chief (TF_CONFIG's "chief", or worker 0 without one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_folder() -> str:
    """A new temporary folder, the run folder of a worker other than the chief: every
    worker saves what the chief saves, as TensorFlow's multi-worker guide advises (a save
    may need every worker), each into its own folder. `train` deletes it at the end."""
    return tempfile.mkdtemp(prefix="kerasrnn-worker-")


def check_workers_agree(strategy: tf.distribute.Strategy | None, epoch: int, path: str) -> None:
    """Checks that every worker of a multi-worker run resumes `path` from the same epoch.

    A worker that cannot read the chief's run folder would start over while the others
    resume, and the collective steps would then wait for each other for ever.

    Raises:
        RunFolderError: the workers resume from different epochs.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    epochs = strategy.gather(strategy.run(lambda: tf.constant([epoch], tf.int64)), axis=0)
    found = sorted(set(epochs.numpy().tolist()))
    if len(found) > 1:
        raise RunFolderError(
            f"the workers resume {path} from different epochs ({found}): every worker "
            f"must see the chief's run folder at the same path (a shared file system) "
            f"to resume"
        )


def local_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` with its weights, outside any strategy, on this process's
    default device.

    Scoring reads it: under a `MirroredStrategy`, Keras's `predict_on_batch` runs the
    whole batch on every replica and concatenates their outputs (two replicas: every
    row twice). Call it outside `strategy.scope()`.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
