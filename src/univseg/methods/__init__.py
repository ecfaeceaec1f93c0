"""Training methods, one module per method family, each registering itself in ``METHODS``.

To add a method, write ``methods/<name>.py`` with a :class:`Method` subclass (or a preset
function) decorated with ``@METHODS.register("<name>")``: every module of this package is
imported here, so ``method.name: <name>`` then selects it and ``univseg experiment`` can run it.
"""
import importlib
import pkgutil

from .base import METHODS, AuxiliaryOptimizer, CentroidSource, Method, RunContext, build_method

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "AuxiliaryOptimizer", "CentroidSource", "Method", "RunContext", "build_method"]
