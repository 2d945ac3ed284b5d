"""Seconds spent per pipeline stage (chunk, embed, search, knn, features,
rank), for the log of a training run and for benchmarks."""

from __future__ import annotations

import collections
import contextlib
import time


class StageTimer:
    """Accumulates the wall time of named blocks in :attr:`seconds`."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {name: round(value, 2) for name, value in self.seconds.items()}
