import annif.corpus  # noqa: F401  (Annif needs this import order)
import pytest
from annif.vocab import VocabFileSKOS, VocabFileTSV
from annif.vocab.vocab import AnnifVocabulary

from annif_ebm.labels import vocabulary_labels

from .conftest import SHARED_DATA

SKOS = """
@prefix skos: <http://www.w3.org/2004/02/skos/core#> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix ex: <http://example.org/> .

ex:c1 a skos:Concept ; skos:prefLabel "Economics"@en, "Volkswirtschaftslehre"@de ;
    skos:altLabel "Economic science"@en, "Ökonomie"@de .
ex:c2 a skos:Concept ; skos:prefLabel "Labour market"@en ;
    skos:altLabel "Labor market"@en-US, "Labour market"@en .
ex:c3 a skos:Concept ; skos:prefLabel "Nur Deutsch"@de .
ex:c4 a skos:Concept ; skos:prefLabel "Old concept"@en ; owl:deprecated true .
"""


def load_vocab(tmp_path, source):
    vocab = AnnifVocabulary("v", str(tmp_path / "data"))
    vocab.load_vocabulary(source)
    return vocab


@pytest.fixture
def skos_vocab(tmp_path):
    path = tmp_path / "v.ttl"
    path.write_text(SKOS, encoding="utf-8")
    return load_vocab(tmp_path, VocabFileSKOS(str(path)))


def as_set(labels, vocab):
    return {
        (vocab.subjects[int(c)].uri.rsplit("/", 1)[1], text, bool(pref))
        for text, c, pref in zip(labels.texts, labels.concept_ids, labels.is_pref)
    }


def test_pref_and_alt_labels_in_the_project_language_only(skos_vocab):
    labels = vocabulary_labels(skos_vocab.skos.graph, skos_vocab.subjects, "en", True)
    assert as_set(labels, skos_vocab) == {
        ("c1", "Economics", True),
        ("c1", "Economic science", False),
        ("c2", "Labour market", True),  # also an altLabel: kept once, as prefLabel
        ("c2", "Labor market", False),  # en-US counts as en
    }


def test_altlabels_can_be_switched_off(skos_vocab):
    labels = vocabulary_labels(skos_vocab.skos.graph, skos_vocab.subjects, "en", False)
    assert set(labels.texts) == {"Economics", "Labour market"}
    assert labels.is_pref.all()


def test_other_language(skos_vocab):
    labels = vocabulary_labels(skos_vocab.skos.graph, skos_vocab.subjects, "de", True)
    assert set(labels.texts) == {"Volkswirtschaftslehre", "Ökonomie", "Nur Deutsch"}


def test_tsv_vocabulary_gives_preflabels(tmp_path):
    path = tmp_path / "v.tsv"
    path.write_text("<http://ex.org/a>\tApples\n<http://ex.org/b>\tPears\n")
    vocab = load_vocab(tmp_path, VocabFileTSV(str(path), "en"))
    labels = vocabulary_labels(vocab.skos.graph, vocab.subjects, "en", True)
    assert sorted(labels.texts) == ["Apples", "Pears"]
    assert labels.is_pref.all()


@pytest.mark.skipif(not (SHARED_DATA / "stw").exists(), reason="shared data not present")
def test_real_stw_thesaurus(tmp_path):
    vocab = load_vocab(tmp_path, VocabFileSKOS(str(SHARED_DATA / "stw" / "stw-skos.ttl")))
    en = vocabulary_labels(vocab.skos.graph, vocab.subjects, "en", True)
    de = vocabulary_labels(vocab.skos.graph, vocab.subjects, "de", True)
    en_pref = vocabulary_labels(vocab.skos.graph, vocab.subjects, "en", False)
    assert len(en_pref) >= 5000
    assert len(en) > 1.5 * len(en_pref)  # STW has many English altLabels
    assert not set(en.texts) & {"Volkswirtschaftslehre", "Arbeitsmarkt"}
    assert "Arbeitsmarkt" in de.texts
