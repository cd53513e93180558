"""The tree's promises: dependencies follow the data flow, one cell table, one error family."""

import ast
import glob
import importlib.metadata
import inspect
import os

import pytest
from conftest import REPO

from kerasrnn import errors
from kerasrnn.cell_kinds import CELL_KINDS

# What export/ may never import: the stages upstream of it that train or search.
TRAINING_SIDE = (
    "kerasrnn.training",
    "kerasrnn.training_run",
    "kerasrnn.rundir",
    "kerasrnn.hypermodel",
    "kerasrnn.tuning",
    "kerasrnn.tuning_results",
    "kerasrnn.pipeline",
    "kerasrnn.cli",
)


def _imported_modules(path: str) -> set[str]:
    """Every module a file imports, at its top or inside functions."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(REPO, "export", "*.py"))), ids=os.path.basename
)
def test_export_imports_neither_training_nor_tuning(path):
    imported = _imported_modules(path)
    assert not {m for m in imported if m.startswith(TRAINING_SIDE)}


@pytest.mark.parametrize("module", ["runtime", "integrity"])
def test_the_device_side_imports_only_numpy_litert_and_the_standard_library(module):
    imported = _imported_modules(os.path.join(REPO, "export", f"{module}.py"))
    roots = {name.split(".")[0] for name in imported}
    stdlib = {
        "__future__",
        "hashlib",  # the files' digests
        "json",  # the class names in a file's metadata
        "logging",
        "math",
        "os",
        "signal",
        "struct",
        "subprocess",  # loading every model file in a child process first
        "sys",
    }
    assert roots <= stdlib | {"numpy", "ai_edge_litert", "kerasrnn"}
    ours = {m for m in imported if m.startswith("kerasrnn") and "errors" not in m}
    assert ours <= {
        # the configuration's vocabulary: the standard library only
        "kerasrnn.config",
        "kerasrnn.config.check_choice",
        "kerasrnn.config.check_positive",
        "kerasrnn.export.config",
        "kerasrnn.export.config.RUNTIME_KERNELS",
        "kerasrnn.export.integrity",
        *(
            f"kerasrnn.export.integrity.{name}"
            for name in (
                "MALFORMED",
                "check_model",
                "probe",
                "read_checked",
                "read_model_file",
                "verify_digest",
                "xnnpack_failure",
            )
        ),
    }


def test_every_error_the_package_defines_is_a_kerasrnn_error():
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert len(classes) >= 10
    assert all(issubclass(c, errors.KerasRnnError) for c in classes)


def test_the_cli_offers_every_cell_kind_and_the_config_defaults():
    from kerasrnn.cli import build_parser
    from kerasrnn.config import ModelConfig, TrainConfig

    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x"])
    assert (args.cell, args.units, args.epochs, args.learning_rate) == (
        ModelConfig.cell,
        ModelConfig.units,
        TrainConfig.epochs,
        TrainConfig.learning_rate,
    )
    for name in CELL_KINDS:
        assert parser.parse_args(["train", "--cell", name, "--out", "x"]).cell == name
    with pytest.raises(SystemExit):  # argparse refuses a name outside the table
        parser.parse_args(["train", "--cell", "transformer", "--out", "x"])


def test_flatbuffer_table_sharing_runs_on_the_versions_it_was_checked_against():
    # `export.flatbuffer` overrides `Pack` of the generated schema classes to write
    # identical tables once; it also checks every file against a plain pack. A new
    # generator version must be checked again before it is allowed here.
    assert importlib.metadata.version("ai-edge-litert").startswith("2.")
    assert importlib.metadata.version("flatbuffers").split(".")[0] in ("24", "25")


def test_help_shows_every_default_and_version_is_printed():
    import re
    import subprocess
    import sys

    import kerasrnn

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "kerasrnn", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    assert run("--version").strip() == f"kerasrnn {kerasrnn.__version__}"
    text = " ".join(run("train", "--help").split())  # unwrap argparse's line breaks
    for flag, default in (
        ("--units", 64),
        ("--epochs", 20),
        ("--learning-rate", 0.002),
        ("--schedule", "cosine"),
        ("--cell", "elman"),
        ("--batch-size", 64),
        ("--clipnorm", 1.0),
    ):
        assert re.search(rf"{flag} \S+ .*?\(default: {re.escape(str(default))}\)", text), flag
