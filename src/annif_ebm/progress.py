"""Progress of the long phases of training: a tqdm bar on a terminal, log
lines (phase, done/total, rate, ETA) every :data:`LOG_INTERVAL` seconds when
stderr is not a terminal (batch jobs, CI, ``nohup``), so a run is never silent
for minutes. A phase with nothing to do shows nothing."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

from annif import logger

LOG_INTERVAL = 30.0  # seconds between progress lines without a terminal


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


class LogProgress:
    """Counts like a tqdm bar; logs a line at most every ``interval`` seconds
    and one when the phase ends."""

    def __init__(self, total: int, description: str, unit: str,
                 interval: float | None = None) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.units = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
        self.interval = LOG_INTERVAL if interval is None else interval
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            logger.info(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        percent = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.description}: {self.done}/{self.total} {self.units} ({percent:.0f}%), "
                f"{rate:.1f} {self.units}/s, elapsed {tqdm.format_interval(elapsed)}, "
                f"ETA {tqdm.format_interval(eta) if eta != float('inf') else '?'}")

    def close(self) -> None:
        elapsed = time.monotonic() - self.start
        logger.info(f"{self.description}: {self.done}/{self.total} {self.units} done in "
                    f"{tqdm.format_interval(elapsed)}")


@contextlib.contextmanager
def progress_bar(total: int, description: str, unit: str,
                 enabled: bool = True) -> Iterator[tqdm | LogProgress | _Silent]:
    """Something with ``update(n)`` for a phase of ``total`` units."""
    if not enabled or total <= 0:
        yield _Silent()
    elif sys.stderr.isatty():
        with tqdm(total=total, desc=description, unit=unit) as bar:
            yield bar
    else:
        bar = LogProgress(total, description, unit)
        yield bar
        bar.close()  # only when the phase ended well
