"""Text for the terminal: what a model file, a file name or an error holds is shown, never
obeyed. A class name stored in a .tflite as "7\\n0: digit 1 (99.0%)" or "\\x1b[2J" would
otherwise print a forged line or clear the screen.

    printable("cat\\n0: dog")     -> "cat\\\\n0: dog"
    printable("\\x1b[31mred")     -> "\\\\x1b[31mred"
"""

from __future__ import annotations

import logging


def printable(text: str) -> str:
    """`text` with every character that is not printable written as a Python escape.

    That is every control character (newline, carriage return, tab, ESC, NUL, DEL and
    the C1 controls), the bidirectional overrides and other invisible format characters,
    line and paragraph separators, and lone surrogates (undecodable bytes of a file
    name): `str.isprintable` decides. Printable text, non-ASCII letters included, stays
    as it is.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class PrintableFormatter(logging.Formatter):
    """A log formatter whose lines are `printable`: a logged name cannot forge a line.

    A traceback (`--debug`) is kept as it is: it is for the user who asked for it.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return printable(super().formatMessage(record))
