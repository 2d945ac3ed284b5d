import numpy as np
import pytest
from annif.exception import OperationFailedException

from annif_ebm.features import FEATURE_NAMES
from annif_ebm.params import EbmParams
from annif_ebm.ranker import Ranker

PARAMS = EbmParams.parse({"xgb_rounds": "30"})[0]


def data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.random((n, len(FEATURE_NAMES)), dtype=np.float32)
    gold = features[:, FEATURE_NAMES.index("max_score")] > 0.7
    return features, gold


def test_ranker_learns_and_scores_in_unit_interval():
    features, gold = data()
    ranker = Ranker.train(features, gold, PARAMS)
    test_features, test_gold = data(500, seed=1)
    scores = ranker.predict(test_features)
    assert scores.min() >= 0 and scores.max() <= 1
    assert scores[test_gold].mean() > scores[~test_gold].mean() + 0.5


def test_save_and_load_in_xgboost_format(tmp_path):
    features, gold = data()
    ranker = Ranker.train(features, gold, PARAMS)
    path = tmp_path / "ranker.ubj"
    ranker.save(str(path))
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle
    loaded = Ranker.load(str(path))
    np.testing.assert_array_equal(loaded.predict(features[:50], threads=1),
                                  ranker.predict(features[:50]))


def test_no_positive_candidates_is_a_clear_error():
    features, _ = data(100)
    with pytest.raises(OperationFailedException, match="no candidate matches any gold"):
        Ranker.train(features, np.zeros(100, dtype=bool), PARAMS)


def test_empty_prediction():
    ranker = Ranker.train(*data(), PARAMS)
    assert ranker.predict(np.zeros((0, len(FEATURE_NAMES)), np.float32)).shape == (0,)


def test_damaged_model_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ranker.ubj"
    path.write_bytes(b"{garbage")
    with pytest.raises(OperationFailedException, match="ranker.ubj"):
        Ranker.load(str(path))
