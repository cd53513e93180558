"""Text from outside (file names, tensor names) in generated C and C++ sources, never as
code: an identifier is reduced to [A-Za-z0-9_], a string goes through one escaping
function, a comment carries only a reversible safe form, and a file is #included only by
a name that needs no escaping.

    identifier("elman64 int8.tflite")   -> "elman64_int8_tflite"
    string_literal('a"b\\n')           -> '"a\\042b\\012"'
    comment("m\\n#include <x>.tflite") -> "m%0A#include <x>.tflite"
"""

from __future__ import annotations

import re
import urllib.parse

# What a `//` comment may carry as it is: printable ASCII but the backslash (a line splice
# at a line's end), "?" (trigraphs) and "%" (the escape of everything else).
_COMMENT_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "\\?%")
# What a string literal may carry as it is: that, but quotes.
_STRING_SAFE = frozenset(_COMMENT_SAFE) - {'"', "'"}
# What a name in `#include "..."` may hold: C gives no escapes there.
_INCLUDE_NAME = re.compile(r"[A-Za-z0-9_.+-]+", re.ASCII)


def identifier(text: str) -> str:
    """A C identifier made from `text` as `xxd -i` makes one: every character but
    [A-Za-z0-9_] becomes "_" ("elman64_int8.tflite" -> "elman64_int8_tflite"); a leading
    digit gets "model_"."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text, flags=re.ASCII)
    return name if re.match(r"[A-Za-z_]", name) else f"model_{name}"


def string_literal(text: str) -> str:
    """`text` as a C string literal that reads back to its UTF-8 bytes: letters, digits
    and plain punctuation as they are, every other byte (quote, backslash, "?", controls,
    NUL, non-ASCII) as a three-digit octal escape."""
    return (
        '"'
        + "".join(
            chr(b) if chr(b) in _STRING_SAFE else f"\\{b:03o}"
            for b in text.encode("utf-8", "surrogatepass")
        )
        + '"'
    )


def comment(text: str) -> str:
    """`text` in a form a `//` comment can hold: printable ASCII as it is, but backslash,
    "?", "%" and every other character (newlines, NUL, non-ASCII) %-escaped as in a URL, so
    that `urllib.parse.unquote` gives `text` back."""
    return urllib.parse.quote(text, safe=_COMMENT_SAFE, errors="surrogatepass")


def include_name(file_name: str) -> str:
    """`file_name`, checked to be #included as it is.

    Raises:
        ValueError: it holds a character other than [A-Za-z0-9_.+-] (C has no escapes in
            a `#include "..."` name: a quote or newline there would end it).
    """
    if not _INCLUDE_NAME.fullmatch(file_name):
        bad = [c for c in file_name if not _INCLUDE_NAME.fullmatch(c)][:1]
        raise ValueError(
            f"{file_name!r} cannot be #included by C"
            + (f": it holds {bad[0]!r}" if bad else "")
            + "; use letters, digits and . _ + - in its name"
        )
    return file_name
