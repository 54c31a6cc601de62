"""The conversion plan: a plain, JSON-serialisable description of what to make adaptive.

Analysis (:mod:`adnify.conversion.analysis`) produces a :class:`Plan`; :mod:`adnify.adaptive` applies it.
The plan is stored beside the weights and re-applied on load, so no graph is ever pickled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

PLAN_VERSION = 1
ALIASES = {"super": "F", "base": "T"}


@dataclass
class StagePlan:
    """One adaptive stage: consecutive residual blocks split into mandatory and skippable parts.

    Attributes:
        name: display name, e.g. ``layer1`` or ``blocks[0:3]`` for a group of an isotropic model.
        mandatory: qualified names of the blocks always executed, in order.
        skippable: qualified names of the identity-shortcut blocks that pattern ``T`` skips.
        norms: qualified names of the norm layers in the mandatory sub-path that get a
            skip-aware twin (copy A when the stage runs in full, copy B when it is skipped).
        channel_dim: channel dimension of the stage output (1 for NCHW, -1 for tokens/NHWC).
    """

    name: str
    mandatory: list[str]
    skippable: list[str]
    norms: list[str] = field(default_factory=list)
    channel_dim: int = 1


@dataclass
class Plan:
    """All adaptive stages of a model, in network order."""

    stages: list[StagePlan]
    isotropic: bool = False
    version: int = PLAN_VERSION

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if d.get("version", PLAN_VERSION) > PLAN_VERSION:
            raise ValueError(f"plan version {d['version']} is newer than this adnify understands ({PLAN_VERSION})")
        stages = [StagePlan(**s) for s in d["stages"]]
        return cls(stages=stages, isotropic=d.get("isotropic", False), version=d.get("version", PLAN_VERSION))


def parse_pattern(pattern: str | Sequence[bool], num_stages: int) -> tuple[bool, ...]:
    """Turn ``"TTFF"``, ``"super"``, ``"base"`` or a list of bools into one skip flag per stage.

    ``T`` (True) skips that stage's skippable sub-path, ``F`` runs it; stages in network order.
    """
    expected = (
        f"expected {num_stages} characters of T (skip) or F (run), one per adaptive stage, "
        f"or 'super'/'base'"
    )
    if isinstance(pattern, str):
        text = pattern.strip()
        if text.lower() in ALIASES:
            return (ALIASES[text.lower()] == "T",) * num_stages
        text = text.upper()
        if len(text) != num_stages or set(text) - {"T", "F"}:
            raise ValueError(f"invalid pattern {pattern!r}: {expected}")
        return tuple(c == "T" for c in text)
    flags = tuple(pattern)
    if len(flags) != num_stages or not all(isinstance(f, (bool, int)) and f in (0, 1) for f in flags):
        raise ValueError(f"invalid pattern {list(flags)!r}: {expected} (or a list of {num_stages} bools)")
    return tuple(bool(f) for f in flags)


def format_pattern(flags: Sequence[bool]) -> str:
    """``(True, False)`` -> ``"TF"``."""
    return "".join("T" if f else "F" for f in flags)


def all_patterns(num_stages: int) -> list[str]:
    """All ``2**num_stages`` patterns from the super-net ``F...F`` to the base-net ``T...T``.

    Ordered by number of skipped stages, then lexicographically with ``F`` first (so
    earlier stages are skipped first, which the paper finds cheapest in accuracy).
    """
    pats = [format_pattern(((i >> (num_stages - 1 - s)) & 1) == 1 for s in range(num_stages)) for i in range(2**num_stages)]
    return sorted(pats, key=lambda p: (p.count("T"), p[::-1].replace("F", "0").replace("T", "1")))
