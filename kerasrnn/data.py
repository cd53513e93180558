"""MNIST-format data sources as `tf.data` pipelines.

Every source yields the same elements: `(float32 [steps, features] in [0, 1], int32 label)`,
where the view decides the sequence shape: `rows` is [28, 28] (28 steps of one image row),
`pixels` is [784, 1] (sequential MNIST) and `permuted` is [784, 1] in a fixed pixel order.

Sources:
    sample  real MNIST digits shipped inside the package (4,000 train / 1,000 test).
    idx     a folder holding the four standard IDX files, gzipped or not.
    tfds    TensorFlow Datasets (`mnist`, `fashion_mnist`); offline from a folder of the
            original files through `manual_dir`.
    auto    TFDS when prepared or downloadable, otherwise the sample.
    npz     the user's own labelled sequences of any shape (`kerasrnn.sequences`), read as
            they are: elements `(float32 [steps, features], int32 label)`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading

import numpy as np
import tensorflow as tf

from kerasrnn import idx
from kerasrnn._io import file_sha256
from kerasrnn.config import FASHION_MNIST_DIR, SPLITS, VIEWS, DataConfig, check_choice
from kerasrnn.errors import DataError, DataUnavailableError
from kerasrnn.sequences import Sequences, load_npz

log = logging.getLogger(__name__)

SAMPLE_DIR = os.path.join(os.path.dirname(__file__), "sample")
# The pixel order of the permuted view: fixed, so that every run reads the same sequences.
_PERMUTATION = np.random.default_rng(92916).permutation(784)
_SHUFFLE_BUFFER = 16384
_TFDS_HOST = ("storage.googleapis.com", 443)


def network_available(timeout: float = 1.0) -> bool:
    """Whether TFDS's download host answers within `timeout` seconds (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection(_TFDS_HOST, timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)  # DNS look-ups ignore the socket timeout; cap them here
    return bool(result)


def _tfds():
    """The tensorflow_datasets module, imported on first use: it takes seconds to import,
    and only the `tfds` source needs it.

    Raises:
        DataUnavailableError: it cannot be imported.
    """
    try:
        import tensorflow_datasets
    except ImportError as e:  # e.g. its undeclared importlib_resources dependency
        raise DataUnavailableError(f"tensorflow-datasets cannot be imported: {e}") from None
    return tensorflow_datasets


def _tfds_builder(config: DataConfig):
    return _tfds().builder(config.dataset, data_dir=config.data_dir)


def resolve_source(config: DataConfig) -> str:
    """Turns `auto` into a concrete source, logging the choice in one line.

    A given `data_dir` means that folder: the IDX files in it, or TFDS's data there.

    Raises:
        DataUnavailableError: `data_dir` holds neither, or no source is available.
    """
    if config.source != "auto":
        return config.source
    if config.data_dir and _holds_idx_files(config.data_dir):
        return "idx"
    if config.manual_dir or _tfds_builder(config).is_prepared() or network_available():
        return "tfds"
    if config.data_dir:
        raise DataUnavailableError(
            f"data_dir (--data-dir) {config.data_dir} holds neither the four IDX files nor "
            f"a prepared TFDS {config.dataset!r}, and there is no network to download it"
        )
    if config.dataset == "mnist":
        log.warning(
            "TFDS 'mnist' is not prepared and there is no network: using the bundled sample"
        )
        return "sample"
    if os.path.isdir(FASHION_MNIST_DIR):
        log.warning(
            "TFDS %r is not prepared and there is no network: reading IDX files", config.dataset
        )
        return "idx"
    raise DataUnavailableError(
        f"no source for {config.dataset!r}: TFDS is not prepared and there is no network; "
        f"install Debian's dataset-fashion-mnist, or pass data_dir (--data-dir), a folder "
        f"with the four IDX files"
    )


def _holds_idx_files(folder: str) -> bool:
    """Whether `folder` holds the four IDX files of a dataset."""
    try:
        for prefix in ("train", "t10k"):
            _idx_paths(folder, prefix)
    except DataUnavailableError:
        return False
    return True


