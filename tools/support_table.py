"""Prints the README's table of Keras layers and options that export rebuilds, from the
conversion matrix that `tests/test_conversion_matrix.py` proves row by row.

    python tools/support_table.py          # the markdown table
    python tools/support_table.py --check  # exit 1 when README.md's table differs
"""

from __future__ import annotations

import argparse
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import conversion_matrix  # noqa: E402  (the tests' module, read as data)

BEGIN = "<!-- support table: python tools/support_table.py -->"
END = "<!-- end of support table -->"


def _verdict(row) -> tuple[str, str]:
    """(what export does with the row's model, how or why): read from the model itself."""
    import keras

    from kerasrnn.errors import ConversionError
    from kerasrnn.export import convert, model_reader

    keras.utils.set_random_seed(0)
    try:
        read = model_reader.read_model(conversion_matrix.build(row))
    except ConversionError as e:
        # the message without the layer's or model's name (numbered by Keras)
        reason = re.sub(r"^cannot export (layer \S+ \(\w+\)|model '[^']*'): ", "", str(e))
        return "refused", f"{row.reason}: `{reason}`"
    form = convert._form(read, "none", "auto", 1, stream=False, target="micro")
    stream = "streams" if read.streaming_refusal() is None else "no streaming form"
    outputs = f"{read.outputs} outputs" if read.outputs > 1 else "1 output (regression)"
    return "yes", f"float32 form for TFLM: {form}; {stream}; {outputs}" + (
        f"; {row.reason}" if row.reason else ""
    )


def table() -> str:
    """The markdown table: one line per matrix row, supported rows first."""
    lines = [
        "| layer | option | input | exported | how, or why not |",
        "|---|---|---|---|---|",
    ]
    for row in conversion_matrix.supported() + conversion_matrix.refused():
        verdict, how = _verdict(row)
        lines.append(f"| {row.layer} | {row.option} | {row.shape} | {verdict} | {how} |")
    return "\n".join(lines)


def readme_table(path: str = os.path.join(REPO, "README.md")) -> str:
    """The table between the README's markers."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with README.md")
    args = parser.parse_args()
    if args.check:
        if readme_table() != table():
            print("README.md's support table differs from the conversion matrix", file=sys.stderr)
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
