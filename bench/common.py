"""Helpers shared by the benchmark scripts: timed subprocesses, machine facts,
markdown tables."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DATA_ROOT = BENCH.parent.parent / "shared" / "data"

DATASETS = {
    "tibcore-en": ("gnd-core-en.tsv", "train.tsv", "validate.tsv"),
    "yso-finna-en": ("yso-en.tsv", "train-100k.tsv", "validate.tsv"),
}


@contextlib.contextmanager
def annif_project(project_id: str):
    """An Annif project from ANNIF_PROJECTS/ANNIF_DATADIR, inside an app context;
    only that project is initialised, so other projects' models cost nothing."""
    import annif
    import annif.registry

    os.environ.setdefault("ANNIF_PROJECTS_INIT", f"^{re.escape(project_id)}$")
    with annif.create_flask_app().app_context():
        yield annif.registry.get_project(project_id)


def timed_run(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``cmd`` under GNU time; return wall seconds, peak RSS (MB), stdout."""
    result = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True
    )
    if log is not None:
        log.write_text(result.stdout + "\n" + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return {**time_stats(result.stderr), "stdout": result.stdout}


def time_stats(text: str) -> dict:
    """Wall seconds and peak RSS (MB) from GNU time -v output."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    return {"wall_s": _seconds(wall.group(1)), "peak_rss_mb": int(rss.group(1)) / 1024}


def _seconds(clock: str) -> float:
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def machine_facts() -> list[str]:
    versions = []
    for package in ("annif-ebm", "annif", "torch", "sentence-transformers", "duckdb",
                    "polars", "xgboost-cpu"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        match = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1) if match else cpu
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}",
        f"- versions: {', '.join(versions)}",
    ]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 1 else f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
