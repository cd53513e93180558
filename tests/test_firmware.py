"""Firmware: int8 models compiled with TensorFlow Lite Micro for the Cortex-M boards, run under
QEMU, give the Python TFLM interpreter's output bytes on every embedded digit, with TFLM's
reference kernels and with CMSIS-NN's (bit-exact with them, in fewer instructions), and count
the instructions of each inference exactly.

Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib and
qemu-system-arm, and the TFLM tree in ../shared/tflm; skips, saying which is missing, without them.
"""

import dataclasses
import os

import hostile
import numpy as np
import pytest

import kerasrnn
from kerasrnn.errors import ConfigError, FirmwareError, ModelFileError
from kerasrnn.export import c_text, firmware, firmware_build, flatbuffer, integrity, to_tflite
from kerasrnn.export.config import FirmwareConfig
from kerasrnn.export.firmware import build_firmware, check_tools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFLM_DIR = os.path.join(os.path.dirname(REPO), "shared", "tflm")
SAMPLE = kerasrnn.DataConfig(source="sample", max_examples=1000)
DIGITS = 20
# The largest difference from LiteRT, in output quantization steps. The int16-activation
# Elman graph agrees exactly on these 20 digits, but not always (elman-64: 1 step on 5 of 100
# digits); the fused LSTM's int8 kernels round differently in the two runtimes.
LITERT_STEPS = {"elman": 1, "lstm": 3}


@pytest.fixture(scope="module")
def object_cache():
    """The user's TFLM object cache (None: ~/.cache/kerasrnn/tflm, as `kerasrnn firmware`
    uses it), so that each target's TFLM build is paid for once per machine, not once per
    test run; skips when the toolchain, QEMU or the TFLM tree is missing, before any
    training."""
    try:
        check_tools(FirmwareConfig(tflm_dir=TFLM_DIR))
    except FirmwareError as e:
        pytest.skip(str(e))
    return None


def config(target: str, cache: str, kernels: str = "reference") -> FirmwareConfig:
    return FirmwareConfig(
        tflm_dir=TFLM_DIR, target=target, digits=DIGITS, cache_dir=cache, kernels=kernels
    )


@pytest.fixture(scope="module")
def test_images():
    images, _ = kerasrnn.load_arrays(SAMPLE, "test")
    return images[:DIGITS]


@pytest.fixture(scope="module")
def int8_files(object_cache, tmp_path_factory):
    """(kind, "sequence" | "stream") -> int8 .tflite of small models trained 2 epochs; kind
    "elman-int8" is the Elman model's graph with int8 activations."""
    import keras

    calibration, _ = kerasrnn.load_arrays(SAMPLE, "train+validation")
    calibration = calibration[:500].astype(np.float32) / 255.0
    folder = tmp_path_factory.mktemp("firmware-models")
    files = {}
    for kind in ("elman", "lstm"):  # the Elman graph with int16 activations, the fused LSTM
        keras.utils.set_random_seed(0)
        model = kerasrnn.train(
            kerasrnn.ModelConfig(cell=kind, units=16),
            SAMPLE,
            kerasrnn.TrainConfig(epochs=2, verbose=0),
            str(folder / f"run-{kind}"),
        ).model
        files[kind, "sequence"] = to_tflite(
            model, str(folder / f"{kind}.tflite"), "int8", calibration, target="micro"
        ).path
        if kind == "elman":
            files["elman-int8", "sequence"] = to_tflite(
                model, str(folder / "elman-int8.tflite"), "int8", calibration, activations="int8"
            ).path
            files[kind, "stream"] = to_tflite(
                model,
                str(folder / f"{kind}.step.tflite"),
                "int8",
                calibration,
                stream=True,
                target="micro",
            ).path
    return files