def _idx_paths(folder: str, prefix: str) -> tuple[str, str]:
    """Finds `{prefix}-images-idx3-ubyte[.gz]` and the labels file in `folder`."""
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        names = [f"{prefix}-{kind}-ubyte{ext}" for ext in ("", ".gz")]
        names += [f"{prefix}-{kind.replace('-', '.')}-ubyte{ext}" for ext in ("", ".gz")]
        found = [os.path.join(folder, n) for n in names if os.path.exists(os.path.join(folder, n))]
        if not found:
            raise DataUnavailableError(f"{folder}: no {names[0]} or {names[1]} found")
        paths.append(found[0])
    return paths[0], paths[1]


def _idx_folder(config: DataConfig) -> str:
    if config.source == "sample" or (config.source == "auto" and config.data_dir is None):
        return SAMPLE_DIR
    if config.data_dir:
        folder = config.data_dir
    elif config.dataset == "fashion_mnist":
        folder = FASHION_MNIST_DIR
    else:
        raise DataUnavailableError(
            "source 'idx' needs data_dir (--data-dir), a folder with the four IDX files"
        )
    if not os.path.isdir(folder):
        how = (
            "data_dir (--data-dir)"
            if config.data_dir
            else "Debian's dataset-fashion-mnist installs it; or pass data_dir (--data-dir)"
        )
        raise DataUnavailableError(f"IDX folder {folder} does not exist ({how})")
    return folder


def _split_indices(n: int, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of the training set cut into (train, validation) indices."""
    order = np.random.default_rng(config.seed).permutation(n)
    n_val = max(1, round(n * config.validation_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def labelled_sequences(path: str) -> Sequences:
    """The sequences of a .npz file (`sequences.load_npz`) with labels of two classes or more.

    Raises:
        DataError: the file fails `load_npz`'s checks, holds float targets (kerasrnn trains,
            tunes and scores classifiers) or a single class.
    """
    if not os.path.isfile(path):
        load_npz(path)  # raises its DataError naming the path
    status = os.stat(path)
    data = _load_npz(os.path.abspath(path), status.st_mtime_ns, status.st_size)
    if data.y.dtype.kind != "i":
        raise DataError(
            f"{path}: y holds float targets (regression); kerasrnn trains, tunes and scores "
            f"classifiers (int labels): train a regression model in Keras, and `kerasrnn "
            f"export --npz` exports it"
        )
    if _classes(data) < 2:
        raise DataError(f"{path}: every label is 0; a classifier needs two classes or more")
    return data


@functools.lru_cache(maxsize=2)
def _load_npz(path: str, mtime_ns: int, size: int) -> Sequences:
    """`load_npz`, once per file version (a run reads each split and the shape from it)."""
    return load_npz(path)


def _classes(data: Sequences) -> int:
    """The number of classes of labelled sequences: their largest label + 1."""
    return int(max(data.y.max(), -1 if data.y_test is None else data.y_test.max())) + 1


def lacks_test_split(config: DataConfig) -> bool:
    """Whether the data is a .npz without x_test/y_test, whose test split is then the
    validation split (see `load_arrays`)."""
    return config.source == "npz" and labelled_sequences(config.npz).x_test is None


def recorded_settings(config: DataConfig, digest: str | None = None) -> dict:
    """The data settings as a run or search folder records them (config.json,
    search.json): the config's fields and, for a .npz, its SHA-256, so that a folder
    resumes only on the data it began with.

    Args:
        config: the data.
        digest: `npz_sha256(config)` when the caller has it (None: read here).
    """
    return {**dataclasses.asdict(config), "npz_sha256": digest or npz_sha256(config)}


def npz_sha256(config: DataConfig) -> str | None:
    """The SHA-256 of the config's .npz file, as hex; None for the other sources."""
    return file_sha256(config.npz) if config.source == "npz" else None


def model_shape(config: DataConfig) -> dict:
    """The `ModelConfig` fields that fit a model to the data: for source `npz`, its
    sequences' `steps` and `features` and its `classes` (the largest label + 1); none for
    MNIST, whose views give the shape.

    Raises:
        DataError: see `labelled_sequences`.
    """
    if config.source != "npz":
        return {}
    data = labelled_sequences(config.npz)
    return {"steps": data.x.shape[1], "features": data.x.shape[2], "classes": _classes(data)}


