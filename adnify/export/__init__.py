"""Deployable files: one sub-network per file (:mod:`.static`), or every depth in one file (:mod:`.dynamic`).

>>> from adnify.export import export_file, export_dynamic
>>> export_file(net, "TTFF", "r50-ttff.onnx", format="onnx")      # one static sub-network
>>> export_dynamic(net, "r50-adn.onnx")                            # skip (bool[N]) is an input
"""

from .dynamic import DynamicDepth, depth_metadata, export_dynamic, read_metadata
from .static import export_file

__all__ = ["DynamicDepth", "depth_metadata", "export_dynamic", "export_file", "read_metadata"]
