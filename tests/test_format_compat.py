"""A project trained by the code before the modules were reorganised (issue
17) loads and suggests identically with today's code: the old sources are
taken from git and put first on PYTHONPATH for training."""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from .conftest import EBM_PROJECT, ROOT, AnnifEnv, parse_metrics

# the last commit before the reorganisation (same file formats, other modules)
PREVIOUS = "a934c61829416174b34dd32963a5653601f4abff"
TEXTS = [
    "Unemployment, wages and the labour market in the European Union.",
    "Training deep neural networks for image recognition. Convolutional layers.",
]


def previous_sources(target) -> str:
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
                           capture_output=True)
    if known.returncode != 0:  # an export or a shallow clone without that commit
        pytest.skip(f"needs a git checkout with commit {PREVIOUS[:7]}")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", PREVIOUS, "src"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # the "data" filter where this Python has it (3.10.12+, 3.11.4+)
        tar.extractall(target, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return str(target / "src")


def test_a_project_trained_before_the_reorganisation_suggests_identically(
        tmp_path, sample_corpus):
    old = {"PYTHONPATH": previous_sources(tmp_path / "previous")}
    imported = subprocess.run(
        [sys.executable, "-c", "import annif_ebm.backend as b; print(b.__file__)"],
        env={**os.environ, **old}, capture_output=True, text=True, check=True).stdout
    assert imported.startswith(old["PYTHONPATH"])  # the old code is the one that trains
    # the old code knows no min_train_docs (it always trained its own ranker)
    env = AnnifEnv(tmp_path / "env", EBM_PROJECT.replace("min_train_docs=0\n", ""))
    env.run("load-vocab", "--language", "en", "gnd", str(sample_corpus["vocab"]))
    env.run("train", "ebm-en", str(sample_corpus["train"]), extra_env=old)
    # today's code ranks as the old one did with the boost of unseen subjects
    # (added later, at suggest time) switched off
    no_boost = ("-b", "ebm.unseen_boost=0")
    for text in TEXTS:
        before = env.run("suggest", "ebm-en", stdin=text, extra_env=old).stdout
        after = env.run("suggest", "ebm-en", *no_boost, stdin=text).stdout
        assert before.strip() and after == before
    metrics = [parse_metrics(env.run("eval", "ebm-en", str(sample_corpus["test"]), *args,
                                     extra_env=extra).stdout)
               for extra, args in ((old, ()), (None, no_boost))]
    assert metrics[0]["F1@5"] > 0 and metrics[1] == metrics[0]
    # the old run's candidates, which lack the features added since (the
    # lexical family), train a ranker again with today's code
    result = env.run("train", "ebm-en", "--cached")
    assert "reusing cached training candidates" in result.stderr
    assert env.run("suggest", "ebm-en", stdin=TEXTS[0]).stdout.strip()
    cached = parse_metrics(env.run("eval", "ebm-en", str(sample_corpus["test"]), *no_boost).stdout)
    assert cached["F1@5"] > 0.5 * metrics[0]["F1@5"]
