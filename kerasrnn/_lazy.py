"""Lazy re-exports: a package's public names load their module on first use."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """Module-level `__getattr__` and `__dir__` for `package`.

    Args:
        package: the package's `__name__` (for error messages).
        exports: public name -> the module that defines it.
    """

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return list(exports)

    return __getattr__, __dir__
