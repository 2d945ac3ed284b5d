import numpy as np
import pytest
from annif.exception import OperationFailedException

from annif_ebm.features import FEATURE_NAMES
from annif_ebm.params import EbmParams
from annif_ebm.ranker import CALIBRATION_ATTR, Ranker, platt_scaling, relevance

PARAMS = EbmParams.parse({"xgb_rounds": "30"}).ranker
BINARY = EbmParams.parse({"xgb_rounds": "30", "xgb_objective": "binary"}).ranker


def data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.random((n, len(FEATURE_NAMES)), dtype=np.float32)
    gold = features[:, FEATURE_NAMES.index("max_score")] > 0.7
    return features, gold


def batches_of(features, gold, size=700, per_doc=10):
    """A fresh iterator of (features, gold, document ids) batches per call, as
    the store gives: ``per_doc`` rows per document, whole documents per batch."""
    docs = np.arange(len(gold)) // per_doc
    return lambda: ((features[i:i + size], gold[i:i + size], docs[i:i + size])
                    for i in range(0, len(gold), size))


def train(features, gold, tmp_path, params=PARAMS):
    return Ranker.train(batches_of(features, gold), params, str(tmp_path))


@pytest.mark.parametrize("params", [PARAMS, BINARY], ids=["pairwise", "binary"])
def test_ranker_learns_from_batches_and_scores_in_unit_interval(tmp_path, params):
    features, gold = data()
    ranker = train(features, gold, tmp_path, params)
    test_features, test_gold = data(500, seed=1)
    scores = ranker.predict(test_features)
    assert scores.min() >= 0 and scores.max() <= 1
    assert scores[test_gold].mean() > scores[~test_gold].mean() + 0.5
    assert not list(tmp_path.iterdir())  # XGBoost's page cache is removed


@pytest.mark.parametrize("params", [PARAMS, BINARY], ids=["pairwise", "binary"])
def test_batched_training_sees_every_row(tmp_path, params):
    """Rows of the last batch only (index >= 1400) carry the signal: a ranker
    that skipped a batch or re-read the first could not learn it."""
    features, _ = data()
    gold = np.zeros(len(features), dtype=bool)
    gold[1400:] = features[1400:, FEATURE_NAMES.index("max_score")] > 0.7
    features[:1400, FEATURE_NAMES.index("max_score")] = 0.0
    scores = train(features, gold, tmp_path, params).predict(features[1400:])
    assert scores[gold[1400:]].mean() > scores[~gold[1400:]].mean() + 0.5


def test_save_and_load_in_xgboost_format(tmp_path):
    features, gold = data()
    ranker = train(features, gold, tmp_path)
    path = tmp_path / "ranker.ubj"
    ranker.save(str(path))
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    loaded = Ranker.load(str(path))
    np.testing.assert_array_equal(loaded.predict(features[:50], threads=1),
                                  ranker.predict(features[:50]))


def test_no_positive_candidates_is_a_clear_error(tmp_path):
    features, _ = data(100)
    with pytest.raises(OperationFailedException, match=r"no candidate \(of 100\) matches any gold"):
        train(features, np.zeros(100, dtype=bool), tmp_path)


def test_empty_prediction(tmp_path):
    ranker = train(*data(), tmp_path)
    assert ranker.predict(np.zeros((0, len(FEATURE_NAMES)), np.float32)).shape == (0,)


def test_damaged_model_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ranker.ubj"
    path.write_bytes(b"{garbage")
    with pytest.raises(OperationFailedException, match="ranker.ubj") as caught:
        Ranker.load(str(path))
    # XGBoost's words, without its C++ source location and stack trace
    message = str(caught.value)
    assert "Stack trace" not in message and "[bt]" not in message and ".cc:" not in message
    assert len(message.splitlines()) == 1


