"""adnify: turn timm models into adaptive depth networks with skippable sub-paths.

>>> import adnify
>>> net = adnify.convert("resnet50")
>>> net.patterns()[:2]
['FFFF', 'TFFF']

The public API is what ``__all__`` names here and the ``__all__`` of each module in
:data:`PUBLIC_MODULES`; every other module is internal and may change between releases.
``adnify.detection``, ``adnify.export``, ``adnify.io``, ``adnify.report`` and ``adnify.train`` are
imported on first use, so ``adnify.detection.fpn_backbone(...)`` works after ``import adnify``
without ``import adnify`` paying for torchvision, datasets or accelerate.
"""

__version__ = "0.1.0"

import importlib as _importlib

from .adaptive import AdaptiveNet
from .conversion.analysis import analyse
from .conversion.convert import convert
from .conversion.plan import Plan, StagePlan, all_patterns, parse_pattern
from .errors import AdnifyError
from .io.loading import load
from .statistics import PatternStatistics

#: Modules whose ``__all__`` is public API besides the names below.
PUBLIC_MODULES = (
    "adnify.detection",   # adaptive backbones in torchvision detectors
    "adnify.export",      # files to deploy: one static depth, or every depth in one file
    "adnify.io.data",     # image classification data for train and report
    "adnify.io.models",   # timm model names
    "adnify.io.sources",  # a saved model, a training run or a timm name -> AdaptiveNet
    "adnify.report",      # costs, latency, accuracy; Pareto fronts and budgets
    "adnify.train",       # skip-aware self-distillation
)

_SUBPACKAGES = ("detection", "export", "io", "report", "train")


def __getattr__(name: str):
    if name in _SUBPACKAGES:  # imported on first use (PEP 562); the import binds it as an attribute
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBPACKAGES))


__all__ = [
    "AdaptiveNet",
    "AdnifyError",
    "PatternStatistics",
    "Plan",
    "StagePlan",
    "all_patterns",
    "analyse",
    "convert",
    "detection",
    "export",
    "io",
    "load",
    "parse_pattern",
    "report",
    "train",
    "__version__",
]
