"""End to end through the real ``annif`` command in subprocesses."""

import json
import re
import subprocess
import sys

import pytest

from .conftest import EBM_PROJECT, AnnifEnv, parse_metrics

pytestmark = pytest.mark.slow

TEXT = "Deep learning with artificial neural networks for image recognition."


def test_backend_registers_itself_on_annif_import():
    code = "import annif.backend; print(annif.backend.get_backend('ebm').__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "EbmBackend", result.stderr


def test_explicit_register_is_idempotent():
    code = (
        "import annif_ebm, annif.backend; annif_ebm.register(); annif_ebm.register();"
        "print(annif.backend.get_backend('ebm').name)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ebm", result.stderr


def test_other_programs_do_not_import_annif():
    code = "import sys; print('annif' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False False"


def test_list_projects_shows_the_ebm_project(trained_env):
    result = trained_env.run("list-projects")
    line = next(line for line in result.stdout.splitlines() if line.startswith("ebm-en"))
    assert "True" in line  # trained


def test_eval_gives_useful_metrics(trained_env, sample_corpus):
    metrics = parse_metrics(trained_env.run("eval", "ebm-en", str(sample_corpus["test"])).stdout)
    assert metrics["Documents evaluated"] == 60
    assert metrics["F1@5"] > 0.2
    assert metrics["NDCG"] > 0.35


def test_suggest_finds_subjects_by_meaning(trained_env):
    result = trained_env.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT)
    lines = result.stdout.strip().splitlines()
    assert 1 <= len(lines) <= 5
    labels = [line.split("\t")[1] for line in lines]
    scores = [float(line.split("\t")[2]) for line in lines]
    assert {"Deep learning", "Neural network", "Image recognition"} & set(labels[:3])
    assert all(0 < s <= 1 for s in scores) and scores == sorted(scores, reverse=True)


def test_suggest_empty_document_gives_no_subjects(trained_env):
    assert trained_env.run("suggest", "ebm-en", stdin="").stdout.strip() == ""


