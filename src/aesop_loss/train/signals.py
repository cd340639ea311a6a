"""Ctrl-C and SIGTERM as a request to stop a training loop at a step boundary."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["StopRequest", "ignore_stop_signals"]

logger = logging.getLogger(__name__)


class StopRequest:
    """Ctrl-C or SIGTERM as a request to stop a training loop at its next step boundary.

    A checkpoint written between steps resumes exactly; one written mid-step (after the optimiser
    step, before the step counter moved) would not. So the first signal only sets ``requested``,
    and the loop saves and stops when the current step is done. A second signal raises
    ``KeyboardInterrupt`` at once: the loop must then stop without saving. Signals within
    ``repeat_window`` seconds of the first count as the same request: a terminal's Ctrl-C reaches
    every process of the job, and ``torchrun`` forwards it to its workers a moment later.

    Examples:
        >>> with StopRequest() as stop:
        ...     for step in range(3):
        ...         if stop.requested:
        ...             break
        >>> stop.requested
        False
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)
    repeat_window = 1.0
    # Under DDP every rank must stop after the same step: ranks agree on a stop request every this
    # many steps (one small all-reduce and host sync; a single process checks every step for free).
    check_every = 10

    def __init__(self) -> None:
        self.requested = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested:
            if now - self._first < self.repeat_window:
                return  # the same stop request, delivered twice
            raise KeyboardInterrupt
        self.requested, self._first = True, now
        logger.warning(
            "%s: stopping after the current step and saving; press Ctrl-C again to abort without saving",
            signal.Signals(signum).name,
        )

    def agreed(self, step: int, *, world: int = 1, device: torch.device | None = None) -> bool:
        """Whether the loop stops after ``step``: this process's request, or under DDP the ranks'.

        With ``world > 1`` the ranks vote every ``check_every`` steps (a MAX all-reduce of their
        requests), so all of them stop after the same step and none is left waiting in the next
        collective; between votes the answer is no.

        Args:
            step: The step just finished.
            world: Number of processes in the default process group.
            device: Where the vote's tensor lives (the NCCL device under CUDA).
        """
        if world == 1:
            return self.requested
        if step % self.check_every:
            return False
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def ignore_stop_signals(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: leave Ctrl-C and SIGTERM to the training process.

    A terminal's Ctrl-C (and a batch system's SIGTERM) reaches every process of the job. Workers
    that died of it would fail the batch the training loop still needs to finish its step before
    saving; the loop shuts its workers down itself, and they exit when their parent does.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