# cortex-m33 compiles TFLM once more with its own flags (a minute on a cold cache) for the
# same kernels: `make test-slow` runs it; every board's counter runs by default (systick).
@pytest.mark.parametrize(
    "target", ["cortex-m3", pytest.param("cortex-m33", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("kind", ["elman", "lstm"])
def test_firmware_output_bytes_equal_python_tflm(
    int8_files, test_images, object_cache, tmp_path, kind, target
):
    result = build_firmware(
        int8_files[kind, "sequence"],
        str(tmp_path / "fw"),
        config(target, object_cache),
        test_images,
    )
    micro, litert = result.agreement
    assert micro.reference == "TFLM (Python)" and micro.exact == micro.digits == DIGITS
    assert litert.max_diff <= LITERT_STEPS[kind]
    assert result.outputs.shape == (DIGITS, 10)
    assert 0 < result.arena_used_bytes <= result.arena_bytes
    assert 0 < result.flash_bytes < 200 * 1024 and 0 < result.ram_bytes < 64 * 1024
    assert os.path.isfile(tmp_path / "fw" / "report.json")


@pytest.mark.parametrize("kind", ["elman", "elman-int8", "lstm"])
def test_cmsis_nn_firmware_is_bit_exact_with_reference_in_fewer_instructions(
    int8_files, test_images, object_cache, tmp_path, kind
):
    """Cortex-M4 (DSP extension): CMSIS-NN's FULLY_CONNECTED (int16 and int8 activations; the
    int8 input projection takes the glue's conv 1x1 path), its fused LSTM and the int8 TANH
    table give the reference kernels' output bytes on every digit, in fewer instructions."""
    results = {
        kernels: build_firmware(
            int8_files[kind, "sequence"],
            str(tmp_path / kernels),
            config("cortex-m4", object_cache, kernels),
            test_images,
        )
        for kernels in ("reference", "cmsis-nn")
    }
    reference, cmsis = results["reference"], results["cmsis-nn"]
    assert (reference.kernels, cmsis.kernels) == ("reference", "cmsis-nn")
    expected = {  # the int8-activation step is one FULLY_CONNECTED of [x_t, h] (no ADD)
        "elman": {"ADD", "FULLY_CONNECTED"},
        "elman-int8": {"FULLY_CONNECTED"},
        "lstm": {"UNIDIRECTIONAL_SEQUENCE_LSTM"},
    }
    assert expected[kind] <= set(cmsis.cmsis_nn_operators) <= set(cmsis.operators)
    # the glue's kernels of the one input type the model has, so the others are not linked
    typed = {"elman": "INT16", "elman-int8": "INT8", "lstm": "INT8"}[kind]
    main = (tmp_path / "cmsis-nn" / "main.cc").read_text()
    assert f"tflite::Register_FULLY_CONNECTED_{typed}()" in main
    # int8 TANH as a table of TFLM's own kernel (the int16 graph's TANH runs the kernel)
    assert cmsis.table_operators == (("TANH",) if kind == "elman-int8" else ())
    np.testing.assert_array_equal(cmsis.outputs, reference.outputs)
    assert cmsis.agreement[0].exact == DIGITS
    assert cmsis.instructions.shape == (DIGITS,) and reference.instructions.shape == (DIGITS,)
    assert cmsis.instructions_median < 0.8 * reference.instructions_median
    assert 0 < reference.macs_per_instruction < cmsis.macs_per_instruction < 2
    by_operator = cmsis.operator_instructions  # digit 0, operator by operator
    assert set(by_operator) == set(cmsis.operators)
    assert 0.9 * cmsis.instructions[0] <= sum(by_operator.values()) <= cmsis.instructions[0]
    report = cmsis.table()
    assert "CMSIS-NN for " in report and "MAC per instruction" in report


@pytest.mark.slow  # two more builds with flags of their own (minutes on a cold cache)
def test_debug_and_size_builds_give_the_same_bytes(int8_files, test_images, object_cache, tmp_path):
    """The build options trade flash for messages or instructions, never output bytes: a
    debug build (TFLM's messages and checks) is larger, a size build smaller and slower."""
    results = {
        options: build_firmware(
            int8_files["elman-int8", "sequence"],
            str(tmp_path / "-".join(options)),
            dataclasses.replace(
                config("cortex-m4", object_cache, "cmsis-nn"),
                build=options[0],
                optimize=options[1],
            ),
            test_images,
        )
        for options in (("release", "speed"), ("debug", "speed"), ("release", "size"))
    }
    default, debug, size = results.values()
    for result in (debug, size):
        np.testing.assert_array_equal(result.outputs, default.outputs)
    assert debug.flash_bytes > default.flash_bytes + 8 * 1024
    assert size.flash_bytes < default.flash_bytes
    assert size.instructions_median > default.instructions_median
    assert "debug, optimized for speed" in debug.table()


def test_typed_registrations_are_the_ones_tflm_declares(object_cache, tmp_path):
    """Every kernel of one input type that a CMSIS-NN build may register compiles against
    TFLM's headers; the glue's Register_MUL_INT16(), which no header declares, is not used."""
    chosen = [
        f"tflite::{firmware_build.resolver_methods(TFLM_DIR)[op][1]}_{kind}();"
        for op, kinds in firmware_build.TYPED_OPERATORS.items()
        for kind in kinds
        if firmware_build._glue_defines(TFLM_DIR, op, kind)
    ]
    assert "tflite::Register_FULLY_CONNECTED_INT8();" in chosen
    assert "tflite::Register_MUL_INT16();" not in chosen
    source = tmp_path / "typed.cc"
    source.write_text(
        "".join(
            f'#include "tensorflow/lite/micro/kernels/{name}.h"\n'
            for name in ("add", "fully_connected", "mul")
        )
        + "void Use() {\n"
        + "\n".join(chosen)
        + "\n}\n"
    )
    flags = [f"-I{os.path.join(TFLM_DIR, d)}" for d in firmware_build._INCLUDES]
    firmware_build._check_call(
        [
            "arm-none-eabi-g++",
            "-std=c++17",
            "-DCMSIS_NN",
            *flags,
            "-c",
            str(source),
            "-o",
            str(tmp_path / "typed.o"),
        ],
        "compiling the typed registrations",
    )


def test_firmware_build_options_are_checked():
    with pytest.raises(ConfigError, match="build"):
        FirmwareConfig(tflm_dir=TFLM_DIR, build="fast")
    with pytest.raises(ConfigError, match="optimize"):
        FirmwareConfig(tflm_dir=TFLM_DIR, optimize="-O3")


def test_cmsis_nn_refusals_name_the_fix(tmp_path):
    with pytest.raises(FirmwareError, match="--kernels reference"):
        firmware_build.choose_kernels(config("host", None, "cmsis-nn"), b"")
    with pytest.raises(FirmwareError, match=r"no CMSIS-NN tree at .*--cmsis-nn-dir"):
        firmware_build.find_cmsis_nn(TFLM_DIR, str(tmp_path))
    lonely = tmp_path / "tflm"
    lonely.mkdir()
    assert firmware_build.find_cmsis_nn(str(lonely), None) is None


@pytest.mark.parametrize("target", sorted(firmware_build.BOARDS))
def test_systick_counts_instructions_exactly(object_cache, tmp_path, target):
    """A loop of 2,000,000 instructions (subs + bne, 1,000,000 times) reads 2,000,000 plus
    the counter's own few instructions on every board: the clock table is right."""
    main = tmp_path / "main.c"
    main.write_text(
        "#include <stdint.h>\n#include <stdio.h>\n"
        "uint32_t kerasrnn_ticks(void);\n"
        "int main(void) {\n"
        "  uint32_t n = 1000000, start = kerasrnn_ticks();\n"
        '  __asm__ volatile("1: subs %0, %0, #1\\n\\tbne 1b" : "+r"(n) : : "cc");\n'
        '  printf("ticks %lu\\n", (unsigned long)(kerasrnn_ticks() - start));\n'
        "  return 0;\n"
        "}\n"
    )
    fw_config = config(target, object_cache)
    startup = firmware.write_board_files(str(tmp_path), fw_config)
    binary = firmware_build.build([str(main), startup], [], fw_config)
    ran = firmware._execute(binary, fw_config)
    ticks = int(ran.stdout.split()[1])
    instructions = ticks * firmware_build.BOARDS[target].instructions_per_tick
    assert ran.returncode == 0
    assert 2_000_000 <= instructions <= 2_000_000 + 2 * 50  # a tick is 31-50 instructions


def test_streaming_firmware_matches_stream(int8_files, test_images, object_cache, tmp_path):
    result = build_firmware(
        int8_files["elman", "stream"],
        str(tmp_path / "fw"),
        config("cortex-m3", object_cache),
        test_images,
    )
    micro, litert = result.agreement
    assert (micro.exact, micro.max_diff) == (DIGITS, 0)
    assert litert.max_diff <= 1  # LiteRT's int16 kernels round the carried state a step apart


def test_missing_tflm_tree_names_the_flag(tmp_path):
    missing = FirmwareConfig(tflm_dir=str(tmp_path / "no-tflm"), target="host")
    with pytest.raises(FirmwareError, match=r"no TFLM source tree at .*--tflm-dir"):
        build_firmware(
            str(tmp_path / "model.tflite"),
            str(tmp_path / "fw"),
            missing,
            np.zeros((1, 28, 28), np.uint8),
        )


def test_missing_toolchain_names_the_debian_packages(monkeypatch, tmp_path):
    resolver = tmp_path / "tensorflow" / "lite" / "micro" / "micro_mutable_op_resolver.h"
    resolver.parent.mkdir(parents=True)
    resolver.touch()  # a TFLM tree, as far as the check goes
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(
        FirmwareError,
        match="apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
        "libstdc\\+\\+-arm-none-eabi-newlib qemu-system-arm",
    ):
        check_tools(FirmwareConfig(tflm_dir=str(tmp_path), target="cortex-m33"))


@pytest.mark.slow  # trains and exports a model of its own (26 s); the firmware tests above
def test_run_adds_the_firmware_row_to_its_summary(object_cache, tmp_path):
    from kerasrnn.pipeline import run, summary_table

    firmware = dataclasses.replace(config("cortex-m3", object_cache), digits=5)
    summary = run(
        kerasrnn.ModelConfig(cell="elman", units=16),
        kerasrnn.DataConfig(source="sample", max_examples=600),
        kerasrnn.TrainConfig(epochs=2, verbose=0),
        str(tmp_path / "run"),
        firmware=firmware,
    )
    micro = summary["firmware"]["agreement"][0]
    assert (micro["reference"], micro["exact"], micro["digits"]) == ("TFLM (Python)", 5, 5)
    assert "firmware cortex-m3: flash" in summary_table(summary)
    assert os.path.isdir(tmp_path / "run" / "firmware-cortex-m3")


def test_hostile_names_never_become_firmware_code(int8_files, test_images, object_cache, tmp_path):
    """A file name and a tensor name that would be C code, and a project folder with a
    comma (linker flags split at commas): the firmware builds, runs and agrees."""
    with open(int8_files["elman", "sequence"], "rb") as f:
        content = hostile.with_input_name(f.read(), hostile.TENSOR_NAMES[-2])
    path = tmp_path / f"{hostile.FILE_NAMES[0]}.tflite"
    path.write_bytes(content)
    out = tmp_path / "fw,-T,x"
    result = build_firmware(str(path), str(out), config("cortex-m3", object_cache), test_images)
    assert result.agreement[0].exact == DIGITS
    objects = [str(out / "build" / name) for name in ("main.o", "model_data.o")]
    assert hostile.injected(objects, [str(out / "model_data.cc")], [str(out)]) == []
    with open(out / "main.cc") as f:
        assert f.readline().startswith(f"// Firmware for {c_text.comment(path.name)}: runs ")


def test_firmware_cannot_reach_the_hosts_files(int8_files, test_images, object_cache, tmp_path):
    """Firmware that opens a host file, as a model exploiting TFLM would: QEMU gives it
    no semihosting, so the open fails and nothing is written."""
    out = tmp_path / "fw"
    build_firmware(
        int8_files["elman", "sequence"], str(out), config("cortex-m3", object_cache), test_images
    )
    target = tmp_path / "written-by-firmware"
    (out / "main.cc").write_text(
        "#include <stdio.h>\n"
        "extern const unsigned kArenaBytes = 0; unsigned char g_arena[1];\n"
        "int main() {\n"
        f'  FILE* f = fopen("{target}", "w");\n'
        '  if (f) { fputs("x", f); fclose(f); }\n'
        '  printf("opened %d\\n", f != 0);\n'
        "  return 9;\n"
        "}\n"
    )
    fw_config = config("cortex-m3", object_cache)
    binary = firmware_build.build([str(out / "main.cc"), str(out / "startup.c")], [], fw_config)
    ran = firmware._execute(binary, fw_config)
    assert (ran.returncode, ran.stdout.splitlines()[0]) == (9, "opened 0")
    assert not target.exists()
    assert (out / firmware.PROJECT_MARKER).is_file()  # the folder is kerasrnn's


def test_firmware_refuses_a_loop_that_never_ends_instead_of_hanging(
    object_cache, test_images, tmp_path, monkeypatch
):
    """A WHILE loop that never ends, sealed with a digest anyone can compute: the checks
    that run on every model file stop it at the probe's limit; nothing is built."""
    monkeypatch.setattr(integrity, "_PROBE_TIMEOUT_S", 3)
    model = kerasrnn.build_classifier(kerasrnn.ModelConfig(cell="elman", units=8))
    exported = to_tflite(model, str(tmp_path / "loop.tflite"), form="loop").path
    with open(exported, "rb") as f:
        edited = flatbuffer.unpack(f.read())
    hostile.endless_loop(edited)
    path = tmp_path / "endless.tflite"
    path.write_bytes(hostile.resealed(edited))
    with pytest.raises(ModelFileError, match="LiteRT did not load and run it within 3 s"):
        build_firmware(
            str(path), str(tmp_path / "fw"), config("cortex-m3", object_cache), test_images
        )
    assert not (tmp_path / "fw").exists()


def test_a_folder_kerasrnn_did_not_make_is_never_written_into(object_cache, test_images, tmp_path):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "main.cc").write_text("int main() { return 0; }  // mine\n")
    fw_config = config("cortex-m3", object_cache)
    missing_model = str(tmp_path / "m.tflite")  # the folder is refused before the model is read
    with pytest.raises(FirmwareError, match=r"myproject holds files that kerasrnn did not"):
        build_firmware(missing_model, str(project), fw_config, test_images)
    assert [p.name for p in project.iterdir()] == ["main.cc"]
    assert (project / "main.cc").read_text() == "int main() { return 0; }  // mine\n"
    (project / firmware.PROJECT_MARKER).touch()  # as kerasrnn marks the folders it makes
    with pytest.raises(ModelFileError, match="no such model file"):
        build_firmware(missing_model, str(project), fw_config, test_images)
