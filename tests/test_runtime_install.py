"""The device install: the `runtime` extra's packages, then kerasrnn itself with --no-deps, in
a fresh virtual environment. No TensorFlow gets in, `kerasrnn predict` gives the labels that
`Classifier` gives here, and the commands that need TensorFlow say so in one line."""

import configparser
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kerasrnn.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What pip prints when it cannot reach the package index: the test skips, saying so.
UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, "setup.cfg"))
    return parser


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip() and line[:1] != "#"]


def _clean_env() -> dict[str, str]:
    """This environment without what would let the venv see the checkout or this venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(args: list[str], cwd, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _pip(venv: str, *args: str) -> None:
    """`pip install ARGS` with the venv's own pip; skips when the index cannot be reached."""
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--no-input"]
    result = _run([*pip, "--retries", "1", "--timeout", "30", *args], venv, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"pip cannot reach the package index: pip install {' '.join(args)}")
    if result.returncode != 0:
        raise AssertionError(f"pip install {' '.join(args)} failed:\n{output}")


def _copy_of_the_tree(target: str) -> str:
    """The files a build reads (the top-level files and the packages' folders): building
    in the checkout would leave build/ and *.egg-info there."""
    os.makedirs(target)
    for entry in os.scandir(REPO):
        if entry.is_file():
            shutil.copy2(entry.path, target)
    package_dir = _lines(_setup_cfg()["options"]["package_dir"])  # "kerasrnn.export = export"
    for folder in {line.split("=")[1].strip() for line in package_dir}:
        shutil.copytree(
            os.path.join(REPO, folder),
            os.path.join(target, folder),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return target


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv (no system site packages) holding the documented device install:
    `pip install <the runtime extra>`, then `pip install --no-deps <the checkout>`.
    Returns the venv's bin folder."""
    root = tmp_path_factory.mktemp("device")
    venv = str(root / "venv")
    _run([sys.executable, "-m", "venv", venv], root)
    _pip(venv, *_lines(_setup_cfg()["options.extras_require"]["runtime"]))
    # A build without isolation needs the build backend in the venv; a fresh venv rarely
    # has a recent enough one (pyproject.toml: setuptools>=68 and wheel).
    has_backend = _run(
        [
            os.path.join(venv, "bin", "python"),
            "-c",
            "import importlib.metadata as m; import wheel; "
            "raise SystemExit(int(m.version('setuptools').split('.')[0]) < 68)",
        ],
        root,
        check=False,
    )
    isolation = ["--no-build-isolation"] if has_backend.returncode == 0 else []
    _pip(venv, *isolation, "--no-deps", _copy_of_the_tree(str(root / "checkout")))
    return os.path.join(venv, "bin")


@pytest.fixture(scope="module")
def int8_model(exported):
    """The session's elman-64 exported to int8: the file a device gets."""
    return exported["elman", "int8"].path


@pytest.fixture(scope="module")
def digits():
    """20 of the sample's test digits, uint8 [20, 28, 28]."""
    from kerasrnn.config import DataConfig
    from kerasrnn.data import load_arrays

    return load_arrays(DataConfig(source="sample"), "test")[0][:20]


def _labels(stdout: str) -> list[int]:
    """The digits of `kerasrnn predict`'s lines ("0: digit 7 (98.1%)")."""
    return [int(line.split()[2]) for line in stdout.strip().splitlines()]


def test_runtime_install_has_no_tensorflow(venv, tmp_path):
    for module in ("tensorflow", "keras"):
        result = _run([os.path.join(venv, "python"), "-c", f"import {module}"], tmp_path, False)
        assert result.returncode == 1
        assert f"No module named '{module}'" in result.stderr


def test_predict_in_runtime_install_matches_classifier(venv, int8_model, digits, tmp_path):
    from PIL import Image

    from kerasrnn.export.runtime import Classifier

    expected = Classifier(int8_model).predict(digits).argmax(1).tolist()
    assert len(set(expected)) >= 5  # a model that tells digits apart, not one constant label
    kerasrnn = os.path.join(venv, "kerasrnn")
    np.save(tmp_path / "digits.npy", digits)
    Image.fromarray(digits[0]).save(tmp_path / "digit.png")
    Image.fromarray(255 - digits[1]).save(tmp_path / "ink_on_paper.png")  # inverted back
    predicted = {
        name: _labels(_run([kerasrnn, "predict", int8_model, name], tmp_path).stdout)
        for name in ("digits.npy", "digit.png", "ink_on_paper.png")
    }
    assert predicted == {
        "digits.npy": expected,
        "digit.png": expected[:1],
        "ink_on_paper.png": expected[1:2],
    }


def test_version_and_predict_help_in_runtime_install(venv, tmp_path):
    import kerasrnn

    kerasrnn_script = os.path.join(venv, "kerasrnn")
    version = _run([kerasrnn_script, "--version"], tmp_path)
    assert version.stdout == f"kerasrnn {kerasrnn.__version__}\n" and version.stderr == ""
    help_text = _run([kerasrnn_script, "predict", "--help"], tmp_path)
    assert help_text.stdout.startswith("usage: kerasrnn predict") and help_text.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "sample", "--out", "run"],
        ["evaluate", "model.keras"],
        ["export", "model.keras", "--out", "model.tflite"],
        ["tune", "--out", "search"],
    ],
    ids=lambda args: args[0],
)
def test_commands_needing_tensorflow_say_so_in_one_line(venv, tmp_path, args):
    result = _run([os.path.join(venv, "kerasrnn"), *args], tmp_path, check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"kerasrnn: error: kerasrnn {args[0]} needs TensorFlow")
    assert "pip install ." in line
    assert not os.listdir(tmp_path)  # refused before it wrote anything


def test_image_file_without_pillow_says_how_to_install(digits, tmp_path, monkeypatch):
    from PIL import Image

    from kerasrnn.images import load_images

    Image.fromarray(digits[0]).save(tmp_path / "digit.png")
    np.save(tmp_path / "digits.npy", digits)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    with pytest.raises(DataError, match="needs Pillow, which is not installed: pip install"):
        load_images(str(tmp_path / "digit.png"))
    assert load_images(str(tmp_path / "digits.npy")).shape == (20, 28, 28)  # NumPy only


def test_predict_without_litert_is_one_line(digits, tmp_path):
    np.save(tmp_path / "digits.npy", digits)
    code = (
        "import sys\nsys.modules['ai_edge_litert'] = None\n"
        "from kerasrnn.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "predict", "model.tflite", "digits.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line == (
        "kerasrnn: error: kerasrnn predict needs the LiteRT runtime, which is not installed: "
        "pip install ai-edge-litert"
    )
