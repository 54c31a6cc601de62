"""Measuring sub-networks: MACs and parameters (``costs``, with ``attention_flops``), latency
(``latency``), accuracy (``evaluate``: the one evaluation pipeline), the report built from them
(``build``), choosing among them (``selection``) and writing it out (``output``)."""

from .build import build_report
from .costs import pattern_costs
from .evaluate import Accuracy, eval_loader, eval_transform, evaluate_patterns
from .output import plot_report, render_table, write_report
from .selection import pareto_front, select_within_budget

__all__ = ["Accuracy", "build_report", "eval_loader", "eval_transform", "evaluate_patterns", "pareto_front",
           "pattern_costs", "plot_report", "render_table", "select_within_budget", "write_report"]
