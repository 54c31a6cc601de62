"""Choosing among sub-networks: the Pareto fronts, and the best one within a budget.

Pure functions over report rows (see :mod:`adnify.report.output` for their keys). A Pareto front
holds the rows for which no other row is at least as cheap and at least as good and strictly
better in one of the two; rows with identical cost and score are all on it.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ..errors import AdnifyError

__all__ = ["Row", "beaten_by", "default_score", "has_metric", "pareto_front", "score_value", "select_within_budget", "short_number"]

Row = dict[str, Any]


def has_metric(rows: Iterable[Row], key: str) -> bool:
    """Whether any row measured ``key``."""
    return any(r.get(key) is not None for r in rows)


def default_score(rows: list[Row]) -> str:
    """The quality measure used for Pareto fronts and plots: acc1, else agreement, else depth."""
    return next((k for k in ("acc1", "agreement") if has_metric(rows, k)), "depth")


def score_value(row: Row, score: str | None) -> float | None:
    """The row's ``score``, higher is better; depth counts as minus the skipped blocks."""
    if score in (None, "depth"):
        return -float(row["skipped_blocks"])
    return row.get(score)


def pareto_front(rows: list[Row], *, cost: str = "gmacs", score: str | None = None) -> set[str]:
    """Patterns of the rows with lower ``cost`` and higher ``score`` than any alternative.

    ``score=None`` (or ``"depth"``) ranks deeper sub-networks (fewer skipped blocks) higher.
    Rows missing the cost or the score take no part. The result does not depend on row order.
    """
    pts = [(r["pattern"], r.get(cost), score_value(r, score)) for r in rows]
    pts = [(p, c, s) for p, c, s in pts if c is not None and s is not None]
    return {
        p
        for p, c, s in pts
        if not any(c2 <= c and s2 >= s and (c2 < c or s2 > s) for _, c2, s2 in pts)
    }


def beaten_by(rows: list[Row], *, cost: str = "gmacs", score: str | None = None) -> dict[str, tuple[str, float]]:
    """For each sub-network that a cheaper one beats: ``pattern -> (the best cheaper pattern, its margin)``.

    Only a measured score (``acc1``, ``agreement``) can beat: by depth alone a cheaper sub-network never
    ranks higher. A dominated sub-network costs more and is worth less; with adaptive depth it shows a
    sub-network that training left behind.
    """
    if score in (None, "depth"):
        return {}
    pts = [(r["pattern"], r.get(cost), r.get(score)) for r in rows]
    pts = [(p, c, s) for p, c, s in pts if c is not None and s is not None]
    out = {}
    for p, c, s in pts:
        better = [(s2, p2) for p2, c2, s2 in pts if c2 < c and s2 > s]
        if better:
            s2, p2 = max(better)
            out[p] = (p2, s2 - s)
    return out


def short_number(x: float) -> str:
    """Three significant figures at most: 123, 12.3, 1.23."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def select_within_budget(rows: list[Row], *, budget_ms: float | None = None, budget_gmacs: float | None = None) -> Row:
    """The best row within every given budget.

    Best = highest acc1 (else agreement) when measured, otherwise fewest skipped blocks;
    ties go to the lower GMACs, then the lower latency. Raises :class:`AdnifyError` naming
    the smallest achievable cost when nothing fits.
    """
    if not rows:
        raise AdnifyError("no sub-networks to choose from")
    if budget_ms is not None and not has_metric(rows, "latency_ms"):
        raise AdnifyError("a latency budget needs measured latencies, and this report has none")
    fits = [r for r in rows
            if (budget_ms is None or (r.get("latency_ms") is not None and r["latency_ms"] <= budget_ms))
            and (budget_gmacs is None or r["gmacs"] <= budget_gmacs)]
    if not fits:
        fastest = min((r for r in rows if r.get("latency_ms") is not None), key=lambda r: r["latency_ms"], default=None)
        cheapest = min(rows, key=lambda r: r["gmacs"])
        parts = []
        if budget_ms is not None:
            parts.append(f"the fastest, {fastest['pattern']}, takes {short_number(fastest['latency_ms'])} ms")
        if budget_gmacs is not None:
            parts.append(f"the cheapest, {cheapest['pattern']}, needs {cheapest['gmacs']:.3g} GMACs")
        limits = [f"runs within {budget_ms:g} ms" if budget_ms is not None else "",
                  f"fits within {budget_gmacs:g} GMACs" if budget_gmacs is not None else ""]
        raise AdnifyError(f"no sub-network {' and '.join(filter(None, limits))}: {'; '.join(parts)}")
    score = default_score(rows)

    def key(r: Row) -> tuple:
        s = score_value(r, score)
        lat = r.get("latency_ms")
        return (-(s if s is not None else -math.inf), r["gmacs"], lat if lat is not None else math.inf, r["pattern"])

    return min(fits, key=key)
