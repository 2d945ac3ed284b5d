"""Progress of the long phases: log lines when stderr is not a terminal."""

import logging

from annif_ebm import progress
from annif_ebm.progress import LogProgress, progress_bar


def test_without_a_terminal_progress_is_logged_with_rate_and_eta(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="annif"):
        with progress_bar(10, "train chunks", "text") as bar:  # pytest's stderr is no TTY
            assert isinstance(bar, LogProgress)
            for _ in range(4):
                bar.update(1)
            bar.update(6)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train chunks: 1/10 texts (10%), ")
    assert "texts/s" in lines[0] and "ETA " in lines[0]
    assert lines[-1].startswith("train chunks: 10/10 texts done in ")
    assert len(lines) == 5  # after each of the first 4 updates, then the end


def test_progress_lines_come_at_most_once_per_interval(caplog):
    with caplog.at_level(logging.INFO, logger="annif"):
        bar = LogProgress(1000, "labels", "text", interval=3600)
        for _ in range(1000):
            bar.update(1)
        bar.close()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["labels"]


def test_an_empty_phase_shows_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="annif"):
        with progress_bar(0, "labels", "text") as bar:
            bar.update(0)
    assert caplog.records == []
