import numpy as np
import pytest
from annif.exception import OperationFailedException

from annif_ebm.features import FEATURE_NAMES
from annif_ebm.params import EbmParams
from annif_ebm.ranker import Ranker

PARAMS = EbmParams.parse({"xgb_rounds": "30"}).ranker


def data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.random((n, len(FEATURE_NAMES)), dtype=np.float32)
    gold = features[:, FEATURE_NAMES.index("max_score")] > 0.7
    return features, gold


def batches_of(features, gold, size=700):
    """A fresh iterator of (features, gold) batches per call, as the store gives."""
    return lambda: ((features[i:i + size], gold[i:i + size])
                    for i in range(0, len(gold), size))


def train(features, gold, tmp_path):
    return Ranker.train(batches_of(features, gold), PARAMS, str(tmp_path))


def test_ranker_learns_from_batches_and_scores_in_unit_interval(tmp_path):
    features, gold = data()
    ranker = train(features, gold, tmp_path)
    test_features, test_gold = data(500, seed=1)
    scores = ranker.predict(test_features)
    assert scores.min() >= 0 and scores.max() <= 1
    assert scores[test_gold].mean() > scores[~test_gold].mean() + 0.5
    assert not list(tmp_path.iterdir())  # XGBoost's page cache is removed


def test_batched_training_sees_every_row(tmp_path):
    """Rows of the last batch only (index >= 1400) carry the signal: a ranker
    that skipped a batch or re-read the first could not learn it."""
    features, _ = data()
    gold = np.zeros(len(features), dtype=bool)
    gold[1400:] = features[1400:, FEATURE_NAMES.index("max_score")] > 0.7
    features[:1400, FEATURE_NAMES.index("max_score")] = 0.0
    scores = train(features, gold, tmp_path).predict(features[1400:])
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