def test_pairwise_scores_are_calibrated_probabilities(tmp_path):
    """A noisy signal: gold with probability max_score. The curve fitted on
    the training rows makes the mean score of a score band its gold rate."""
    rng = np.random.default_rng(3)
    features = rng.random((20_000, len(FEATURE_NAMES)), dtype=np.float32)
    gold = rng.random(20_000) < features[:, FEATURE_NAMES.index("max_score")]
    ranker = train(features, gold, tmp_path)
    assert ranker.booster.attr(CALIBRATION_ATTR) is not None
    test = rng.random((20_000, len(FEATURE_NAMES)), dtype=np.float32)
    test_gold = rng.random(20_000) < test[:, FEATURE_NAMES.index("max_score")]
    scores = ranker.predict(test)
    assert abs(scores.mean() - test_gold.mean()) < 0.02
    for low, high in [(0.1, 0.3), (0.4, 0.6), (0.7, 0.9)]:
        band = (scores >= low) & (scores < high)
        assert band.sum() > 500
        assert abs(test_gold[band].mean() - scores[band].mean()) < 0.05


@pytest.mark.parametrize("params", [PARAMS, BINARY], ids=["pairwise", "binary"])
def test_boosts_are_added_to_the_log_odds(tmp_path, params):
    rng = np.random.default_rng(5)
    features = rng.random((4000, len(FEATURE_NAMES)), dtype=np.float32)
    gold = rng.random(4000) < features[:, FEATURE_NAMES.index("max_score")]  # noisy
    ranker = train(features, gold, tmp_path, params)
    plain = ranker.predict(features[:50])
    boosts = np.where(np.arange(50) % 2 == 0, 1.5, 0.0)
    boosted = ranker.predict(features[:50], boosts=boosts)
    logit = np.log(plain / (1 - plain))
    # float32 probabilities hold log-odds to 1e-3 only away from 0 and 1
    clear = (np.abs(logit) < 8) & (np.abs(logit + boosts) < 8)
    assert clear.sum() > 40
    assert np.log(boosted / (1 - boosted))[clear] == pytest.approx((logit + boosts)[clear],
                                                                   abs=1e-3)
    # in margin units: a margin raised by them gets the boosted probability
    margins = ranker.margins(features[:50]) + ranker.margin_boosts(boosts)
    assert ranker.probability(margins) == pytest.approx(boosted, abs=1e-6)


def test_platt_scaling_recovers_a_known_curve():
    rng = np.random.default_rng(4)
    margins = rng.normal(0, 2, 200_000)
    gold = rng.random(200_000) < 1 / (1 + np.exp(-(1.5 * margins - 0.5)))
    a, b = platt_scaling(margins, gold)
    assert abs(a - 1.5) < 0.05 and abs(b + 0.5) < 0.05


def test_unseen_gold_subjects_get_their_own_relevance():
    features = np.zeros((4, len(FEATURE_NAMES)), np.float32)
    features[:, FEATURE_NAMES.index("prior")] = [0.0, 1.2, 0.0, np.nan]
    gold = np.array([True, True, False, True])
    assert relevance(features, gold, PARAMS).tolist() == [2.0, 1.0, 0.0, 1.0]
    assert relevance(features, gold, BINARY).tolist() == [1.0, 1.0, 0.0, 1.0]


def test_a_binary_ranker_of_an_older_feature_set_reads_its_own_columns(tmp_path):
    """A model saved before a feature family was added (here: the document
    query's two features) scores the columns it was trained on."""
    import xgboost as xgb

    features, gold = data()
    old_names = [n for n in FEATURE_NAMES if not n.startswith("doc_query")]
    columns = [FEATURE_NAMES.index(n) for n in old_names]
    booster = xgb.train({"objective": "binary:logistic"},
                        xgb.DMatrix(features[:, columns], label=gold, feature_names=old_names), 20)
    path = tmp_path / "old.ubj"
    booster.save_model(str(path))
    loaded = Ranker.load(str(path))
    assert loaded.calibration is None
    np.testing.assert_allclose(loaded.predict(features[:50]),
                               booster.inplace_predict(features[:50, columns]), rtol=1e-6)
