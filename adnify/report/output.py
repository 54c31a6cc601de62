"""Report rows -> tables, files and plots (:mod:`.selection` picks among them).

Pure functions over plain data. A *row* describes one sub-network::

    {"pattern": "TFFF", "skipped_blocks": 2, "params": 25_600_000, "gmacs": 3.7,
     "latency_ms": 12.3, "latency_iqr_ms": 0.4, "acc1": 76.9, "acc5": 93.1, "agreement": 97.5}

``gmacs`` counts multiply-accumulates (what timm and the paper call "GFLOPs"); ``acc1``,
``acc5`` and ``agreement`` (top-1 agreement with the super-net) are percentages, 0-100;
any metric not measured is ``None``.

JSON schema, version 1 (:func:`to_json`; also in ``docs/report-schema.md``). Keys are only
ever added within a version; a removal or change of meaning bumps ``schema_version``::

    {
      "schema_version": 1,
      "adnify_version": "0.1.0",            # "unknown" when adnify is not installed
      "context": {...},                     # measurement context, as given by the caller:
                                            # model, source, batch_size, input_size, dtype,
                                            # device, threads, macs_method, data, ...
      "pareto_score": "acc1",               # "acc1" | "agreement" | "depth"
      "rows": [{<row keys above>}, ...],    # sorted by gmacs, largest first
      "pareto": {"gmacs": ["TTTT", ...],    # patterns on each front, cheapest first
                 "latency_ms": [...]},      # empty when latency was not measured
      "beaten_by": {"FFFT": {"pattern": "TTTT", "margin": 2.1}}   # dominated sub-networks (added in 0.3):
                                            # the best cheaper one (GMACs) and its lead in the score
    }

The Pareto fronts are those of :func:`adnify.report.selection.pareto_front`, the dominated
sub-networks those of :func:`adnify.report.selection.beaten_by`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from ..errors import AdnifyError
from ..io.files import atomic_write_bytes, atomic_write_text, check_writable
from .selection import Row, beaten_by, default_score, has_metric, pareto_front, score_value, short_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_SCHEMA_VERSION = 1
ROW_KEYS = ("pattern", "skipped_blocks", "params", "gmacs", "latency_ms", "latency_iqr_ms", "acc1", "acc5", "agreement")
FORMATS = ("json", "csv", "md")
_SCORE_LABELS = {"acc1": "Top-1 %", "agreement": "Agreement %", "depth": "Skipped blocks (fewer = deeper)"}

def adnify_version() -> str:
    """The installed adnify version, or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adnify")
    except PackageNotFoundError:
        return "unknown"


def _sorted(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (-r["gmacs"], r["pattern"]))


def _columns(rows: list[Row], beaten: dict[str, tuple[str, float]]) -> list[tuple[str, Any]]:
    """(header, row -> text) for the metrics present in ``rows``, and "Beaten by" when a sub-network in
    ``beaten`` (:func:`~adnify.report.selection.beaten_by`) costs more than another and scores lower."""
    cols: list[tuple[str, Any]] = [
        ("Pattern", lambda r: r["pattern"]),
        ("Skipped blocks", lambda r: str(r["skipped_blocks"])),
        ("Params (M)", lambda r: f"{r['params'] / 1e6:.2f}"),
        ("GMACs", lambda r: f"{r['gmacs']:.3f}"),
    ]
    if has_metric(rows, "latency_ms"):
        def lat(r: Row) -> str:
            if r.get("latency_ms") is None:
                return "-"
            iqr = r.get("latency_iqr_ms")
            return short_number(r["latency_ms"]) + ("" if iqr is None else f" ± {short_number(iqr)}")
        cols.append(("Latency ms (median ± IQR)", lat))
    for key, header in (("acc1", "Top-1 %"), ("acc5", "Top-5 %"), ("agreement", "Agreement %")):
        if has_metric(rows, key):
            cols.append((header, lambda r, k=key: "-" if r.get(k) is None else f"{r[k]:.2f}"))
    if beaten:
        cols.append(("Beaten by", lambda r: "" if r["pattern"] not in beaten else
                     f"{beaten[r['pattern']][0]} (+{beaten[r['pattern']][1]:.2f})"))
    return cols


