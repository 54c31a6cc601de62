"""adnify: turn timm models into adaptive depth networks with skippable sub-paths.

>>> import adnify
>>> net = adnify.convert("resnet50")
>>> net.patterns()[:2]
['FFFF', 'TFFF']
"""

__version__ = "0.1.0"

from .adaptive import AdaptiveNet
from .analysis import analyse
from .convert import convert
from .errors import AdnifyError
from .plan import Plan, StagePlan, all_patterns, parse_pattern
from .storage import load

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
