"""Loading a saved classifier and scoring logits: what training, tuning and export share."""

from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
import zlib

import keras
import numpy as np
import tensorflow as tf

import kerasrnn.cells  # noqa: F401 - registers the package's layers, for load_model
from kerasrnn import data
from kerasrnn.config import VIEWS, DataConfig
from kerasrnn.errors import ConfigError, ModelFileError

# A .keras file is a zip of JSON and HDF5 weights, which compress little; a zip bomb
# inflates a thousandfold. Refuse archives that inflate beyond this.
_MAX_INFLATION = 100
_MAX_SMALL_ARCHIVE = 1 << 24  # any archive may hold this much (16 MiB)
_CHUNK = 1 << 16  # the most bytes the check reads or inflates at a time
# A member's local header: its signature, then the lengths of its name and extra field.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


def _check_archive(path: str) -> None:
    """Checks that a `.keras` zip inflates to no more than a model's weights could, before
    Keras decompresses anything.

    The sizes are counted from the members' data as it inflates, in bounded chunks, never
    taken from the headers, which a hostile file can make say anything: Python's zipfile
    trusts them, and inflates a whole bzip2 or LZMA chunk at once before it cuts the
    result to the size they state.

    Raises:
        ModelFileError: the archive inflates to far more than a model's weights could,
            or a member is compressed otherwise than Keras writes (stored or deflated).
    """
    size = os.path.getsize(path)
    limit = max(_MAX_INFLATION * size, _MAX_SMALL_ARCHIVE)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a readable zip: Keras's own error says what is wrong with it
    with archive, open(path, "rb") as f:
        inflated = 0
        for member in archive.infolist():
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                method = zipfile.compressor_names.get(member.compress_type, "an unknown method")
                raise ModelFileError(
                    f"{path}: {member.filename} is compressed with {method}, which Keras "
                    f"never writes (it stores or deflates): not a .keras model, refused unread"
                )
            try:
                inflated += _member_size(f, member, limit - inflated)
            except (zipfile.BadZipFile, OSError, struct.error, zlib.error):
                return  # a damaged member: Keras's own error says what is wrong with it
            if inflated > limit:
                raise ModelFileError(
                    f"{path}: the archive inflates to more than {limit:,} bytes from "
                    f"{size:,}: not a .keras model, refused before loading"
                )


def _member_size(f, member: zipfile.ZipInfo, budget: int) -> int:
    """The bytes a zip member's data gives, counted as it inflates from the archive `f`,
    up to a little past `budget` (the caller refuses beyond it)."""
    f.seek(member.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {member.filename}")
    f.seek(name_length + extra_length, os.SEEK_CUR)
    if member.compress_type == zipfile.ZIP_STORED:  # what zipfile reads: at most the file
        return min(member.compress_size, os.fstat(f.fileno()).st_size - f.tell())
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    while not inflater.eof and total <= budget:
        data = inflater.unconsumed_tail or f.read(_CHUNK)
        if not data:  # the file ends inside the stream
            break
        total += len(inflater.decompress(data, _CHUNK))
    return total


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` classifier (the package's layers are registered on import).

    Raises:
        ModelFileError: the file is missing, inflates like a zip bomb, or is not a
            loadable `.keras` model.
    """
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path} does not exist")
    _check_archive(path)
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ModelFileError(f"{path} is not a loadable .keras model: {e}") from None


def model_view(model: keras.Model, requested: str = "rows") -> str:
    """The view a classifier reads: the one it was built for (its input is named
    `sequence_{view}`), or, for a model saved before kerasrnn kept it, the one its input
    shape gives ((784, 1) is `pixels` unless `requested` says `permuted`).

    Args:
        model: a classifier from `build_classifier`.
        requested: the view asked for; "rows", the default, asks for nothing.

    Raises:
        ConfigError: another view than the model's was asked for.
        ModelFileError: no view gives sequences of the model's input shape.
    """
    stored = model.inputs[0].name.removeprefix("sequence_")
    if stored in VIEWS:
        if requested not in ("rows", stored):
            raise ConfigError(
                f"the model reads {stored} sequences, not {requested}: pass "
                f"view={stored!r} (--view {stored}), or none"
            )
        return stored
    shape = tuple(model.input_shape[1:])
    if shape == (28, 28):
        return "rows"
    if shape == (784, 1):
        return "permuted" if requested == "permuted" else "pixels"
    raise ModelFileError(
        f"model {model.name!r} reads sequences of shape {shape}, which no view gives: give "
        f"it its own data (npz, --npz)"
    )


def scores(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy of logits [n, classes] against labels [n].

    Returns:
        {"loss": float, "accuracy": float}.
    """
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


def evaluate(model: keras.Model, dataset: tf.data.Dataset) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a logits model over a dataset (see `scores`)."""
    return scores(*predict_logits(model, dataset))


def evaluate_file(model_path: str, data_config: DataConfig) -> dict:
    """Loads a saved classifier and scores it on the test split.

    The digits are read in the model's own view (see `model_view`); a .npz's sequences
    (source "npz") as they are, its test split as training made it (`data.load_arrays`).

    Returns:
        {"loss": float, "accuracy": float, "examples": int}.

    Raises:
        DataError: the .npz's sequences or labels do not fit the model.
    """
    model = load_model(model_path)
    if data_config.source == "npz":
        sequences = data.labelled_sequences(data_config.npz)
        sequences.check_model(tuple(model.input_shape[1:]), model.output_shape[-1])
    else:
        data_config = dataclasses.replace(data_config, view=model_view(model, data_config.view))
    labels, logits = predict_logits(model, data.pipeline(data_config, "test"))
    return {**scores(labels, logits), "examples": len(labels)}
