"""Images that cannot be decoded: counted over one pass of a split, the first few named, and limited
(the recipe's ``max_broken_fraction``), so a few broken files never end a run but the wrong folder does."""

from __future__ import annotations

import math
from typing import Iterable

from ..errors import AdnifyError

__all__ = ["DEFAULT_FRACTION", "KEY", "BrokenImages"]

#: The recipe key, and its default (also ``adnify report``'s limit).
KEY = "max_broken_fraction"
DEFAULT_FRACTION = 0.05


class BrokenImages:
    """The broken images of one pass over ``size`` images of ``what``.

    ``count`` may come from every process (a gathered sum); ``names`` are the ones this process met.
    """

    SHOWN = 5  #: names kept (and shown on the console)

    def __init__(self, size: int, what: str, fraction: float = DEFAULT_FRACTION, count: int = 0) -> None:
        self.size, self.what, self.fraction, self.count = size, what, fraction, count
        self.names: list[str] = []

    @property
    def limit(self) -> int:
        """The most broken images allowed; at least one in a split of any size above 0%."""
        return math.ceil(self.fraction * self.size)

    def add(self, names: Iterable[str], count: int | None = None) -> list[str]:
        """Count ``count`` more (default: ``len(names)``) and return the names to show now (the first few)."""
        names = list(names)
        self.count += len(names) if count is None else count
        new = names[: max(0, self.SHOWN - len(self.names))]
        self.names += new
        return new

    def check(self) -> None:
        """Raise one line naming the first broken files when more than the limit are broken."""
        if self.count > self.limit:
            raise AdnifyError(
                f"{self.count:,} images of {self.what} cannot be decoded, more than {KEY} {self.fraction:g} allows "
                f"({self.limit:,} of {self.size:,}); the first: {'; '.join(self.names) or 'on another process'}. "
                f"Is it the right folder? To go on regardless, raise {KEY}")

    def summary(self) -> str:
        """``"3 images cannot be decoded and were skipped: a (...); b (...)"``, or ``""``."""
        if not self.count:
            return ""
        more = ", ..." if self.count > len(self.names) else ""
        return (f"{self.count:,} image{'s' * (self.count != 1)} of {self.what} cannot be decoded and "
                f"{'were' if self.count != 1 else 'was'} skipped: {'; '.join(self.names)}{more}")
