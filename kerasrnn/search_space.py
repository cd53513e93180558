"""The hyperparameter search space, and users' narrowing of it (`--set`, `--range`)."""

from __future__ import annotations

import dataclasses
import math

from kerasrnn.cell_kinds import CELLS
from kerasrnn.config import ACTIVATIONS, MAX_SHIFT, SCHEDULES
from kerasrnn.errors import SearchSpaceError


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a list of values."""

    values: tuple


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric interval; `log` samples on a log scale, `step` quantizes integers."""

    low: float
    high: float
    log: bool = False
    step: int | None = None


# name: (default domain, value type, check of one value -> error text or None)
_SPACE = {
    "cell": (Choice(CELLS), str, lambda v: None if v in CELLS else f"must be one of {CELLS}"),
    "units": (Range(16, 128, step=16), int, lambda v: None if v >= 1 else "must be >= 1"),
    "layers": (Range(1, 2), int, lambda v: None if v >= 1 else "must be >= 1"),
    # a Dense(relu) before the logits (`ModelConfig.hidden`; 0: none)
    "hidden": (Choice((0,)), int, lambda v: None if v >= 0 else "must be >= 0 (0: none)"),
    # lmu's memory (`ModelConfig.memory_order`, `ModelConfig.theta`); theta 0: the sequence
    "memory_order": (Choice((256,)), int, lambda v: None if v >= 1 else "must be >= 1"),
    "theta": (
        Choice((0.0,)),
        float,
        lambda v: None if v >= 0 else "must be >= 0 steps (0: the whole sequence)",
    ),
    "dropout": (
        Choice((0.0, 0.1, 0.2)),
        float,
        lambda v: None if 0.0 <= v < 1.0 else "must be in [0, 1)",
    ),
    "activation": (
        Choice(("tanh",)),
        str,
        lambda v: None if v in ACTIVATIONS else f"must be one of {ACTIVATIONS}",
    ),
    "learning_rate": (
        Range(3e-4, 1e-2, log=True),
        float,
        lambda v: None if 0.0 < v < 1.0 else "must be in (0, 1)",
    ),
    "clipnorm": (Choice((1.0,)), float, lambda v: None if v > 0 else "must be positive"),
    "batch_size": (Choice((32, 64, 128)), int, lambda v: None if v >= 1 else "must be >= 1"),
    "schedule": (
        Choice(("constant",)),
        str,
        lambda v: None if v in SCHEDULES else f"must be one of {SCHEDULES}",
    ),
    "weight_decay": (Choice((0.0,)), float, lambda v: None if v >= 0.0 else "must be >= 0"),
    # The training images' augmentation (`DataConfig.shift`), in pixels.
    "shift": (
        Choice((0,)),
        int,
        lambda v: (
            None if 0 <= v <= MAX_SHIFT else f"must be a whole number of pixels in [0, {MAX_SHIFT}]"
        ),
    ),
}
NAMES = tuple(_SPACE)
# Ranges of these are sampled on a log scale (when they exclude 0).
_LOG_SCALE = ("learning_rate", "weight_decay")
# Ranges of these step by 16 (when both ends are multiples of 16).
_STEPS_OF_16 = ("units", "hidden", "memory_order")


def _value(name: str, text: str):
    kind, check = _SPACE[name][1], _SPACE[name][2]
    try:
        value = kind(text)
    except ValueError:
        raise SearchSpaceError(f"{name}={text!r}: expected {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise SearchSpaceError(f"{name}={text!r}: expected a finite number")
    problem = check(value)
    if problem:
        raise SearchSpaceError(f"{name}={value!r}: {name} {problem}")
    return value


def _name(text: str) -> str:
    if text not in _SPACE:
        raise SearchSpaceError(f"unknown hyperparameter {text!r}; known: {', '.join(NAMES)}")
    return text


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The default space with some hyperparameters fixed or narrowed.

    Args:
        domains: name -> a fixed value, a `Choice` or a `Range`, replacing the default.
    """

    domains: tuple = ()

    @classmethod
    def parse(cls, assignments: list[str] = (), ranges: list[str] = ()) -> SearchSpace:
        """Builds a space from CLI text: `--set cell=elman`, `--range units=32:256`,
        `--range cell=elman,gru` (a choice), `--range learning_rate=1e-4:1e-2` (log scale;
        weight_decay too, when its range excludes 0).

        Raises:
            SearchSpaceError: an unknown name, a value of the wrong type or out of bounds,
                an empty or inverted range.
        """
        domains = {}
        for text in [*assignments, *ranges]:
            if "=" not in text:
                raise SearchSpaceError(
                    f"{text!r}: expected NAME=VALUE (or NAME=LOW:HIGH, NAME=A,B)"
                )
            name, spec = text.split("=", 1)
            name = _name(name.strip())
            if name in domains:
                raise SearchSpaceError(f"{name} is given twice")
            domains[name] = cls._domain(name, spec.strip(), fixed=text in assignments)
        return cls(tuple(sorted(domains.items())))

    @staticmethod
    def _domain(name: str, spec: str, fixed: bool):
        if fixed:
            return _value(name, spec)
        if ":" in spec:
            if _SPACE[name][1] is str:
                raise SearchSpaceError(
                    f"{name}: a range needs numbers; use {name}=A,B for a choice"
                )
            low, high = (_value(name, part) for part in spec.split(":", 1))
            if low > high:
                raise SearchSpaceError(f"{name}={spec}: empty range, low {low} > high {high}")
            return Range(
                low,
                high,
                log=name in _LOG_SCALE and low > 0,
                step=16 if name in _STEPS_OF_16 and low % 16 == 0 and high % 16 == 0 else None,
            )
        values = tuple(_value(name, part) for part in spec.split(",") if part.strip())
        if not values:
            raise SearchSpaceError(f"{name}: empty choice")
        return Choice(values)

    def with_data_shift(self, shift: int) -> SearchSpace:
        """This space with `shift` fixed at a `DataConfig`'s (`tune --shift N`): the trials
        take their augmentation from the space.

        Raises:
            SearchSpaceError: the space sets shift too (two answers to one question).
        """
        if not shift:
            return self
        domains = dict(self.domains)
        if "shift" in domains:
            raise SearchSpaceError(
                f"shift is given twice: the data's shift={shift} (--shift) and the search "
                f"space's (--set/--range shift=...); give one"
            )
        domains["shift"] = shift
        return SearchSpace(tuple(sorted(domains.items())))

    def define(self, hp) -> dict:
        """Registers every hyperparameter on a `keras_tuner.HyperParameters`.

        Returns:
            name -> the value chosen for this trial.
        """
        overrides = dict(self.domains)
        values = {}
        for name in NAMES:
            domain = overrides.get(name, _SPACE[name][0])
            if isinstance(domain, Choice):
                values[name] = (
                    hp.Choice(name, list(domain.values))
                    if len(domain.values) > 1
                    else hp.Fixed(name, domain.values[0])
                )
            elif isinstance(domain, Range):
                if domain.low == domain.high:
                    values[name] = hp.Fixed(name, _SPACE[name][1](domain.low))
                elif _SPACE[name][1] is int:
                    values[name] = hp.Int(
                        name, int(domain.low), int(domain.high), step=domain.step or 1
                    )
                else:
                    values[name] = hp.Float(
                        name, domain.low, domain.high, sampling="log" if domain.log else "linear"
                    )
            else:
                values[name] = hp.Fixed(name, domain)
        return values
