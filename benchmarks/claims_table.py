"""The paper's Table 1 in miniature, from the ``claims.json`` files of ``benchmarks/claims.py`` studies.

One row per study: its setting and model, the super- and base-net MACs, and the top-1 of ADN's super- and
base-net against the individually trained networks (``super``, ``base``), each at its own best ``lr_base``
factor, with the worst sub-network between them and the partial-order violations.

    python benchmarks/claims_table.py docs/results/claims-quick-v4.json docs/results/claims-vit-quick.json
    python benchmarks/claims_table.py runs/vit/claims.json --adn shared_norms   # another variant as "ADN"
    python benchmarks/claims_table.py runs/lite0/claims.json+runs/lite0-individual/claims.json   # one row, 2 studies

Studies joined by ``+`` make one row: each variant is taken from the first file that has it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def ends(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    """The super-net's and base-net's patterns among a variant's scored patterns."""
    top1 = summary["top1"]
    return (next((p for p in top1 if set(p) == {"F"}), None), next((p for p in top1 if set(p) == {"T"}), None))


def cell(summary: dict[str, Any] | None, pattern: str | None) -> str:
    if summary is None or pattern is None or pattern not in summary["top1"]:
        return "—"
    value = f"{summary['top1'][pattern]:.2f}"
    edge = "" if summary.get("peaked") else "¹" if len(summary.get("by_lr", {})) == 1 else "²"
    return f"{value}{edge} ({summary['lr_factor']:g}x, {summary['seeds']} seed{'s' * (summary['seeds'] > 1)})"


def row(claims: dict[str, Any], adn: str) -> str:
    """One Markdown row of the table for one study's ``claims.json``."""
    study = claims["_study"]
    mine = claims.get(adn)
    if mine is None:
        have = ", ".join(k for k in claims if not k.startswith("_"))
        raise KeyError(f"no variant {adn!r} in the {study['setting']} study (it has {have})")
    sup, base = ends(mine)
    macs = " / ".join(f"{mine['macs'][p] / 1e6:.0f}" for p in (sup, base))
    mid = mine.get("middle") or {}
    worst = f"{mid['worst_vs_base']:+.2f} ({mid['worst']})" if mid else "—"
    return (f"| {study['setting']} ({study['model']}) | {macs} | {cell(mine, sup)} | {cell(mine, base)} "
            f"| {cell(claims.get('super'), sup)} | {cell(claims.get('base'), base)} | {worst} "
            f"| {mid.get('violations', '—')} |")


HEADER = ["| setting | MMACs super / base | ADN super | ADN base | individual super | individual base "
          "| worst sub-network − base | violations > 1 pt |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
FOOTNOTE = ("Each at its own best `lr_base` factor (in brackets, with the seeds at it). ¹ only one factor ran; "
            "² the best factor is the edge of those tried.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="claims.json files, one row each (A+B: one row from both)")
    parser.add_argument("--adn", default="adn", help="the variant shown as ADN (default adn)")
    args = parser.parse_args()
    lines = list(HEADER)
    for path in args.files:
        try:
            merged: dict[str, Any] = {}
            for part in path.split("+"):
                merged = {**json.loads(Path(part).read_text()), **merged}
            lines.append(row(merged, args.adn))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {path}: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
            raise SystemExit(2) from None
    print("\n".join(lines + ["", FOOTNOTE]))


if __name__ == "__main__":
    main()
