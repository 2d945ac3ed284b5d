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
import threading
import time
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
    with annif_projects(project_id) as (project,):
        yield project


@contextlib.contextmanager
def annif_projects(*project_ids: str):
    """Several projects of one ANNIF_PROJECTS/ANNIF_DATADIR, as annif_project."""
    import annif
    import annif.registry

    os.environ.setdefault("ANNIF_PROJECTS_INIT",
                          "^(" + "|".join(re.escape(p) for p in project_ids) + ")$")
    app = annif.create_flask_app()
    # Annif's Config reads these when annif is first imported: a later change
    # of the environment (the next dataset's workdir) must reach the app
    for key, variable in (("PROJECTS_CONFIG_PATH", "ANNIF_PROJECTS"), ("DATADIR", "ANNIF_DATADIR")):
        app.config[key] = os.environ.get(variable, app.config[key])
    with app.app_context():
        yield [annif.registry.get_project(p) for p in project_ids]


def timed_run(cmd: list[str], env: dict | None = None, log: Path | None = None,
              trace: Path | None = None) -> dict:
    """Run ``cmd`` under GNU time; return wall seconds, peak RSS (MB), stdout.
    With ``trace``: also sample the command's RSS twice a second into that
    file (seconds, MB, the last line it logged before) and return where the
    peak came (``peak_after``: that last log line)."""
    process = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr_lines: list[str] = []
    readers = [threading.Thread(target=lambda: stderr_lines.extend(process.stderr))]
    stdout = []
    readers.append(threading.Thread(target=lambda: stdout.append(process.stdout.read())))
    for reader in readers:
        reader.start()
    samples = []
    if trace is not None:
        start = time.monotonic()
        while process.poll() is None:
            rss = _child_rss_mb(process.pid)
            if rss is not None:
                samples.append((time.monotonic() - start, rss, _last_log_line(stderr_lines)))
            time.sleep(0.5)
    process.wait()
    for reader in readers:
        reader.join()
    stderr = "".join(stderr_lines)
    if log is not None:
        log.write_text(stdout[0] + "\n" + stderr, encoding="utf-8")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    result = {**time_stats(stderr), "stdout": stdout[0]}
    if trace is not None:
        trace.write_text("seconds\trss_mb\tlast_log_line\n" + "".join(
            f"{t:.1f}\t{rss:.0f}\t{line}\n" for t, rss, line in samples), encoding="utf-8")
        if samples:
            result["peak_after"] = max(samples, key=lambda s: s[1])[2]
    return result


def _last_log_line(lines: list[str]) -> str:
    """The last line that is a log message, not a warning or its source line."""
    for line in reversed(lines):
        if line.strip() and not line[0].isspace() and "Warning" not in line:
            return line.strip()
    return ""


def _child_rss_mb(pid: int) -> float | None:
    """RSS (MB) of the process that ``pid`` (GNU time) runs, None before it starts."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        status = Path(f"/proc/{children[0]}/status").read_text()
    except (OSError, IndexError):
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


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


def write_report(name: str, tag: str, title: str, facts: list[str], rows: list[dict],
                 columns: list[str]) -> str:
    """Write bench/results/<name>-<date>[-<tag>].md: the title, the machine,
    ``facts`` (list items), the command that ran and the table; print it."""
    script = Path(sys.argv[0]).name
    text = "\n".join([
        f"# {title}", "", *machine_facts(), *facts,
        f"- command: `python bench/{script} {' '.join(sys.argv[1:])}`", "",
        markdown_table(rows, columns), "",
    ])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{datetime.date.today()}{'-' + tag if tag else ''}.md"
    out.write_text(text, encoding="utf-8")
    print(text)
    return text
