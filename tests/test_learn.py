"""``annif learn`` through the real ``annif`` command: learnt documents join
the kNN memory and the priors at once, atomically, within ``knn_docs``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from annif_ebm.store import LabelStore

from .conftest import ANNIF, AnnifEnv

pytestmark = pytest.mark.slow

BIRDS = [
    "Observations of migratory birds resting on the Baltic coast in spring.",
    "Counting cranes and geese that rest on the shores of the Baltic Sea during migration.",
    "Spring migration of waders along the Baltic coastline: a survey of resting sites.",
    "Where migrating birds rest on the southern Baltic coast, and for how long.",
    "Bird migration over the Baltic Sea: resting cranes, geese and waders on the coast.",
    "Resting places of migratory birds on Baltic beaches and lagoons in spring.",
]
QUERY = "Migratory birds that rest along the coast of the Baltic Sea each spring."


def learning_env(trained_env: AnnifEnv, path) -> AnnifEnv:
    env = trained_env.copy_to(path)
    config = env.path / "projects.cfg"
    config.write_text(config.read_text() + "allow_learn=true\n", encoding="utf-8")
    return env


def suggested(env: AnnifEnv, text: str, limit: int = 10) -> list[str]:
    out = env.run("suggest", "ebm-en", "--limit", str(limit), stdin=text).stdout
    return [line.split("\t")[0].strip("<>") for line in out.splitlines()]


def unused_subject(env: AnnifEnv, train_path, vocab_path) -> str:
    """A vocabulary subject no training document has and that the bird texts
    do not suggest: only learnt documents can bring it in."""
    used = {uri.strip("<>") for line in train_path.read_text().splitlines()
            for uri in line.split("\t")[1].split()}
    before = set(suggested(env, QUERY, 100))
    for line in vocab_path.read_text().splitlines():
        uri = line.split("\t")[0].strip("<>")
        if uri not in used and uri not in before:
            return uri
    raise AssertionError("every subject of the vocabulary is used or suggested")


def store_documents(env: AnnifEnv) -> int:
    project = env.project_dir("ebm-en")
    metadata = json.loads((project / "ebm-model.json").read_text())
    return len(LabelStore(str(project / metadata["store_file"])).training_documents())


def test_learnt_documents_are_suggested_from_at_once(trained_env, sample_corpus, tmp_path):
    env = learning_env(trained_env, tmp_path / "env")
    subject = unused_subject(env, sample_corpus["train"], sample_corpus["vocab"])
    corpus = tmp_path / "learn.tsv"
    corpus.write_text("".join(f"{text}\t<{subject}>\n" for text in BIRDS)
                      + "A document without subjects.\t\n", encoding="utf-8")
    project = env.project_dir("ebm-en")
    before = json.loads((project / "ebm-model.json").read_text())
    n_before = store_documents(env)

    result = env.run("learn", "ebm-en", str(corpus))
    assert "learnt 6 documents into the kNN memory and priors (1 without text or subjects " \
           "skipped)" in result.stderr
    after = json.loads((project / "ebm-model.json").read_text())
    # a new store; nothing else changed: no label embedded again, the same ranker
    assert after["store_file"] != before["store_file"]
    assert not (project / before["store_file"]).exists()
    assert {k: v for k, v in after.items() if k not in ("store_file", "created")} == {
        k: v for k, v in before.items() if k not in ("store_file", "created")}
    assert store_documents(env) == n_before + 6
    assert subject in suggested(env, QUERY)
    assert not list(project.glob("tmp-*"))


def test_knn_docs_caps_the_memory_and_learning_needs_allow_learn(trained_env, sample_corpus,
                                                                 tmp_path):
    env = trained_env.copy_to(tmp_path / "plain")
    corpus = tmp_path / "learn.tsv"
    subject = unused_subject(env, sample_corpus["train"], sample_corpus["vocab"])
    corpus.write_text("".join(f"{text}\t<{subject}>\n" for text in BIRDS), encoding="utf-8")
    result = env.run("learn", "ebm-en", str(corpus), check=False)
    assert result.returncode != 0 and "Learning not enabled" in result.stderr

    env = learning_env(trained_env, tmp_path / "capped")
    env.run("learn", "ebm-en", str(corpus), "-b", "ebm.knn_docs=100")
    assert store_documents(env) == 100  # the oldest went, the learnt ones stayed
    assert subject in suggested(env, QUERY)
    # their first words, for explanations, stayed with them
    project = env.project_dir("ebm-en")
    metadata = json.loads((project / "ebm-model.json").read_text())
    openings = LabelStore(str(project / metadata["store_file"])).document_openings(range(100))
    assert [openings[doc] for doc in range(100 - len(BIRDS), 100)] == BIRDS


def test_a_failed_or_killed_learn_leaves_the_project_as_it_was(trained_env, sample_corpus,
                                                               tmp_path):
    env = learning_env(trained_env, tmp_path / "env")
    project = env.project_dir("ebm-en")
    files = sorted(p.name for p in project.iterdir())
    expected = suggested(env, QUERY)
    useless = tmp_path / "useless.tsv"
    useless.write_text("No subjects here.\t\n", encoding="utf-8")
    result = env.run("learn", "ebm-en", str(useless), check=False)
    assert result.returncode != 0 and "no document has both text and subjects" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in project.iterdir()) == files

    # killed while it adds documents: the copy it worked on is all it leaves
    big = tmp_path / "big.tsv"
    lines = sample_corpus["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    big.write_text("".join(lines * 8), encoding="utf-8")
    process = subprocess.Popen([ANNIF, "learn", "ebm-en", str(big)], env=env.env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(project.glob("tmp-ebm-labels-*")) and time.monotonic() < deadline:
        assert process.poll() is None, "learn ended before it was killed"
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert sorted(p.name for p in project.iterdir() if not p.name.startswith("tmp-")) == files
    assert suggested(env, QUERY) == expected
    # the next learn removes what the killed one left, and works
    corpus = tmp_path / "learn.tsv"
    corpus.write_text(f"{BIRDS[0]}\t{lines[0].split(chr(9))[1]}", encoding="utf-8")
    result = env.run("learn", "ebm-en", str(corpus))
    assert "removed files of an interrupted training run" in result.stderr
    assert not list(project.glob("tmp-*"))


def test_a_running_backend_suggests_with_what_another_process_learnt(trained_env, sample_corpus,
                                                                    tmp_path):
    """A server (here Annif's registry in this process) loads the model again
    when a learn (or train) in another process has committed a new one."""
    import annif
    from annif.corpus import Document
    from annif.registry import AnnifRegistry

    env = learning_env(trained_env, tmp_path / "env")
    subject = unused_subject(env, sample_corpus["train"], sample_corpus["vocab"])
    corpus = tmp_path / "learn.tsv"
    corpus.write_text("".join(f"{text}\t<{subject}>\n" for text in BIRDS), encoding="utf-8")
    app = annif.create_flask_app()
    with app.app_context():
        registry = AnnifRegistry(str(env.path / "projects.cfg"), str(env.path / "data"), False)
        app.annif_registry = registry
        project = registry.get_project("ebm-en")

        def top_uris():
            batch = project.suggest([Document(text=QUERY)])
            return [project.subjects[hit.subject_id].uri for hit in batch.filter(limit=10)[0]]

        assert subject not in top_uris()
        env.run("learn", "ebm-en", str(corpus))
        assert subject in top_uris()
