"""Recipe options: learning-rate schedules and AdamW weight decay, from the config and the
command line to the optimizer, the saved model and the search space."""

import dataclasses

import keras
import keras_tuner as kt
import numpy as np
import pytest

from kerasrnn import cli, training
from kerasrnn.config import DataConfig, TrainConfig, TuneConfig
from kerasrnn.errors import ConfigError, SearchSpaceError
from kerasrnn.evaluation import load_model
from kerasrnn.hypermodel import RNNHyperModel
from kerasrnn.models import build_classifier
from kerasrnn.search_space import Choice, Range, SearchSpace

PEAK = 1e-3
# 10 epochs of 20 steps: 200 steps. cosine warms up over 5% (10 steps) from 0, onecycle
# over 30% (60 steps) from PEAK/25; both then follow a cosine to PEAK * their last factor.
STEPS_PER_EPOCH, EPOCHS = 20, 10


@pytest.mark.parametrize(
    "schedule,points",
    [
        (
            "cosine",
            {0: 0.0, 5: PEAK / 2, 10: PEAK, 105: PEAK / 2, 200: 0.0, 300: 0.0},
        ),
        (
            "onecycle",
            {
                0: PEAK / 25,
                60: PEAK,
                130: (PEAK + PEAK / 25e4) / 2,
                200: PEAK / 25e4,
                300: PEAK / 25e4,
            },
        ),
    ],
)
def test_schedule_passes_its_known_points(schedule, points):
    config = TrainConfig(epochs=EPOCHS, learning_rate=PEAK, schedule=schedule)
    rate = training.learning_rate(config, STEPS_PER_EPOCH)
    got = {step: float(rate(step)) for step in points}
    np.testing.assert_allclose(list(got.values()), list(points.values()), rtol=1e-5, atol=1e-12)


def test_constant_schedule_is_the_learning_rate():
    assert training.learning_rate(TrainConfig(learning_rate=PEAK, schedule="constant")) == PEAK


def test_schedule_without_steps_per_epoch_is_refused():
    with pytest.raises(ValueError, match="'cosine' schedule needs steps_per_epoch"):
        training.learning_rate(TrainConfig(schedule="cosine"))


def test_optimizer_reports_the_scheduled_rate_of_its_current_step():
    # What a per-epoch log of `optimizer.learning_rate` reads.
    config = TrainConfig(epochs=EPOCHS, learning_rate=PEAK, schedule="cosine")
    model = training.compile_model(build_classifier(units=8), config, STEPS_PER_EPOCH)
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(105)
    assert float(model.optimizer.learning_rate) == pytest.approx(PEAK / 2, rel=1e-5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_weight_decay_shrinks_weights_without_gradient(weight_decay):
    config = TrainConfig(learning_rate=0.01, schedule="constant", weight_decay=weight_decay)
    model = training.compile_model(build_classifier(units=8), config)
    assert type(model.optimizer) is (
        keras.optimizers.AdamW if weight_decay else keras.optimizers.Adam
    )
    before = [v.numpy() for v in model.trainable_variables]
    zeros = [np.zeros(v.shape, np.float32) for v in model.trainable_variables]
    model.optimizer.apply_gradients(zip(zeros, model.trainable_variables))
    # Adam's step is 0 without gradient; the decoupled decay is w -= rate * decay * w.
    for v, old in zip(model.trainable_variables, before):
        np.testing.assert_allclose(v.numpy(), old * (1 - 0.01 * weight_decay), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"schedule": "linear"}, "schedule must be one of"),
        ({"weight_decay": -0.1}, r"weight_decay must be >= 0 \(0: plain Adam\), got -0.1"),
        ({"weight_decay": float("nan")}, "weight_decay must be >= 0 .* got nan"),
        ({"weight_decay": True}, "weight_decay must be >= 0 .* got True"),
    ],
)
def test_bad_recipe_options_are_rejected(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_model_trained_with_a_schedule_and_weight_decay_saves_and_reloads(tmp_path):
    config = TrainConfig(epochs=2, schedule="onecycle", weight_decay=0.01)
    model = training.compile_model(build_classifier(units=8), config, steps_per_epoch=3)
    rng = np.random.default_rng(0)
    for _ in range(3):  # three steps, so the optimizer's state and step count are not new
        grads = [rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables]
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = load_model(path)
    assert type(loaded.optimizer) is keras.optimizers.AdamW
    assert loaded.optimizer.weight_decay == pytest.approx(0.01)
    assert int(loaded.optimizer.iterations) == 3
    assert float(loaded.optimizer.learning_rate) == float(model.optimizer.learning_rate)
    x = rng.random((4, 28, 28), np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))


def test_cli_flags_reach_the_train_config_and_its_defaults_are_the_recipe():
    args = cli.build_parser().parse_args(
        [
            "train",
            "--out",
            "run",
            "--schedule",
            "onecycle",
            "--weight-decay",
            "0.05",
            "--deterministic",
        ]
    )
    _, config = cli._train_configs(args)
    assert (config.schedule, config.weight_decay, config.deterministic) == ("onecycle", 0.05, True)
    _, default = cli._train_configs(cli.build_parser().parse_args(["train", "--out", "run"]))
    assert default == dataclasses.replace(TrainConfig(), verbose=default.verbose)
    recipe = (default.epochs, default.schedule, default.patience, default.weight_decay)
    assert recipe == (20, "cosine", None, 0.0)


def test_search_space_narrows_schedule_and_weight_decay():
    space = dict(
        SearchSpace.parse([], ["schedule=constant,cosine", "weight_decay=1e-5:1e-2"]).domains
    )
    assert space["schedule"] == Choice(("constant", "cosine"))
    assert space["weight_decay"] == Range(1e-5, 1e-2, log=True)
    linear = dict(SearchSpace.parse([], ["weight_decay=0:1e-2"]).domains)["weight_decay"]
    assert linear == Range(0.0, 1e-2, log=False)
    with pytest.raises(SearchSpaceError, match="schedule='linear': schedule must be one of"):
        SearchSpace.parse(["schedule=linear"])
    with pytest.raises(SearchSpaceError, match="weight_decay=-1.0: weight_decay must be >= 0"):
        SearchSpace.parse(["weight_decay=-1"])


def test_trial_model_gets_the_schedule_over_the_longest_trial():
    space = SearchSpace.parse(["schedule=cosine", "weight_decay=0.01", "batch_size=64"])
    data = DataConfig(source="sample", max_examples=128)  # 115 training digits: 2 batches
    model = RNNHyperModel(space, data, TuneConfig(max_epochs=3)).build(kt.HyperParameters())
    assert type(model.optimizer) is keras.optimizers.AdamW
    schedule = model.optimizer._learning_rate  # the schedule object, not today's value
    assert schedule.warmup_steps + schedule.decay_steps == 2 * 3
