"""The block structure of a model, from one traced graph and one forward pass.

- A *block list* is the children of an ``nn.Sequential``/``nn.ModuleList``, or children of any
  other module numbered alike (RegNet's ``b1, b2, ...``), taken in call order.
- A *residual block* is a block whose output is its first input plus one or more residual
  branches (see :mod:`adnify.conversion.residuals`) and that keeps its input's shape.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import AdnifyError, first_line
from .residuals import is_residual_region, leaf_is_residual, module_regions

__all__ = ["CONTAINERS", "Probe", "block_lists", "is_torch_leaf", "parent_name", "probe_shapes", "residual_blocks"]

CONTAINERS = (nn.Sequential, nn.ModuleList)
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass
class Probe:
    """What one real forward pass told us about a container child."""

    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    calls: int = 0
    args: tuple[Any, ...] = ()
    order: int = 0  # when it was first called
    chained: bool = False  # its input is the output of the sibling called before it



def block_lists(model: nn.Module) -> dict[str, list[str]]:
    """Block lists: key -> qualified names of the children that may form stages, in order.

    A block list is the children of an ``nn.Sequential``/``nn.ModuleList``, or, in any other
    module, a group of two or more children numbered alike (``b1, b2, b3`` in RegNet's
    ``RegStage``): blocks built by a loop. Named roles (MaxViT's ``attn_block``/``attn_grid``)
    are parts of one block, not blocks of a stage. The key is the container's name, with the
    group's prefix for numbered groups (``s2.b*``).
    """
    out: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, CONTAINERS):
            if len(mod) > 0:
                out[name] = [f"{prefix}{child}" for child, _ in mod.named_children()]
            continue
        numbered: dict[str, list[str]] = defaultdict(list)
        for child, _ in mod.named_children():
            match = _NUMBERED.match(child)
            if match and match.group(1):
                numbered[match.group(1)].append(f"{prefix}{child}")
        for stem, names in numbered.items():
            if len(names) >= 2:
                out[f"{prefix}{stem}*"] = names
    return out


def parent_name(name: str) -> str:
    """``"layer1.0.conv1"`` -> ``"layer1.0"``."""
    return name.rpartition(".")[0]


def probe_shapes(model: nn.Module, children: dict[str, list[str]], input_size: Sequence[int]) -> dict[str, Probe]:
    """One forward pass recording the first-input and output shapes of every container child."""
    probes: dict[str, Probe] = {}
    modules = dict(model.named_modules())
    handles = []
    owner = {child: key for key, names in children.items() for child in names}
    last_output: dict[str, Any] = {}  # per block list: the output of the child called last

    def hook(name: str):
        key = owner[name]

        def fn(mod: nn.Module, args: tuple, output: Any) -> None:
            p = probes.setdefault(name, Probe(order=len(probes)))
            p.calls += 1
            p.in_shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
            p.out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            p.chained = bool(args) and key in last_output and args[0] is last_output[key]
            last_output[key] = output
            if not is_torch_leaf(mod):
                p.args = args

        return fn

    for name in owner:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        # One thread: a batch-1 pass gains little from two, and loses much on a busy machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                model(torch.randn(1, *input_size))
        finally:
            torch.set_num_threads(threads)
    except Exception as e:
        raise AdnifyError(
            f"a forward pass of {type(model).__name__} on a {tuple(input_size)} input failed: "
            f"{first_line(e, with_type=True)} (Hint: pass the input size the model expects)"
        ) from e
    finally:
        for h in handles:
            h.remove()
    for key, names in children.items():  # block lists in call order (uncalled children last)
        children[key] = sorted(names, key=lambda n: probes[n].order if n in probes else len(probes))
    return probes


def is_torch_leaf(mod: nn.Module) -> bool:
    """A layer of torch itself (``nn.Conv2d``...), never a block of its own."""
    return type(mod).__module__.startswith("torch.nn")


def residual_blocks(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    children: dict[str, list[str]],
    probes: dict[str, Probe],
) -> set[str]:
    """Block-list children that are residual and keep their input's shape (nested ones too)."""
    regions = module_regions(graph)
    found: set[str] = set()
    for names in children.values():
        for name in names:
            p = probes.get(name)
            if p is None or p.calls != 1 or p.in_shape is None or p.in_shape != p.out_shape:
                continue
            mod = modules[name]
            nodes = regions.get(name, [])
            if len(nodes) == 1 and nodes[0].op == "call_module" and not is_torch_leaf(mod):
                residual = leaf_is_residual(mod, p.args)
            else:
                residual = len(nodes) > 1 and is_residual_region(nodes, modules)
            if residual:
                found.add(name)
    return found
