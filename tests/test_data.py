import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kerasrnn import data
from kerasrnn.config import DataConfig
from kerasrnn.errors import ConfigError, DataUnavailableError


@pytest.mark.parametrize(
    "view,shape", [("rows", (28, 28)), ("pixels", (784, 1)), ("permuted", (784, 1))]
)
def test_sample_elements_have_the_view_shape_dtype_and_range(view, shape):
    x, y = next(iter(data.mnist("test", source="sample", view=view, batch_size=32)))
    assert x.shape == (32, *shape) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_views_hold_the_same_pixels():
    rows = next(iter(data.mnist("test", source="sample", view="rows", batch_size=8)))[0].numpy()
    pixels = next(iter(data.mnist("test", source="sample", view="pixels", batch_size=8)))[0].numpy()
    permuted = next(iter(data.mnist("test", source="sample", view="permuted", batch_size=8)))[0]
    np.testing.assert_array_equal(rows.reshape(8, 784, 1), pixels)
    np.testing.assert_array_equal(np.sort(pixels, axis=1), np.sort(permuted.numpy(), axis=1))
    assert not np.array_equal(pixels, permuted.numpy())


def test_validation_is_carved_from_training_data_and_disjoint():
    config = DataConfig(source="sample")
    train, _ = data.load_arrays(config, "train")
    val, _ = data.load_arrays(config, "validation")
    full, _ = data.load_arrays(config, "train+validation")
    test, _ = data.load_arrays(config, "test")
    assert (len(train), len(val), len(full), len(test)) == (3600, 400, 4000, 1000)
    train_keys = {x.tobytes() for x in train}
    assert not train_keys & {x.tobytes() for x in val}
    assert not {x.tobytes() for x in full} & {x.tobytes() for x in test}


def test_training_split_is_reshuffled_each_epoch_and_test_is_not():
    ds = data.mnist("train", source="sample", batch_size=16)
    first = [next(iter(ds))[1].numpy() for _ in range(2)]
    assert not np.array_equal(*first)
    test = data.mnist("test", source="sample", batch_size=16)
    np.testing.assert_array_equal(next(iter(test))[1], next(iter(test))[1])


def test_every_example_is_seen_once_per_epoch():
    ds = data.mnist("train", source="sample", batch_size=100)
    assert sum(int(tf.shape(y)[0]) for _, y in ds) == 3600


def _moves(original: np.ndarray, augmented: np.ndarray, shift: int) -> list[tuple]:
    """Every (down, right, mirrored) move of `original` by at most `shift` pixels, the
    vacated border black, that gives `augmented`."""
    padded = {
        mirrored: np.pad(original[:, ::-1] if mirrored else original, shift)
        for mirrored in (False, True)
    }
    return [
        (down, right, mirrored)
        for down in range(-shift, shift + 1)
        for right in range(-shift, shift + 1)
        for mirrored in (False, True)
        if np.array_equal(
            padded[mirrored][shift - down : shift - down + 28, shift - right : shift - right + 28],
            augmented,
        )
    ]


def test_augmented_batches_are_the_same_images_moved_and_mirrored():
    plain = DataConfig(source="sample", batch_size=64, max_examples=256)
    augmented = dataclasses.replace(plain, shift=2, flip=True)
    images, labels = next(iter(data.epochs(plain, "train")(0)))
    moved, moved_labels = next(iter(data.epochs(augmented, "train")(0)))
    np.testing.assert_array_equal(labels, moved_labels)  # the same order, labels untouched
    moves = [_moves(a, b, 2) for a, b in zip(images.numpy(), moved.numpy())]
    assert all(moves), "an augmented image is no move of its original"
    assert {m[0][2] for m in moves} == {False, True}
    assert len({m[0][:2] for m in moves}) > 10  # moves drawn per image, not per batch
    again = next(iter(data.epochs(augmented, "train")(0)))[0]
    next_epoch = next(iter(data.epochs(augmented, "train")(1)))[0]
    np.testing.assert_array_equal(moved, again)  # the seeds and the epoch decide
    assert not np.array_equal(moved, next_epoch)


def test_augmentation_reaches_every_view_and_leaves_evaluation_data_alone():
    rows = DataConfig(source="sample", batch_size=32, max_examples=64, shift=1)
    moved = next(iter(data.epochs(rows, "train")(0)))[0].numpy()
    for view in ("pixels", "permuted"):
        other = next(iter(data.epochs(dataclasses.replace(rows, view=view), "train")(0)))[0]
        expected = next(
            iter(
                data.epochs(
                    DataConfig(source="sample", batch_size=32, max_examples=64, view=view), "train"
                )(0)
            )
        )[0]
        assert other.shape == (32, 784, 1)
        np.testing.assert_array_equal(
            np.sort(other.numpy(), axis=1), np.sort(moved.reshape(32, 784, 1), axis=1)
        )
        assert not np.array_equal(other, expected)
    for split in ("validation", "test"):
        np.testing.assert_array_equal(
            next(iter(data.pipeline(rows, split)))[0],
            next(iter(data.pipeline(dataclasses.replace(rows, shift=0), split)))[0],
        )


