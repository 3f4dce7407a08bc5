"""The learned reranker: fitting, weights round trip, fusion rule."""

import numpy as np
import pytest

from router.learned import DEFAULT_WEIGHTS, FEATURES, LearnedRouter, rrf


def test_fit_learns_the_signal_that_separates():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(600, len(FEATURES))).astype(np.float32)
    y = (F[:, 2] > 0.5).astype(float)  # only "cover" matters
    groups = np.arange(600) // 6
    m = LearnedRouter.fit(F, y, groups, prior=np.zeros(len(FEATURES) + 1), l2=0.01)
    assert m.w[2] > 3 * np.abs(np.delete(m.w[:-1], 2)).max()
    assert ((m.prob(F) > 0.5) == (y > 0)).mean() > 0.95


def test_strong_prior_keeps_weights():
    F = np.zeros((4, len(FEATURES)), np.float32)
    m = LearnedRouter.fit(F, np.array([1, 0, 0, 0.0]), np.array([0, 0, 1, 1]), l2=1e6)
    assert np.allclose(m.w, DEFAULT_WEIGHTS, atol=1e-3)


def test_weights_round_trip_and_validation():
    m = LearnedRouter()
    assert LearnedRouter.from_dict(m.as_dict()).as_dict() == m.as_dict()
    with pytest.raises(ValueError, match="weights must have"):
        LearnedRouter([1.0, 2.0])
    with pytest.raises(ValueError, match="lack"):
        LearnedRouter.from_dict({"dense": 1.0})


def test_rrf_rule():
    r = rrf(np.array([1, 0, 3, 0]), np.array([1, 2, 0, 0]), k=60)
    assert r[0] == pytest.approx(1.0) and r[3] == 0 and r[0] > r[1] and r[2] > 0