def _footnote(rows: list[Row], beaten: dict[str, tuple[str, float]], context: dict | None) -> str:
    score = default_score(rows)
    what = "deeper" if score == "depth" else f"higher {_SCORE_LABELS[score]}"
    # A margin of one or two images on a small evaluation set is chance, not a sub-network left behind.
    examples = (context or {}).get("examples")
    grain = (f"On {examples:,} images one image is {100 / examples:.2f} points. "
             if beaten and isinstance(examples, int) and examples > 0 else "")
    return (f"* Pareto-optimal: no other sub-network has fewer GMACs and {what}. "
            + (f"{len(beaten)} of {len(rows)} sub-networks are beaten by a cheaper one (column 'Beaten by'). "
               if beaten else "")
            + grain + "GMACs = multiply-accumulates (timm's 'GFLOPs').")


def _context_line(context: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (context or {}).items() if v is not None)


def render_table(rows: list[Row], *, title: str, context: dict | None = None) -> Table:
    """A rich table sorted by GMACs (largest first), Pareto-optimal rows marked ``*``."""
    score = default_score(rows)
    front, beaten = pareto_front(rows, score=score), beaten_by(rows, score=score)
    cols = _columns(rows, beaten)
    caption = "\n".join(filter(None, [_context_line(context), _footnote(rows, beaten, context)]))
    table = Table(title=title, caption=caption, caption_justify="left")
    table.add_column("", width=1)
    for i, (header, _) in enumerate(cols):
        table.add_column(header, justify="left" if i == 0 else "right")
    for r in _sorted(rows):
        table.add_row("*" if r["pattern"] in front else "", *(fmt(r) for _, fmt in cols))
    return table


def _clean_row(row: Row) -> Row:
    out = {k: row.get(k) for k in ROW_KEYS}
    out.update({k: row[k] for k in sorted(row) if k not in ROW_KEYS})
    return out


def to_json(rows: list[Row], *, context: dict) -> str:
    """The report as JSON, following the schema in the module docstring."""
    score = default_score(rows)

    def front(cost: str) -> list[str]:
        front = pareto_front(rows, cost=cost, score=score)
        on = [r for r in rows if r["pattern"] in front]
        return [r["pattern"] for r in sorted(on, key=lambda r: (r[cost], r["pattern"]))]

    doc = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "adnify_version": adnify_version(),
        "context": dict(context or {}),
        "pareto_score": score,
        "rows": [_clean_row(r) for r in _sorted(rows)],
        "pareto": {"gmacs": front("gmacs"), "latency_ms": front("latency_ms")},
        "beaten_by": {p: {"pattern": q, "margin": round(m, 4)} for p, (q, m) in
                      sorted(beaten_by(rows, score=score).items())},
    }
    return json.dumps(doc, indent=2, default=str) + "\n"


def to_csv(rows: list[Row]) -> str:
    """One line per row: the row keys (empty when not measured), then ``pareto_gmacs``/``pareto_latency``."""
    score = default_score(rows)
    fronts = {c: pareto_front(rows, cost=c, score=score) for c in ("gmacs", "latency_ms")}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*ROW_KEYS, "pareto_gmacs", "pareto_latency"])
    for r in _sorted(rows):
        writer.writerow([*("" if r.get(k) is None else r[k] for k in ROW_KEYS),
                         int(r["pattern"] in fronts["gmacs"]), int(r["pattern"] in fronts["latency_ms"])])
    return buf.getvalue()


def to_markdown(rows: list[Row], *, context: dict | None) -> str:
    """A Markdown report: the context as a list, then the table of :func:`render_table`."""
    score = default_score(rows)
    front, beaten = pareto_front(rows, score=score), beaten_by(rows, score=score)
    cols = _columns(rows, beaten)
    lines = [f"- **{k}**: {v}" for k, v in (context or {}).items() if v is not None]
    if lines:
        lines.append("")
    lines.append("| | " + " | ".join(h for h, _ in cols) + " |")
    lines.append("|---|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|")
    for r in _sorted(rows):
        lines.append(f"| {'*' if r['pattern'] in front else ''} | " + " | ".join(fmt(r) for _, fmt in cols) + " |")
    lines += ["", _footnote(rows, beaten, context), ""]
    return "\n".join(lines)


