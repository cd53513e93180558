"""Lazy loading: a package's public names load their module on first use, and a module
can be imported right after another (see `import_after`)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


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


def import_after(trigger: str, module: str) -> None:
    """Imports `module` as soon as `trigger` is imported (at once if it already is).

    `import kerasrnn` must register the package's Keras layers, so that
    `keras.models.load_model` finds them, without importing Keras itself (the device
    runtime and `kerasrnn --help` run without TensorFlow).

    Args:
        trigger: a top-level module name, e.g. "keras".
        module: the module to import right after it, e.g. "kerasrnn.cells".
    """
    if trigger not in sys.modules:
        sys.meta_path.insert(0, _ImportAfter(trigger, module))
    elif sys.modules[trigger] is not None:  # None: its import is blocked on purpose
        importlib.import_module(module)


class _ImportAfter(importlib.abc.MetaPathFinder):
    """Finds `trigger` with the other finders, and runs its module, then imports `module`."""

    def __init__(self, trigger: str, module: str):
        self.trigger, self.module = trigger, module

    def find_spec(self, name, path=None, target=None):
        if name != self.trigger:
            return None
        sys.meta_path.remove(self)  # once only; the other finders locate the real module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_import(loaded):
            exec_module(loaded)
            importlib.import_module(self.module)

        spec.loader.exec_module = exec_then_import
        return spec
