"""The C arrays `kerasrnn export --c-array` writes for firmware: named after their file,
holding its bytes, and documenting what firmware needs (arena, operators, quantization,
state); checked against LiteRT, TensorFlow Lite Micro and the host's compilers."""

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse

import hostile
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from conftest import REPO

from kerasrnn.config import DataConfig
from kerasrnn.errors import ConfigError, MicroError
from kerasrnn.export import convert, flatbuffer, micro
from kerasrnn.export.c_text import identifier as c_identifier
from kerasrnn.export.config import ExportConfig
from kerasrnn.export.firmware_build import resolver_methods
from kerasrnn.export.integrity import verify_digest
from kerasrnn.export.micro import resolver_method, run_micro, write_c_array
from kerasrnn.export.runtime import Stream
from kerasrnn.export.workflow import export_model
from kerasrnn.models import build_classifier

TFLM_DIR = os.path.join(os.path.dirname(REPO), "shared", "tflm")
SAMPLE = DataConfig(source="sample", max_examples=100)


@pytest.fixture(scope="module")
def exports(sample_runs, tmp_path_factory):
    """Two exports of the session's elman-64 into one folder, as `kerasrnn export --target
    micro` makes them: int8 with its streaming step model, and float32, each with
    --c-array."""
    folder = tmp_path_factory.mktemp("c_arrays")
    model = os.path.join(sample_runs["elman"].run_dir, "model.keras")
    int8 = export_model(
        model,
        str(folder / "elman64_int8.tflite"),
        ExportConfig("int8", target="micro", stream=True, c_array=True),
        SAMPLE,
    )
    float32 = export_model(
        model, str(folder / "elman64.tflite"), ExportConfig(target="micro", c_array=True), SAMPLE
    )
    return {"folder": folder, "int8": int8, "float32": float32}


def tflite(exports, stem: str) -> str:
    return str(exports["folder"] / f"{stem}.tflite")


def array_bytes(source: str) -> bytes:
    """The bytes of the first array a generated .cc defines, parsed back from its hex."""
    with open(source) as f:
        text = f.read()
    body = text[text.index("[] = {") + 6 : text.index("};")]
    return bytes(int(v, 16) for v in body.split(","))


def header(exports, stem: str) -> str:
    with open(exports["folder"] / f"{stem}.h") as f:
        return f.read()


