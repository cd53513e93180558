"""The README's Python API block runs as written, and does what it says."""

import os
import re

from conftest import REPO


def _api_block() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Python API in ten lines") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_block_trains_tunes_exports_and_verifies(tmp_path, monkeypatch, capsys):
    code = _api_block()
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "TFLM arena" in out and "top-1 agreement with Keras" in out
    assert namespace["run"].test["test_accuracy"] >= 0.85
    assert all(row["status"] == "COMPLETED" for row in namespace["search"].rows)
    assert os.path.getsize(tmp_path / "runs" / "api-elman64.tflite") > 0


def test_readme_support_table_is_the_conversion_matrix():
    import sys

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import support_table

    assert support_table.readme_table() == support_table.table(), (
        "README.md's table of layers differs from tests/conversion_matrix.py: paste "
        "`python tools/support_table.py` between its markers"
    )