def _npz_split(config: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of a .npz's sequences: train and validation carved from x, y as from
    MNIST's training images; test is x_test, y_test, or the validation split when the
    file holds none (`training_run.train` says so)."""
    data = labelled_sequences(config.npz)
    if split == "test" and data.x_test is not None:
        return data.x_test, data.y_test
    if split == "train+validation":
        return data.x, data.y
    keep = _split_indices(len(data.y), config)[split != "train"]
    return data.x[keep], data.y[keep]


def load_arrays(config: DataConfig, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Loads one split as NumPy arrays (for calibration, verification, plots).

    Args:
        config: the data configuration (`view` and `batch_size` are ignored).
        split: one of `SPLITS`.

    Returns:
        (uint8 images [n, 28, 28], int32 labels [n]); for source `npz`, (float32 sequences
        [n, steps, features], int32 labels [n]).
    """
    check_choice("split", split, SPLITS)
    source = resolve_source(config)
    if source == "npz":
        images, labels = _npz_split(config, split)
    elif source == "tfds":
        images, labels = [], []
        for x, y in _tfds_split(config, split).batch(4096).as_numpy_iterator():
            images.append(x.reshape(-1, 28, 28))
            labels.append(y)
        images, labels = np.concatenate(images), np.concatenate(labels)
    else:
        folder = _idx_folder(dataclasses.replace(config, source=source))
        images, labels = idx.read_pair(*_idx_paths(folder, "t10k" if split == "test" else "train"))
        if split in ("train", "validation"):
            keep = _split_indices(len(labels), config)[split == "validation"]
            images, labels = images[keep], labels[keep]
    if config.max_examples:
        images, labels = images[: config.max_examples], labels[: config.max_examples]
    return images, labels.astype(np.int32)


def load_sequences(config: DataConfig, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Loads one split as the model reads it: MNIST's images in `config.view`, scaled to
    [0, 1] as `pipeline` makes them, or a .npz's sequences as they are.

    Returns:
        (float32 sequences [n, steps, features], int32 labels [n]).
    """
    x, labels = load_arrays(config, split)
    if x.dtype == np.uint8:
        x = _to_view(tf.constant(x, tf.float32) / 255.0, config.view).numpy()
    return x, labels


def _tfds_split(config: DataConfig, split: str) -> tf.data.Dataset:
    """TFDS's own pipeline for `split`, preparing it offline from `manual_dir` if given."""
    builder = _tfds_builder(config)
    percent = round(100 * config.validation_fraction)
    tfds_split = {
        "train": f"train[{percent}%:]",
        "validation": f"train[:{percent}%]",
        "train+validation": "train",
        "test": "test",
    }[split]
    try:
        return builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)
    except AssertionError:  # TFDS's way of saying "not prepared in data_dir"
        pass
    if config.manual_dir:
        log.info("preparing TFDS %r from %s", config.dataset, config.manual_dir)
        builder.download_and_prepare(
            download_config=_tfds().download.DownloadConfig(manual_dir=config.manual_dir)
        )
    elif network_available():
        builder.download_and_prepare()
    else:
        raise DataUnavailableError(
            f"TFDS {config.dataset!r} is not prepared in {builder.data_dir} and there is no "
            f"network: pass manual_dir (--manual-dir), a folder with the original IDX "
            f"files; or use source='idx' (--data idx) with data_dir (--data-dir); or "
            f"source='sample' (--data sample)"
        )
    return builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)


def view_function(view: str):
    """The map function (uint8 image, label) -> (float32 [steps, features], int32 label)."""
    check_choice("view", view, VIEWS)

    def convert(image, label):
        x = tf.cast(tf.reshape(image, [28, 28]), tf.float32) / 255.0
        return _to_view(x, view), tf.cast(label, tf.int32)

    return convert


def _to_view(images: tf.Tensor, view: str) -> tf.Tensor:
    """float32 images [..., 28, 28] as the sequences of `view`: [..., steps, features]."""
    if view == "rows":
        return images
    pixels = tf.reshape(images, tf.concat([tf.shape(images)[:-2], [784]], axis=0))
    if view == "permuted":
        pixels = tf.gather(pixels, _PERMUTATION, axis=-1)
    return pixels[..., None]