def defines(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#define (\w+) (.*)$", text, re.MULTILINE))


def prose(text: str) -> str:
    """A header's comments as one line of text."""
    return " ".join(line[3:] for line in text.splitlines() if line.startswith("// "))


STEMS = ("elman64_int8", "elman64_int8.step", "elman64")


@pytest.mark.parametrize("stem", STEMS)
def test_c_array_holds_the_files_bytes(exports, stem):
    source = exports["folder"] / f"{stem}.cc"
    with open(tflite(exports, stem), "rb") as f:
        content = f.read()
    assert array_bytes(source) == content
    name = c_identifier(f"{stem}.tflite")
    text = source.read_text()
    assert f"alignas(16) const unsigned char {name}[] = {{" in text
    assert f"const unsigned int {name}_len = {len(content)};" in text
    assert f"extern const unsigned int {name}_len;" in header(exports, stem)


def test_c_arrays_are_named_after_their_file(exports):
    folder = exports["folder"]
    _, _, extras = exports["int8"]
    assert extras["c_array"] == [str(folder / "elman64_int8.h"), str(folder / "elman64_int8.cc")]
    assert extras["stream_c_array"] == [
        str(folder / "elman64_int8.step.h"),
        str(folder / "elman64_int8.step.cc"),
    ]
    assert "extern const unsigned char elman64_int8_tflite[];" in header(exports, "elman64_int8")
    assert "#define ELMAN64_INT8_STEP_TFLITE_ARENA_BYTES" in header(exports, "elman64_int8.step")


@pytest.mark.parametrize(
    "file_name,identifier",
    [
        ("elman64_int8.tflite", "elman64_int8_tflite"),
        ("elman64_int8.step.tflite", "elman64_int8_step_tflite"),
        ("my-model v2.tflite", "my_model_v2_tflite"),
        ("64units.tflite", "model_64units_tflite"),
    ],
)
def test_array_names_are_c_identifiers_like_xxd_makes(file_name, identifier):
    assert c_identifier(file_name) == identifier


def test_two_exports_into_one_folder_give_two_distinct_pairs(exports):
    written = sorted(p.name for p in exports["folder"].iterdir() if p.suffix in (".h", ".cc"))
    assert written == sorted(f"{stem}{ext}" for stem in STEMS for ext in (".h", ".cc"))
    contents = {array_bytes(exports["folder"] / f"{stem}.cc") for stem in STEMS}
    assert len(contents) == 3


@pytest.mark.parametrize("stem", ["elman64_int8", "elman64"])
def test_header_gives_the_arena_tflm_measures(exports, test_digits, stem):
    arena = run_micro(tflite(exports, stem), test_digits[0][:1]).arena_bytes
    assert defines(header(exports, stem))[f"{c_identifier(stem).upper()}_TFLITE_ARENA_BYTES"] == (
        str(arena)
    )
    _, report, _ = exports["int8" if "int8" in stem else "float32"]
    assert report.micro["arena_bytes"] == arena


@pytest.mark.parametrize("stem", ["elman64_int8", "elman64_int8.step"])
def test_resolver_snippet_lists_exactly_the_models_operators(exports, stem):
    # LiteRT's own reading of the (control-flow free) graph, not the package's
    interpreter = Interpreter(model_path=tflite(exports, stem))
    operators = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    text = header(exports, stem)
    listed = re.findall(r"^//   resolver\.(\w+)\(\);$", text, re.MULTILINE)
    assert listed == [resolver_method(op) for op in operators]
    assert f"MicroMutableOpResolver<{len(operators)}> resolver;" in text
    assert defines(text)[f"{c_identifier(stem).upper()}_TFLITE_OPERATOR_COUNT"] == str(
        len(operators)
    )


@pytest.mark.skipif(not os.path.isdir(TFLM_DIR), reason=f"no TFLM tree in {TFLM_DIR}")
def test_resolver_methods_are_tflms_own():
    methods = resolver_methods(TFLM_DIR)
    assert len(methods) > 90
    assert {op: resolver_method(op) for op in methods} == {
        op: method for op, (method, _) in methods.items()
    }


@pytest.mark.parametrize("stem", ["elman64_int8", "elman64_int8.step"])
def test_header_quantization_is_what_litert_reports(exports, stem):
    interpreter = Interpreter(model_path=tflite(exports, stem))
    text, prefix = header(exports, stem), c_identifier(f"{stem}.tflite").upper()
    macros = defines(text)
    for kind, details in (
        ("input", interpreter.get_input_details()),
        ("output", interpreter.get_output_details()),
    ):
        for position, detail in enumerate(details):
            scale, zero_point = detail["quantization"]
            assert scale > 0, detail  # an int8 file's interface is quantized
            name = f"{prefix}_{kind.upper()}{position}"
            assert np.float32(macros[f"{name}_SCALE"].rstrip("f")) == np.float32(scale)
            assert macros[f"{name}_ZERO_POINT"] == f"({zero_point})"
            shape = [int(d) for d in detail["shape"]]
            assert (
                f'{kind} {position} "{detail["name"]}": {np.dtype(detail["dtype"]).name} '
                f"{shape}, scale {np.float32(scale):.9g}, zero point {zero_point}"
            ) in text


def test_streaming_c_array_documents_its_state(exports):
    path = tflite(exports, "elman64_int8.step")
    initial = Stream(path).initial_state
    text = header(exports, "elman64_int8.step")
    assert defines(text)["ELMAN64_INT8_STEP_TFLITE_STATE_SIZE"] == str(len(initial))
    assert "extern const float elman64_int8_step_tflite_initial_state[" in text
    words = prose(text)
    assert 'Before each new sequence, reset the state: set input 1 "state" to' in words
    assert 'give output 1 "state" back as the next state input' in words
    with open(exports["folder"] / "elman64_int8.step.cc") as f:
        source = f.read()
    body = source[source.index("initial_state[") :]
    values = re.findall(r"(-?[\d.]+(?:e[-+]\d+)?)f", body[body.index("{") : body.index("}")])
    np.testing.assert_array_equal(np.array(values, np.float32), initial)
    assert "No variable tensors" in words


@pytest.mark.slow  # a conversion of its own: 10-16 s on 2 cores
def test_fused_lstm_header_says_to_reset_its_variable_tensors(tmp_path):
    path = str(tmp_path / "lstm.tflite")
    written = convert.to_tflite(build_classifier(cell="lstm", units=4), path)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in written.operators
    header_path, _ = write_c_array(path)
    with open(header_path) as f:
        text = f.read()
    assert "firmware must reset them before each new sequence" in prose(text)
    assert "MicroInterpreter::Reset()" in text
    assert int(defines(text)["LSTM_TFLITE_VARIABLE_TENSORS"]) > 0
    assert "resolver.AddUnidirectionalSequenceLSTM();" in text


def test_header_keeps_the_files_digest(exports):
    path = tflite(exports, "elman64_int8")
    with open(path, "rb") as f:
        digest = verify_digest(f.read(), path)
    text = header(exports, "elman64_int8")
    assert f"// SHA-256: {digest}\n" in text
    assert defines(text)["ELMAN64_INT8_TFLITE_SHA256"] == f'"{digest}"'


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++ to compile the arrays")
def test_arrays_compile_and_link_into_one_program(exports, tmp_path):
    """All three pairs in one program: no clashing names, and what it reads is the files'."""
    folder = exports["folder"]
    names = [c_identifier(f"{stem}.tflite") for stem in STEMS]
    lines = ["#include <cstdint>", "#include <cstdio>"]
    lines += [f'#include "{stem}.h"' for stem in STEMS]
    lines += ["int main() {"]
    for name in names:
        lines += [
            "  {",
            "    unsigned long sum = 0;",
            f"    for (unsigned i = 0; i < {name}_len; ++i) sum += {name}[i];",
            f'    std::printf("%u %lu %u\\n", {name}_len, sum,',
            f"                static_cast<unsigned>(reinterpret_cast<uintptr_t>({name}) % 16));",
            "  }",
        ]
    lines += ["  return 0;", "}"]
    (tmp_path / "main.cc").write_text("\n".join(lines) + "\n")
    program = str(tmp_path / "arrays")
    sources = [str(tmp_path / "main.cc"), *(str(folder / f"{stem}.cc") for stem in STEMS)]
    compile_ = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            str(folder),
            *sources,
            "-o",
            program,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compile_.returncode == 0, compile_.stderr
    printed = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    expected = []
    for stem in STEMS:
        with open(tflite(exports, stem), "rb") as f:
            content = f.read()
        expected.append(f"{len(content)} {sum(content)} 0")
    assert printed.splitlines() == expected
    for stem in STEMS:  # the headers are C too
        if shutil.which("gcc"):
            c = subprocess.run(
                [
                    "gcc",
                    "-x",
                    "c",
                    "-std=c11",
                    "-fsyntax-only",
                    "-Wall",
                    "-Werror",
                    str(folder / f"{stem}.h"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert c.returncode == 0, c.stderr


@pytest.mark.skipif(
    shutil.which("g++") is None or not os.path.isdir(TFLM_DIR),
    reason=f"needs the host g++ and a TFLM tree in {TFLM_DIR}",
)
def test_resolver_macro_compiles_against_tflm(exports, tmp_path):
    lines = ['#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"']
    lines += [f'#include "{stem}.h"' for stem in STEMS]
    for i, stem in enumerate(STEMS):
        macro = c_identifier(f"{stem}.tflite").upper()
        lines += [
            f"bool AddOperators{i}() {{",
            f"  static tflite::MicroMutableOpResolver<{macro}_OPERATOR_COUNT> resolver;",
            f'  static_assert({macro}_ARENA_BYTES > 0, "measured arena");',
            f"  return {macro}_ADD_OPERATORS(resolver);",
            "}",
        ]
    (tmp_path / "use.cc").write_text("\n".join(lines) + "\n")
    includes = ["", "third_party/flatbuffers/include", "third_party/gemmlowp", "third_party/ruy"]
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", "-Werror", "-DTF_LITE_STATIC_MEMORY"]
        + [f"-I{os.path.join(TFLM_DIR, i)}" for i in includes]
        + ["-I", str(exports["folder"]), str(tmp_path / "use.cc")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# What an export refuses. Copies of the session's files; arena_bytes spares TFLM.


def test_a_file_kerasrnn_did_not_write_is_never_replaced(exports, tmp_path):
    shutil.copy(tflite(exports, "elman64"), tmp_path / "m.tflite")
    (tmp_path / "m.cc").write_text("int main() { return 0; }\n")
    with pytest.raises(ConfigError, match=r"m\.cc exists and was not written by kerasrnn"):
        write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    assert (tmp_path / "m.cc").read_text() == "int main() { return 0; }\n"
    assert not (tmp_path / "m.h").exists()
    write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024, overwrite=True)
    assert array_bytes(tmp_path / "m.cc") == (tmp_path / "m.tflite").read_bytes()


def test_another_files_c_array_is_never_replaced_but_its_own_is(exports, tmp_path):
    shutil.copy(tflite(exports, "elman64"), tmp_path / "m.tflite")
    shutil.copy(tflite(exports, "elman64_int8"), tmp_path / "m.lite")  # also m.h/.cc
    write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    with pytest.raises(ConfigError, match=r"m\.h exists and holds the C array of 'm\.tflite'"):
        write_c_array(str(tmp_path / "m.lite"), arena_bytes=1024)
    assert array_bytes(tmp_path / "m.cc") == (tmp_path / "m.tflite").read_bytes()
    # a new export of m.tflite replaces m.tflite, and its C array with it
    shutil.copy(tflite(exports, "elman64_int8"), tmp_path / "m.tflite")
    write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    assert array_bytes(tmp_path / "m.cc") == (tmp_path / "m.tflite").read_bytes()


@pytest.mark.parametrize("stem", ["m", "m.step"])
def test_export_refuses_before_converting(sample_runs, tmp_path, stem):
    (tmp_path / f"{stem}.h").write_text("// the firmware's own header\n")
    model = os.path.join(sample_runs["elman"].run_dir, "model.keras")
    config = ExportConfig(stream=True, c_array=True)
    with pytest.raises(ConfigError, match=rf"{re.escape(stem)}\.h exists and was not written"):
        export_model(model, str(tmp_path / "m.tflite"), config, SAMPLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.h"]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"quantization": "float16"}, "quantization 'float16'"),
        ({"quantization": "dynamic"}, "quantization 'dynamic'"),
        ({"batch_size": None}, "got batch size None"),
    ],
)
def test_c_arrays_only_for_files_tflm_runs(kwargs, message):
    with pytest.raises(
        ConfigError, match=f"c_array needs a file TensorFlow Lite Micro runs.*{message}"
    ):
        ExportConfig(c_array=True, **kwargs)


# Hostile names (tests/hostile.py): a C array carries a name only as a safe form.


def _compile_c_array(header_path: str, source_path: str, tmp_path) -> str:
    """Compiles a C array's source (which includes its header) to an object; returns it."""
    obj = str(tmp_path / "array.o")
    result = subprocess.run(
        ["g++", "-std=c++17", "-Werror", "-c", source_path, "-o", obj],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return obj


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++ to compile the arrays")
@pytest.mark.parametrize("name", hostile.TENSOR_NAMES, ids=range(len(hostile.TENSOR_NAMES)))
def test_a_tensor_name_never_becomes_code_in_a_c_array(exports, tmp_path, name):
    with open(tflite(exports, "elman64_int8"), "rb") as f:
        (tmp_path / "m.tflite").write_bytes(hostile.with_input_name(f.read(), name))
    header_path, source_path = write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    obj = _compile_c_array(header_path, source_path, tmp_path)
    assert hostile.injected([obj], [source_path], [str(tmp_path)]) == []
    macros = subprocess.run(
        ["g++", "-std=c++17", "-dM", "-E", header_path], capture_output=True, text=True, check=True
    ).stdout
    for macro in ("INPUT0_SCALE", "OUTPUT0_ZERO_POINT", "ARENA_BYTES", "VARIABLE_TENSORS"):
        assert f"#define M_TFLITE_{macro} " in macros  # no line swallowed by a splice
    with open(header_path) as f:
        described = re.search(r'^//   input 0 "(.*)": int8', f.read(), re.MULTILINE)
    assert urllib.parse.unquote(described.group(1)) == name  # said, as a safe form


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++ to compile the arrays")
@pytest.mark.parametrize("name", hostile.FILE_NAMES, ids=range(len(hostile.FILE_NAMES)))
def test_a_file_name_never_becomes_code_and_is_never_included(exports, tmp_path, name):
    path = tmp_path / f"{name}.tflite"
    shutil.copy(tflite(exports, "elman64_int8"), path)
    # firmware's use: the C array under names of its own
    header_path, source_path = write_c_array(
        str(path), str(tmp_path), "g_model", stem="model_data", arena_bytes=1024
    )
    obj = _compile_c_array(header_path, source_path, tmp_path)
    assert hostile.injected([obj], [source_path], [str(tmp_path)]) == []
    # export's use: the pair named after the file, which C cannot #include by that name
    with pytest.raises(ConfigError, match=r"cannot be #included by C: it holds"):
        write_c_array(str(path), arena_bytes=1024)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [path.name, "model_data.h", "model_data.cc", "array.o"]
    )


def test_export_refuses_a_c_array_name_that_c_cannot_include(sample_runs, tmp_path):
    model = os.path.join(sample_runs["elman"].run_dir, "model.keras")
    with pytest.raises(ConfigError, match=r"""'q"uote\.h' cannot be #included by C"""):
        export_model(model, str(tmp_path / 'q"uote.tflite'), ExportConfig(c_array=True), SAMPLE)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++ to compile the arrays")
def test_a_header_and_source_of_different_exports_do_not_compile(exports, tmp_path):
    shutil.copy(tflite(exports, "elman64"), tmp_path / "m.tflite")
    header_path, source_path = write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    old_header = (tmp_path / "m.h").read_text()
    shutil.copy(tflite(exports, "elman64_int8"), tmp_path / "m.tflite")
    write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    (tmp_path / "m.h").write_text(old_header)
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", source_path], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "header and source come from different exports: export again" in result.stderr


_WRITE_PAIR = """
import sys
from kerasrnn.export.micro import write_c_array
write_c_array(sys.argv[1], arena_bytes=1024)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace injects the kill")
@pytest.mark.skipif(shutil.which("g++") is None, reason="no host g++ to compile the arrays")
def test_a_kill_between_the_pairs_moves_is_caught_and_repaired(exports, tmp_path):
    shutil.copy(tflite(exports, "elman64"), tmp_path / "m.tflite")
    write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)
    shutil.copy(tflite(exports, "elman64_int8"), tmp_path / "m.tflite")
    killed = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=rename,renameat,renameat2"]
        + ["-e", "inject=rename,renameat,renameat2:signal=SIGKILL:when=1"]
        + ["-P", str(tmp_path / ".tmp-m.h"), sys.executable, "-c", _WRITE_PAIR]
        + [str(tmp_path / "m.tflite")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), killed.stderr[-2000:]
    # the new source beside the old header: they refuse to compile together
    assert array_bytes(tmp_path / "m.cc") == (tmp_path / "m.tflite").read_bytes()
    torn = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", str(tmp_path / "m.cc")], capture_output=True
    )
    assert torn.returncode != 0
    write_c_array(str(tmp_path / "m.tflite"), arena_bytes=1024)  # the next export repairs it
    _compile_c_array(str(tmp_path / "m.h"), str(tmp_path / "m.cc"), tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_tflm_on_a_loop_that_never_ends_is_stopped_at_its_limit(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(micro, "CHILD_SECONDS", 3.0)
    monkeypatch.setattr(micro, "CHILD_SECONDS_PER_IMAGE", 1.0)
    with open(tflite(exports, "elman64"), "rb") as f:  # the float file loops
        model = flatbuffer.unpack(f.read())
    hostile.endless_loop(model)
    path = tmp_path / "endless.tflite"
    path.write_bytes(hostile.resealed(model))
    with pytest.raises(MicroError, match=rf"TensorFlow Lite Micro hung on {re.escape(str(path))}"):
        run_micro(str(path), np.zeros((2, 28, 28), np.float32))
