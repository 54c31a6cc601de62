"""The loop's position (saved in every checkpoint) and a graceful Ctrl-C."""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StopRequest", "TrainState"]


@dataclass
class TrainState:
    """Where training stands; registered with ``accelerator.register_for_checkpointing``.

    Attributes:
        epoch: the epoch in progress (0-based); equals the number of finished epochs at an epoch end.
        step: optimizer updates done so far.
        batch_in_epoch: batches of ``epoch`` already trained on (per process), for ``skip_first_batches``.
        broken_in_epoch: undecodable training images met in ``epoch`` so far (all processes).
        broken_most: the most undecodable training images met in one epoch (of a full pass: every one).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    broken_in_epoch: int = 0
    broken_most: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, int(value))


class StopRequest:
    """The first Ctrl-C (SIGINT/SIGTERM) asks the loop to stop after the current step; a second one
    interrupts at once. Installed only in the main thread (signals cannot be handled elsewhere)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