def write_report(
    rows: list[Row], path: str | os.PathLike, fmt: str, *, context: dict | None, force: bool = False
) -> Path:
    """Write the report as ``fmt`` (json, csv or md) atomically; an existing file needs ``force``."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AdnifyError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")
    check_writable(path, force=force)
    text = {"json": lambda: to_json(rows, context=context or {}), "csv": lambda: to_csv(rows),
            "md": lambda: to_markdown(rows, context=context)}[fmt]()
    return atomic_write_text(path, text, force=force)


# Label positions tried in turn: (dx, dy) in points, horizontal and vertical alignment.
_OFFSETS = ((4, 2, "left", "bottom"), (4, -2, "left", "top"), (-4, 2, "right", "bottom"),
            (-4, -2, "right", "top"), (0, 6, "center", "bottom"), (0, -6, "center", "top"))


def _place_labels(ax: Any, labels: list[tuple[float, float, str]], fontsize: float, obstacles: list) -> None:
    """Annotate each point, greedily choosing an offset that overlaps no earlier label or marker."""
    renderer = ax.figure.canvas.get_renderer()
    for x, y, text in labels:
        chosen = None
        for dx, dy, ha, va in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=fontsize, family="monospace", linespacing=1.0)
            box = ann.get_window_extent(renderer)
            inside = ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1
            if inside and not any(box.overlaps(b) for b in obstacles):
                chosen = ann
                break
            ann.remove()
        if chosen is None:  # crowded: fall back to the first offset
            dx, dy, ha, va = _OFFSETS[0]
            chosen = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                 fontsize=fontsize, family="monospace", linespacing=1.0)
        obstacles.append(chosen.get_window_extent(renderer))


def report_figure(rows: list[Row], *, context: dict | None = None) -> Figure:
    """A matplotlib figure: score vs GMACs, and vs latency when measured; Pareto front as a step line.

    Every point is labelled with its pattern; sub-networks at the same spot share one label.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.transforms import Bbox
    except ImportError as e:
        raise AdnifyError('plotting needs matplotlib: pip install "adnify[plot]"') from e
    score = default_score(rows)
    costs = [("gmacs", "GMACs (multiply-accumulates)")]
    if has_metric(rows, "latency_ms"):
        costs.append(("latency_ms", "Latency ms (median, bars = IQR)"))
    crowded = len(rows) > 16
    fig = Figure(figsize=((8.5 if crowded else 6.5) * len(costs), 6.5 if crowded else 5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(costs), squeeze=False)[0]
    ctx = context or {}
    title = " | ".join(str(ctx[k]) for k in ("model", "device", "dtype") if ctx.get(k) is not None)
    if ctx.get("batch_size") is not None:
        title += f"{' | ' if title else ''}batch {ctx['batch_size']}"
    fig.suptitle(title or "adnify sub-networks", fontsize=10)
    groups_per_ax = []
    for ax, (cost, label) in zip(axes, costs):
        front = pareto_front(rows, cost=cost, score=score)
        groups: dict[tuple[float, float], list[str]] = {}
        for r in sorted(rows, key=lambda r: r["pattern"]):
            if r.get(cost) is not None and score_value(r, score) is not None:
                y = r["skipped_blocks"] if score == "depth" else r[score]
                groups.setdefault((r[cost], y), []).append(r["pattern"])
                opt = r["pattern"] in front
                xerr = r["latency_iqr_ms"] / 2 if cost == "latency_ms" and r.get("latency_iqr_ms") else None
                ax.errorbar(r[cost], y, xerr=xerr, fmt="o", ms=5 if opt else 4, color="tab:red" if opt else "tab:blue",
                            ecolor="0.6", elinewidth=0.8, zorder=2)
        on = sorted(xy for xy, pats in groups.items() if any(p in front for p in pats))
        if on:
            ax.step([x for x, _ in on], [y for _, y in on], where="post", color="tab:red", lw=1.2,
                    label="Pareto front", zorder=1)
            ax.legend(loc="best", fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel(_SCORE_LABELS[score])
        if score == "depth":
            ax.invert_yaxis()
        ax.grid(True, alpha=0.3)
        groups_per_ax.append(groups)
    fig.get_layout_engine().execute(fig)  # fix the axes' positions, then place labels in display space
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    for ax, groups in zip(axes, groups_per_ax):
        radius = 4 * fig.dpi / 72
        obstacles = [Bbox.from_bounds(px - radius, py - radius, 2 * radius, 2 * radius)
                     for px, py in ax.transData.transform(list(groups))] if groups else []
        if ax.get_legend() is not None:
            obstacles.append(ax.get_legend().get_window_extent(renderer))
        labels = [(x, y, "\n".join(" ".join(pats[i : i + 3]) for i in range(0, len(pats), 3)))
                  for (x, y), pats in sorted(groups.items())]
        _place_labels(ax, labels, 6 if crowded else 7, obstacles)
    return fig


def plot_report(rows: list[Row], path: str | os.PathLike, *, context: dict | None = None, force: bool = False) -> Path:
    """Save :func:`report_figure` as a PNG, atomically; an existing file needs ``force``."""
    check_writable(path, force=force)
    fig = report_figure(rows, context=context)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue(), force=force)
