"""Progress bars that suit where the output goes: a live bar on a terminal, one line per bar in a log file.

tqdm redraws its bar with ``\\r`` several times a second. On a terminal that is one line that moves; in a
redirected log (``python pipelines/sweep.py > sweep.log 2>&1``, a Ray worker's log, a CI job) every redraw
stays, and a sweep's log fills with thousands of half-lines a person cannot read. :func:`progress_bar` gives the
usual tqdm bar when stderr is a terminal and, when it is not, a bar that draws nothing while it runs and
writes one plain line when it is finished: what it counted, how many, how long it took, how fast.

    for i in progress_bar(range(len(dataset)), desc="loading train", unit="img"):
        ...
    with progress_bar(total=size, desc=name, unit="B", unit_scale=True) as bar:
        bar.update(len(chunk))
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.std import tqdm

__all__ = ["LineBar", "progress_bar"]


class _Discard:
    """A text stream that swallows what tqdm draws: the line bar writes its one line itself."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LineBar(tqdm):
    """A tqdm bar that draws nothing while it runs and writes one line to stderr when it is closed.

    It counts, takes a postfix and closes like any tqdm bar (the call sites need not know which they got);
    only the drawing differs. A bar made with ``disable=True`` writes nothing at all, as tqdm's does.
    """

    monitor_interval = 0  # no monitor thread: nothing is drawn, so nothing needs waking up

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["file"] = _Discard()
        kwargs["mininterval"] = float("inf")  # never redraw on update(): only the closing line counts
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        return True  # nothing to draw while the bar runs

    def close(self) -> None:
        was_running = not getattr(self, "disable", True)
        line = self.summary() if was_running else ""
        super().close()
        if was_running:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def summary(self) -> str:
        """``desc: n/total unit in mm:ss (rate unit/s), postfix``: the line a finished bar writes."""
        elapsed = self._time() - self.start_t
        sep = "" if self.unit_scale else " "

        def amount(value: float) -> str:
            if self.unit_scale:
                return tqdm.format_sizeof(value, divisor=self.unit_divisor)
            return f"{value:g}" if isinstance(value, float) else str(value)

        count = amount(self.n) + (f"/{amount(self.total)}" if self.total is not None else "")
        done = self.n - self.initial
        if elapsed <= 0:
            rate = "?"
        else:
            rate = amount(done / elapsed) if self.unit_scale else f"{done / elapsed:.1f}"
        text = f"{count}{sep}{self.unit} in {tqdm.format_interval(elapsed)} ({rate}{sep}{self.unit}/s)"
        if self.desc:
            text = f"{self.desc.rstrip(': ')}: {text}"
        if self.postfix:
            text += f", {self.postfix}"
        return text


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str | None = None,
    total: float | None = None,
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    **options: Any,
) -> tqdm:
    """A tqdm bar on a terminal; otherwise a :class:`LineBar` (one line on stderr when the bar finishes).

    Takes tqdm's arguments (``options``: ``unit_scale``, ``initial`` ...) and returns an object used like
    tqdm's: iterate it, or ``update()`` it and ``close()`` it (or use it as a context manager).
    """
    bar_class = tqdm if _is_terminal(sys.stderr) else LineBar
    return bar_class(iterable, desc=desc, total=total, unit=unit, disable=disable, leave=leave, **options)
