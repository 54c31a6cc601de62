"""Rich renderings shared by the commands (main process only)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..adaptive import AdaptiveNet
from ..report.costs import Cost

console = Console()


def _blocks(names: list[str]) -> str:
    if not names:
        return "-"
    short = [n.rpartition(".")[2] for n in names]
    return f"{len(names)}  ({', '.join(short)})" if len(names) <= 4 else f"{len(names)}  ({short[0]}..{short[-1]})"


def plan_table(net: AdaptiveNet, costs: list[Cost] | None = None, *, title: str = "") -> Table:
    """Each adaptive stage with its module path, mandatory/skippable blocks and skip-aware norms."""
    table = Table(title=title or None, title_justify="left", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("stage")
    table.add_column("mandatory blocks")
    table.add_column("skippable blocks")
    table.add_column("skip-aware norms", justify="right")
    table.add_column("channels", justify="right")
    for i, s in enumerate(net.plan.stages):
        table.add_row(str(i), s.name, _blocks(s.mandatory), _blocks(s.skippable),
                      "shared" if net.shared_norms else str(len(s.norms)), "dim 1" if s.channel_dim == 1 else "last")
    if costs:
        sup, base = costs[0], costs[-1]
        table.caption = (
            f"super-net {sup.pattern}: {sup.params / 1e6:.2f}M params, {sup.gmacs:.3f} GMACs   "
            f"base-net {base.pattern}: {base.params / 1e6:.2f}M params, {base.gmacs:.3f} GMACs "
            f"({base.macs / sup.macs:.0%})\n"
            f"{len(net.patterns())} sub-networks; stored parameters {sum(p.numel() for p in net.parameters()) / 1e6:.3f}M "
            f"(+{_growth(net):.2%} for skip-aware norms). GMACs = multiply-accumulates (timm's 'GFLOPs')."
        )
        table.caption_justify = "left"
    return table


def _growth(net: AdaptiveNet) -> float:
    from ..report.costs import original_params

    base = original_params(net)
    return sum(p.numel() for p in net.parameters()) / base - 1
