"""Lazy re-exports for a package ``__init__``: a name is imported from its module on first use.

A package that gathers names from several layers (``na_kernels.nn`` re-exports the conversion
passes, the SNN runtime and the file formats) would otherwise import all of them, and their
dependencies, at start-up, and its ``__init__`` would import upward into the layers above it.
"""

import importlib


def lazy_exports(package: str, table: dict, *, submodules: bool = False):
    """``(__getattr__, __dir__)`` for the module ``package`` from ``table``: public name -> the
    absolute name of the module defining it. The value is cached in the package on first use.
    With ``submodules``, any other name is tried as a subpackage (``na_kernels.nn`` after a bare
    ``import na_kernels``)."""

    def __getattr__(name):
        module = table.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        elif submodules and not name.startswith("__"):
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":  # it exists, but one of its imports is missing
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__():
        return sorted(set(table) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
