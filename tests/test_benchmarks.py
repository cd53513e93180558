"""`make benchmark-quick`: every benchmark script runs in its quick mode and prints its table.

Slow (minutes): the scripts train, convert and build firmware. The numbers themselves are
claims of the benchmarks (README), never asserted here.
"""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from kerasrnn.errors import FirmwareError
from kerasrnn.export.config import FirmwareConfig
from kerasrnn.export.firmware import check_tools

# script: a heading its table prints
QUICK_RUNS = {
    "accuracy.py": "test accuracy",
    "training_speed.py": "samples/s",
    "export_sizes.py": "TFLM arena",
    "int8_agreement.py": "int8 acc",
    "firmware_sizes.py": "MAC/instr",
    "edge_latency.py": "xnnpack 1t",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_benchmark_runs_in_quick_mode_and_prints_its_table(script, tmp_path):
    if script == "firmware_sizes.py":
        try:  # the toolchain, QEMU and TFLM tree the script's default --tflm-dir names
            check_tools(
                FirmwareConfig(tflm_dir=os.path.join(os.path.dirname(REPO), "shared", "tflm"))
            )
        except FirmwareError as e:
            pytest.skip(str(e))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", script), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert QUICK_RUNS[script] in result.stdout, result.stdout[-3000:]
