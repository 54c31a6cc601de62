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
        shown = ", ".join(matches[:10]) + (f", ... ({len(matches)} in all)" if len(matches) > 10 else "")
        raise AdnifyError(f"model name {name!r} is ambiguous: {shown}")
    close = difflib.get_close_matches(arch, available, n=5, cutoff=0.6)
    hint = f": did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


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