def augment_function(config: DataConfig, seed: int):
    """The map function that augments one training batch (see `DataConfig.shift`/`flip`).

    Args:
        config: its `shift`, `flip` and `view`.
        seed: the epoch's seed; with the batch's index it seeds stateless draws, so that an
            epoch's augmentation depends only on the seeds (a resumed run repeats it).

    Returns:
        A function (int64 batch index, (float32 images [batch, 28, 28], labels)) ->
        (float32 [batch, steps, features] of `config.view`, labels).
    """
    shift = config.shift

    def augment(index, batch):
        images, labels = batch
        seeds = tf.stack([tf.constant(seed, tf.int64), index])
        shift_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
        n = tf.shape(images)[0]
        if shift:
            moves = tf.random.stateless_uniform(
                [n, 2], shift_seed, minval=-shift, maxval=shift + 1, dtype=tf.int32
            )
            padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift]])
            # Output pixel (r, c) reads padded (r + shift - move_r, c + shift - move_c).
            rows = shift - moves[:, :1] + tf.range(28)
            cols = shift - moves[:, 1:] + tf.range(28)
            images = tf.gather(padded, rows, axis=1, batch_dims=1)
            images = tf.gather(images, cols, axis=2, batch_dims=1)
        if config.flip:
            mirror = tf.random.stateless_uniform([n], flip_seed) < 0.5
            images = tf.where(mirror[:, None, None], tf.reverse(images, axis=[2]), images)
        return _to_view(images, config.view), labels

    return augment


def pipeline(
    config: DataConfig, split: str = "train", shuffle: bool | None = None
) -> tf.data.Dataset:
    """Builds the batched, cached, prefetched `tf.data.Dataset` for one split.

    Args:
        config: see `DataConfig`.
        split: one of `SPLITS`; `validation` is carved from the training data.
        shuffle: reshuffle every epoch (default: for the training splits only).

    Returns:
        Dataset of `(float32 [batch, steps, features], int32 [batch])`.
    """
    check_choice("split", split, SPLITS)
    if shuffle is None:
        shuffle = split in ("train", "train+validation")
    ds = _examples(config, split)
    if shuffle:
        ds = ds.shuffle(_SHUFFLE_BUFFER, seed=config.seed, reshuffle_each_iteration=True)
    return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def epochs(config: DataConfig, split: str = "train"):
    """The batches of one split epoch by epoch, for training (see `training.fit`).

    A dataset that reshuffles itself draws each epoch's order from a generator that
    advances whenever an iterator is made, so the order of an epoch depends on how many
    iterators came before it: a resumed run, or Keras `fit` (which makes one more per
    epoch), would see other batches. Here the order depends only on the seeds (this
    config's and TensorFlow's global seed, which training sets) and the epoch, and so
    does the augmentation of `config.shift` and `config.flip` (see `augment_function`).

    Args:
        config: see `DataConfig`.
        split: one of `SPLITS`.

    Returns:
        A function of the epoch (an int, 0-based) giving that epoch's shuffled
        `(float32 [batch, steps, features], int32 [batch])` batches; every epoch reads
        the same cached examples.
    """
    check_choice("split", split, SPLITS)
    augmenting = config.shift or config.flip
    # Augmentation moves pixels of the image: it reads the rows view and makes the view after.
    examples = _examples(dataclasses.replace(config, view="rows") if augmenting else config, split)

    def batches(epoch: int) -> tf.data.Dataset:
        seed = int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
        shuffled = examples.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=False)
        batched = shuffled.batch(config.batch_size)
        if augmenting:
            augment = augment_function(config, seed)
            batched = batched.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return batched

    return batches


def _examples(config: DataConfig, split: str) -> tf.data.Dataset:
    """The examples of one split, converted to the view and cached, in file order."""
    if resolve_source(config) == "tfds":
        ds = _tfds_split(config, split)
        if config.max_examples:
            ds = ds.take(config.max_examples)
    else:
        ds = tf.data.Dataset.from_tensor_slices(load_arrays(config, split))
        if config.source == "npz":  # sequences, not images: no view
            return ds.cache()
    return ds.map(view_function(config.view), num_parallel_calls=tf.data.AUTOTUNE).cache()


def mnist(split: str = "train", shuffle: bool | None = None, **options) -> tf.data.Dataset:
    """The one-call entry point: `mnist("test", source="sample", batch_size=256)`.

    Args:
        split: one of `SPLITS`.
        shuffle: see `pipeline`.
        **options: fields of `DataConfig` (source, dataset, data_dir, view, ...).

    Returns:
        Dataset of `(float32 [batch, steps, features], int32 [batch])`.
    """
    return pipeline(DataConfig(**options), split, shuffle)
