"""adnify: turn timm models into adaptive depth networks with skippable sub-paths.

>>> import adnify
>>> net = adnify.convert("resnet50")
>>> net.patterns()[:2]
['FFFF', 'TFFF']
"""

__version__ = "0.1.0"

from . import _moved
from .adaptive import AdaptiveNet
from .conversion.analysis import analyse
from .conversion.convert import convert
from .conversion.plan import Plan, StagePlan, all_patterns, parse_pattern
from .errors import AdnifyError
from .io.loading import load

_moved.install()


def __getattr__(name: str):  # ``adnify.costs`` as an attribute, for code written before the move
    if name in _moved.MOVED:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdaptiveNet",
    "AdnifyError",
    "Plan",
    "StagePlan",
    "all_patterns",
    "analyse",
    "convert",
    "load",
    "parse_pattern",
    "__version__",
]