def test_idx_folder_reads_full_mnist(mnist_dir):
    images, labels = data.load_arrays(DataConfig(source="idx", data_dir=mnist_dir), "test")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).sum() == 10000


def test_idx_reads_uncompressed_files(tmp_path):
    from kerasrnn import idx

    images, labels = data.load_arrays(DataConfig(source="sample"), "test")
    idx.write(str(tmp_path / "t10k-images-idx3-ubyte"), images[:50])
    idx.write(str(tmp_path / "t10k-labels-idx1-ubyte"), labels[:50].astype(np.uint8))
    x, y = data.load_arrays(DataConfig(source="idx", data_dir=str(tmp_path)), "test")
    np.testing.assert_array_equal(x, images[:50])
    np.testing.assert_array_equal(y, labels[:50])


def test_idx_folder_without_files_names_the_missing_file(tmp_path):
    with pytest.raises(DataUnavailableError, match="no t10k-images-idx3-ubyte"):
        data.load_arrays(DataConfig(source="idx", data_dir=str(tmp_path)), "test")


def test_fashion_mnist_from_debian_package(fashion_dir):
    images, labels = data.load_arrays(DataConfig(source="idx", dataset="fashion_mnist"), "train")
    assert images.shape == (54000, 28, 28) and set(np.unique(labels)) == set(range(10))


def test_tfds_without_network_fails_fast_naming_alternatives(tmp_path):
    if data.network_available():
        pytest.skip("this machine reaches TFDS's download host")
    with pytest.raises(DataUnavailableError, match="no network.*manual_dir.*'idx'.*'sample'"):
        data.mnist("test", source="tfds", data_dir=str(tmp_path))


def test_auto_falls_back_to_the_sample_offline(caplog):
    if data.network_available():
        pytest.skip("this machine reaches TFDS's download host")
    assert data.resolve_source(DataConfig()) == "sample"
    assert "using the bundled sample" in caplog.text


def test_a_given_data_dir_means_that_folder(tmp_path):
    from kerasrnn import idx

    images, labels = data.load_arrays(DataConfig(source="sample"), "test")
    for prefix in ("train", "t10k"):
        idx.write(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), images[:30])
        idx.write(str(tmp_path / f"{prefix}-labels-idx1-ubyte.gz"), labels[:30].astype("uint8"))
    config = DataConfig(data_dir=str(tmp_path))  # source "auto", as `evaluate --data-dir`
    assert data.resolve_source(config) == "idx"
    assert len(data.load_arrays(config, "test")[1]) == 30  # not the sample's 1,000
    if not data.network_available():
        with pytest.raises(DataUnavailableError, match="holds neither the four IDX files"):
            data.resolve_source(DataConfig(data_dir=str(tmp_path / "empty")))


def test_tfds_pipeline_with_tfds_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        x, y = next(iter(data.mnist("test", source="tfds", batch_size=20)))
    assert x.shape == (20, 28, 28) and x.dtype == tf.float32 and y.dtype == tf.int32


def test_tfds_prepared_offline_from_the_original_files(tmp_path_factory, mnist_dir):
    config = DataConfig(
        source="tfds", data_dir=str(tmp_path_factory.mktemp("tfds")), manual_dir=mnist_dir
    )
    images, labels = data.load_arrays(config, "test")
    expected, expected_labels = data.load_arrays(
        DataConfig(source="idx", data_dir=mnist_dir), "test"
    )
    assert images.shape == (10000, 28, 28)
    # TFDS holds the same digits as the original files (in its own order).
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(expected_labels))
    np.testing.assert_allclose(images.mean(), expected.mean())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"source": "web"}, "source must be one of"),
        ({"view": "columns"}, "view must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \(0, 1\)"),
        ({"source": "sample", "dataset": "fashion_mnist"}, "sample holds MNIST only"),
        ({"shift": 28}, r"shift must be a whole number of pixels in \[0, 27\]"),
        ({"shift": 1.5}, r"shift must be a whole number of pixels in \[0, 27\]"),
        ({"flip": "yes"}, "flip must be True or False"),
    ],
)
def test_bad_data_config_is_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**kwargs)


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split must be one of"):
        data.mnist("dev", source="sample")
