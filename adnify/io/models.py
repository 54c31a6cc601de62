"""Model names and model creation: timm names, prefixes and wildcards, hub weights."""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from typing import Any

import timm
from torch import nn

from ..errors import AdnifyError, UnknownModelError
from .hub import hub_or_cache

__all__ = ["list_model_names"]


def resolve_model_name(name: str) -> str:
    """Resolve a timm name, an unambiguous prefix or a wildcard to exactly one architecture.

    A pretrained tag (``resnet50.a1_in1k``) is kept. Ambiguous names list the candidates,
    unknown names suggest the closest ones; both raise :class:`AdnifyError`.
    """
    arch, dot, tag = name.partition(".")
    available = timm.list_models()
    if arch in available:
        return name
    if any(c in arch for c in "*?["):
        matches = fnmatch.filter(available, arch)
    else:
        matches = [m for m in available if m.startswith(arch)]
    if len(matches) == 1:
        return matches[0] + dot + tag
    if len(matches) > 1:
        ranked = rank_candidates(arch, matches)
        shown = ", ".join(ranked[:10]) + (", ..." if len(ranked) > 10 else "")
        pattern = arch if any(c in arch for c in "*?[") else f"{arch}*"
        raise AdnifyError(f"model name {name!r} is ambiguous: {shown} ({len(ranked)} in all: "
                          f"adnify models '{pattern}' lists them)")
    close = difflib.get_close_matches(arch, available, n=5, cutoff=0.6)
    hint = f": did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def _pretrained_tags() -> dict[str, int]:
    """Architecture -> number of pretrained weight tags timm knows: a fair signal of how much it is used."""
    counts: dict[str, int] = {}
    for tagged in timm.list_models(pretrained=True):
        arch = tagged.partition(".")[0]
        counts[arch] = counts.get(arch, 0) + 1
    return counts


def rank_candidates(prefix: str, names: list[str]) -> list[str]:
    """Order the names a prefix or wildcard matched as a person would look for them.

    Names that extend the prefix by a plain number come first (``resnet`` -> ``resnet50``), then by
    a short suffix (``resnet50d``), then the rest; within each, the most used architecture first
    (the most pretrained weights in timm), then the shortest name.
    """
    tags = _pretrained_tags()
    stem = prefix.split("*")[0].split("?")[0].split("[")[0]

    def key(name: str) -> tuple[int, int, int, str]:
        suffix = name[len(stem):] if name.startswith(stem) else name
        tier = 0 if suffix.isdigit() else 1 if len(suffix) <= 4 else 2
        return tier, -tags.get(name, 0), len(name), name

    return sorted(names, key=key)


def list_model_names(pattern: str = "*") -> list[tuple[str, int]]:
    """timm architectures matching ``pattern`` (a wildcard or a prefix), ranked, with their pretrained tag counts."""
    wildcard = pattern if any(c in pattern for c in "*?[") else f"{pattern}*"
    names = timm.list_models(wildcard)
    tags = _pretrained_tags()
    return [(n, tags.get(n, 0)) for n in rank_candidates(wildcard, names)]


def _feature_levels(name: str) -> str:
    try:
        import torch

        with torch.device("meta"):
            info = timm.create_model(name, features_only=True).feature_info
        return f"0..{len(info.info) - 1}"
    except Exception:
        return "unknown"


def create_model(name: str, *, pretrained: bool = False, **kwargs: Any) -> tuple[nn.Module, str]:
    """Create a timm model by (resolved) name; returns the model and the resolved name.

    ``pretrained=True`` downloads through timm's hub loading; failing that (offline, say)
    raises one clear :class:`AdnifyError` pointing to ``--checkpoint``.
    """
    resolved = resolve_model_name(name)
    online = True
    try:
        with hub_or_cache() if pretrained else contextlib.nullcontext(True) as online:
            model = timm.create_model(resolved, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise AdnifyError(f"cannot create {resolved} with {kwargs}: {e}") from e
    except (AssertionError, IndexError, ValueError, RuntimeError) as e:
        if "out_indices" not in kwargs:
            raise
        levels = _feature_levels(resolved)
        raise AdnifyError(f"out_indices {tuple(kwargs['out_indices'])} do not fit {resolved}: its feature levels are "
                          f"{levels} (0-based, or negative from the last)") from e
    except Exception as e:
        if not pretrained:
            raise
        why = ("the model hub cannot be reached from here and its local cache lacks them" if not online
               else f"{type(e).__name__}; is the model hub reachable?")
        raise AdnifyError(
            f"could not download pretrained weights for {resolved} ({why}): pass local weights with "
            "--checkpoint FILE instead"
        ) from e
    return model, resolved