def test_index_a_directory(trained_env, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(TEXT)
    (docs / "b.txt").write_text("Labour market policy and unemployment in Germany.")
    (docs / "empty.txt").write_text("")
    trained_env.run("index", "ebm-en", str(docs), "--limit", "3")
    assert len((docs / "a.annif").read_text().strip().splitlines()) == 3
    assert len((docs / "b.annif").read_text().strip().splitlines()) == 3
    assert (docs / "empty.annif").read_text().strip() == ""


def test_runtime_overrides_at_eval_give_the_same_results(trained_env, sample_corpus):
    test = str(sample_corpus["test"])
    default = parse_metrics(trained_env.run("eval", "ebm-en", test).stdout)
    overridden = parse_metrics(trained_env.run(
        "eval", "ebm-en", test, "-b", "ebm.device=cpu", "-b", "ebm.torch_threads=1",
        "-b", "ebm.batch_size=7", "-b", "ebm.duckdb_threads=1", "-b", "ebm.xgb_jobs=1",
    ).stdout)
    assert overridden["F1@5"] == pytest.approx(default["F1@5"], abs=1e-4)
    assert overridden["NDCG"] == pytest.approx(default["NDCG"], abs=1e-4)


def test_parallel_eval_jobs_give_the_same_results(trained_env, sample_corpus):
    test = str(sample_corpus["test"])
    one = parse_metrics(trained_env.run("eval", "ebm-en", test, "--jobs", "1").stdout)
    two = parse_metrics(trained_env.run("eval", "ebm-en", test, "--jobs", "2").stdout)
    assert two["F1@5"] == pytest.approx(one["F1@5"], abs=1e-4)
    assert two["Documents evaluated"] == one["Documents evaluated"]


def test_unseen_boost_raises_only_subjects_that_no_training_document_has(trained_env,
                                                                         sample_corpus):
    """The default unseen_boost lifts the scores of subjects that no training
    document has, and leaves the others' alone (unseen_boost=0: the ranker's
    own probabilities)."""
    seen = {uri for line in sample_corpus["train"].read_text(encoding="utf-8").splitlines()
            for uri in re.findall(r"<([^>]+)>", line.split("\t")[1])}

    def scores(*args: str) -> dict[str, float]:
        out = trained_env.run("suggest", "ebm-en", "--limit", "40", *args, stdin=TEXT).stdout
        return {line.split("\t")[0].strip("<>"): float(line.split("\t")[2])
                for line in out.strip().splitlines()}

    plain, boosted = scores("-b", "ebm.unseen_boost=0"), scores()
    both = plain.keys() & boosted.keys()
    unseen, known = [u for u in both if u not in seen], [u for u in both if u in seen]
    scored = [u for u in unseen if 0.001 <= plain[u] <= 0.99]  # annif prints 4 decimals
    assert scored and known
    assert all(boosted[u] > plain[u] + 0.0001 for u in scored)
    assert all(boosted[u] >= plain[u] for u in unseen)
    assert all(boosted[u] == pytest.approx(plain[u], abs=1e-4) for u in known)


def test_conflicting_model_setting_is_a_clear_error(trained_env):
    result = trained_env.run(
        "suggest", "ebm-en", "-b", "ebm.truncate_dim=64", stdin=TEXT, check=False
    )
    assert result.returncode != 0
    assert "truncate_dim" in result.stderr and "64" in result.stderr
    assert "it defines the stored vectors" in result.stderr
    assert "Traceback" not in result.stderr
    result = trained_env.run(
        "suggest", "ebm-en", "-b", "ebm.knn_neighbors=5", stdin=TEXT, check=False
    )
    assert result.returncode != 0 and "knn_neighbors" in result.stderr
    assert "it defines the ranker's features" in result.stderr


def test_bad_parameter_value_is_a_clear_error(trained_env):
    result = trained_env.run("suggest", "ebm-en", "-b", "ebm.batch_size=lots",
                             stdin=TEXT, check=False)
    assert result.returncode != 0 and "batch_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_cached_retrains_only_the_ranker(trained_env, sample_corpus, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    before = json.loads((env.project_dir("ebm-en") / "ebm-model.json").read_text())
    env.run("train", "ebm-en", "--cached", "-b", "ebm.xgb_rounds=50")
    after = json.loads((env.project_dir("ebm-en") / "ebm-model.json").read_text())
    assert after["store_file"] == before["store_file"]
    assert after["ranker_file"] != before["ranker_file"]
    assert after["train_params"]["xgb_rounds"] == 50
    files = {p.name for p in env.project_dir("ebm-en").iterdir()}
    assert before["ranker_file"] not in files and after["ranker_file"] in files
    metrics = parse_metrics(env.run("eval", "ebm-en", str(sample_corpus["test"])).stdout)
    assert metrics["F1@5"] > 0.15


def test_copied_and_moved_project_keeps_working(trained_env, tmp_path):
    expected = trained_env.run("suggest", "ebm-en", stdin=TEXT).stdout
    copy = trained_env.copy_to(tmp_path / "copy")
    original = trained_env.path
    moved = original.with_name(original.name + "-moved")
    original.rename(moved)
    try:
        assert copy.run("suggest", "ebm-en", stdin=TEXT).stdout == expected
    finally:
        moved.rename(original)
    metadata = (copy.project_dir("ebm-en") / "ebm-model.json").read_text()
    assert str(original) not in metadata and "/" not in json.loads(metadata)["store_file"]


def test_failed_training_leaves_the_previous_model_usable(trained_env, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    project = env.project_dir("ebm-en")
    expected = env.run("suggest", "ebm-en", stdin=TEXT).stdout
    files_before = sorted(p.name for p in project.iterdir())
    corpus = tmp_path / "unknown-subjects.tsv"
    corpus.write_text("A text about economics.\t<http://example.org/not-in-vocab>\n")
    result = env.run("train", "ebm-en", str(corpus), check=False)
    assert result.returncode != 0
    assert "no document has subjects" in result.stderr
    assert sorted(p.name for p in project.iterdir()) == files_before
    assert env.run("suggest", "ebm-en", stdin=TEXT).stdout == expected


def test_suggest_before_training_is_a_clear_error(tmp_path, sample_corpus):
    env = AnnifEnv(tmp_path / "fresh", EBM_PROJECT)
    env.run("load-vocab", "--language", "en", "gnd", str(sample_corpus["vocab"]))
    result = env.run("suggest", "ebm-en", stdin=TEXT, check=False)
    assert result.returncode != 0 and "not trained" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("role", ["metadata", "store_file", "ranker_file"])
def test_missing_model_file_is_named_in_the_error(trained_env, tmp_path, role):
    env = trained_env.copy_to(tmp_path / "env")
    project = env.project_dir("ebm-en")
    metadata = json.loads((project / "ebm-model.json").read_text())
    name = "ebm-model.json" if role == "metadata" else metadata[role]
    (project / name).unlink()
    result = env.run("suggest", "ebm-en", stdin=TEXT, check=False)
    assert result.returncode != 0
    assert str(project / name) in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_corpus_trains_zero_shot_and_one_without_subjects_is_an_error(
        tmp_path, sample_corpus):
    """An empty corpus file is what Annif reads without one: a zero-shot model
    (tests/test_zero_shot.py); documents none of which has a subject of the
    vocabulary are a mistake, and the model stays as it was."""
    env = AnnifEnv(tmp_path / "fresh", EBM_PROJECT)
    env.run("load-vocab", "--language", "en", "gnd", str(sample_corpus["vocab"]))
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    result = env.run("train", "ebm-en", str(empty))
    assert "the training corpus is empty: a zero-shot model" in result.stderr
    model = (env.project_dir("ebm-en") / "ebm-model.json").read_text()
    assert json.loads(model)["ranker_source"] == "general"
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("A text about birds.\t<http://example.org/not-in-gnd>\n")
    result = env.run("train", "ebm-en", str(unknown), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no document has subjects of vocabulary 'gnd'" in result.stderr
    assert (env.project_dir("ebm-en") / "ebm-model.json").read_text() == model


def test_retraining_with_the_same_model_embeds_nothing_again(trained_env, sample_corpus, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    result = env.run("train", "ebm-en", str(sample_corpus["train"]),
                     "-b", "ebm.max_train_docs=100")
    assert "labels: embedded 0 with" in result.stderr
    assert "embedded 0 new chunks" in result.stderr
    assert "training the ranker on 100 of 250 documents" in result.stderr
    metadata = json.loads((env.project_dir("ebm-en") / "ebm-model.json").read_text())
    assert metadata["n_train_docs"] == 100 and metadata["train_params"]["max_train_docs"] == 100
    # a model-defining change (here the prompt) embeds everything anew
    result = env.run("train", "ebm-en", str(sample_corpus["train"]),
                     "-b", "ebm.max_train_docs=20", "-b", "ebm.query_prompt=query: ")
    assert "embedded 0 new chunks" not in result.stderr
    assert "labels: embedded 0 with" in result.stderr  # the label prompt is unchanged


def test_static_embedding_model_is_distilled_stored_and_used(trained_env, sample_corpus, tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    project = env.project_dir("ebm-en")
    env.run("train", "ebm-en", str(sample_corpus["train"]),
            "-b", "ebm.static_embedding=true", "-b", "ebm.static_dims=128")
    metadata = json.loads((project / "ebm-model.json").read_text())
    static_dir = project / metadata["model_dir"]
    assert metadata["model"]["static_embedding"] is True and metadata["dimension"] == 128
    assert (static_dir / "model.safetensors").exists()
    # suggest loads the distilled model from the project, not the base model
    result = env.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT)
    assert len(result.stdout.strip().splitlines()) == 5
    metrics = parse_metrics(env.run("eval", "ebm-en", str(sample_corpus["test"])).stdout)
    assert metrics["F1@5"] > 0.1
    # a normal retrain replaces it and removes the static model's folder
    env.run("train", "ebm-en", str(sample_corpus["train"]), "-b", "ebm.max_train_docs=50")
    assert not static_dir.exists()
    # (the default model exported to ONNX Runtime: a folder of its own)
    assert json.loads((project / "ebm-model.json").read_text())["model_dir"].startswith("ebm-onnx-")


def test_finetuned_model_is_stored_used_portable_and_safe_to_retrain(trained_env, sample_corpus,
                                                                     tmp_path):
    env = trained_env.copy_to(tmp_path / "env")
    project = env.project_dir("ebm-en")
    result = env.run("train", "ebm-en", str(sample_corpus["train"]),
                     "-b", "ebm.finetune=true", "-b", "ebm.finetune_docs=60")
    # the tuning documents are kept out of the ranker's sample
    assert "training the ranker on 190 of 250 documents, fine-tuning the embedding model on " \
           "60 others" in result.stderr
    assert "fine-tuned the embedding model" in result.stderr
    metadata = json.loads((project / "ebm-model.json").read_text())
    tuned_dir = project / metadata["model_dir"]
    assert metadata["model_dir"].startswith("ebm-tuned-") and metadata["model"]["finetune"] is True
    # exported to ONNX Runtime with int8 weights after tuning (the CPU default)
    assert metadata["model"]["encode_backend"] == "onnx"
    assert (tuned_dir / "onnx" / "model_int8.onnx").exists()
    assert metadata["n_train_docs"] == 190
    # suggest loads the tuned model from the project (no base model, no network)
    result = env.run("suggest", "ebm-en", "--limit", "5", "-b", "ebm.device=cpu", stdin=TEXT)
    assert f"loading embedding model {tuned_dir} on cpu" in result.stderr
    expected = result.stdout
    assert len(expected.strip().splitlines()) == 5
    metrics = parse_metrics(env.run("eval", "ebm-en", str(sample_corpus["test"])).stdout)
    assert metrics["F1@5"] > 0.2
    # a copy elsewhere works while the original is gone
    copy = env.copy_to(tmp_path / "copy")
    moved = env.path.with_name("env-moved")
    env.path.rename(moved)
    try:
        assert copy.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT).stdout == expected
    finally:
        moved.rename(env.path)
    # --cached retrains the ranker on the tuned model's candidates
    env.run("train", "ebm-en", "--cached", "-b", "ebm.xgb_rounds=50")
    after = json.loads((project / "ebm-model.json").read_text())
    assert after["model_dir"] == metadata["model_dir"] and tuned_dir.exists()
    expected = env.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT).stdout
    # a fine-tune that fails (more hard negatives asked than the vocabulary has
    # prefLabels) leaves the tuned model in place and usable
    files_before = sorted(p.name for p in project.iterdir())
    result = env.run("train", "ebm-en", str(sample_corpus["train"]), "-b", "ebm.finetune=true",
                     "-b", "ebm.finetune_docs=60", "-b", "ebm.finetune_hard_negatives=100000",
                     check=False)
    assert result.returncode != 0 and "lower finetune_hard_negatives" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in project.iterdir()) == files_before
    assert env.run("suggest", "ebm-en", "--limit", "5", stdin=TEXT).stdout == expected
    # suggesting with finetune=false against a tuned project is the fixed-at-train error
    result = env.run("suggest", "ebm-en", "-b", "ebm.finetune=false", stdin=TEXT, check=False)
    assert result.returncode != 0 and "finetune" in result.stderr
