"""Measuring sub-networks: MACs and parameters (``costs``, with ``attention_flops``), latency,
accuracy (``evaluate``), and the report built from them (``build``) and written out (``output``)."""

from .build import build_report, measure_latency, parse_metrics, parse_patterns, resolve_device, resolve_dtype

__all__ = ["build_report", "measure_latency", "parse_metrics", "parse_patterns", "resolve_device", "resolve_dtype"]
