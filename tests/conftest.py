"""Shared fixtures: real data from examples/, the real bundled model, and a
helper to run the real ``annif`` command in a subprocess."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"
ANNIF = str(pathlib.Path(sys.executable).parent / "annif")

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never download


def read_tsv_lines(path: pathlib.Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return [line for _, line in zip(range(n), file)]


@pytest.fixture(scope="session")
def embedder():
    """The bundled default model, loaded once on the CPU."""
    from annif_ebm.embedding import load_encoder
    from annif_ebm.params import EbmParams

    params = EbmParams.parse({"device": "cpu"})
    return load_encoder(params.embedding, params.api)


class AnnifEnv:
    """A directory with a projects file and a datadir; runs the annif CLI there."""

    def __init__(self, path: pathlib.Path, projects: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        (path / "projects.cfg").write_text(projects, encoding="utf-8")

    def env(self) -> dict:
        env = dict(os.environ)
        env["ANNIF_PROJECTS"] = str(self.path / "projects.cfg")
        env["ANNIF_DATADIR"] = str(self.path / "data")
        env["HF_HUB_OFFLINE"] = "1"
        return env

    def run(self, *args: str, check: bool = True, stdin: str | None = None,
            timeout: float = 900, extra_env: dict | None = None):
        result = subprocess.run(
            [ANNIF, *args],
            cwd=self.path,
            env={**self.env(), **(extra_env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"annif {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def project_dir(self, project_id: str) -> pathlib.Path:
        return self.path / "data" / "projects" / project_id

    def copy_to(self, target: pathlib.Path) -> AnnifEnv:
        shutil.copytree(self.path, target)
        copy = AnnifEnv.__new__(AnnifEnv)
        copy.path = target
        return copy


# min_train_docs=0: these projects train a ranker of their own from a few
# hundred documents, so that the training plumbing is what the tests exercise
# (by default so few documents rank with the shipped general ranker:
# test_zero_shot.py)
EBM_PROJECT = """
[ebm-en]
name=EBM English
language=en
backend=ebm
vocab=gnd
min_train_docs=0
"""


def parse_metrics(output: str) -> dict[str, float]:
    metrics = {}
    for line in output.splitlines():
        if ":" in line:
            name, _, value = line.rpartition(":")
            try:
                metrics[name.strip()] = float(value)
            except ValueError:
                pass
    return metrics


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Small train/test files cut from the bundled example data."""
    path = tmp_path_factory.mktemp("corpus")
    (path / "train.tsv").write_text("".join(read_tsv_lines(EXAMPLES / "train.tsv", 250)))
    (path / "test.tsv").write_text("".join(read_tsv_lines(EXAMPLES / "test.tsv", 60)))
    return {"train": path / "train.tsv", "test": path / "test.tsv",
            "vocab": EXAMPLES / "gnd-sample.tsv"}


@pytest.fixture(scope="session")
def trained_env(tmp_path_factory, sample_corpus) -> AnnifEnv:
    """An annif environment with a trained ``ebm-en`` project (shared: tests
    that change it must work on a copy)."""
    env = AnnifEnv(tmp_path_factory.mktemp("annif") / "env", EBM_PROJECT)
    env.run("load-vocab", "--language", "en", "gnd", str(sample_corpus["vocab"]))
    env.run("train", "ebm-en", str(sample_corpus["train"]))
    return env
