"""PSI and KS per feature against a stored reference profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ks_2samp

from lifecycle.drift import FeatureProfile, compare, ks_distance, profile_features, psi
from lifecycle.synthetic import FEATURE_NAMES, FraudGenerator


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, tuple[FeatureProfile, ...]]:
    X, _ = FraudGenerator(100).sample(4000)
    return X, profile_features(X, FEATURE_NAMES)


def test_unshifted_traffic_does_not_drift(
    reference: tuple[np.ndarray, tuple[FeatureProfile, ...]],
) -> None:
    _, profiles = reference
    X, _ = FraudGenerator(101).sample(1000)
    by_psi = compare(profiles, X, metric="psi", threshold=0.1)
    by_ks = compare(profiles, X, metric="ks", threshold=0.1)
    assert by_psi.share == 0.0 and by_psi.score() < 0.05
    assert by_ks.share == 0.0 and by_ks.score() < 0.08


def test_shifted_traffic_drifts_on_the_features_that_moved(
    reference: tuple[np.ndarray, tuple[FeatureProfile, ...]],
) -> None:
    _, profiles = reference
    X, _ = FraudGenerator(102, input_shift=1.0).sample(1000)
    report = compare(profiles, X, metric="psi", threshold=0.2)
    assert report.share >= 0.5
    drifted = set(report.drifted)
    # The largest latent moves drift; the smallest (address_mismatch, 0.3) does not.
    assert {"amount_usd", "chargeback_rate_90d", "merchant_risk"} <= drifted
    assert "address_mismatch" not in drifted
    assert compare(profiles, X, metric="ks", threshold=0.1).share >= 0.8
    half, _ = FraudGenerator(103, input_shift=0.2).sample(1000)
    assert compare(profiles, half, metric="psi", threshold=0.2).share < report.share


def test_ks_over_the_stored_edges_matches_the_sample_statistic(
    reference: tuple[np.ndarray, tuple[FeatureProfile, ...]],
) -> None:
    X_ref, profiles = reference
    X, _ = FraudGenerator(104, input_shift=0.5).sample(1000)
    for i, profile in enumerate(profiles):
        exact = ks_2samp(X_ref[:, i], X[:, i]).statistic
        assert abs(ks_distance(profile, X[:, i]) - exact) <= 0.02, profile.name


def test_psi_of_a_flag_and_a_profile_round_trip(
    reference: tuple[np.ndarray, tuple[FeatureProfile, ...]],
) -> None:
    _, profiles = reference
    flag = profiles[FEATURE_NAMES.index("card_present")]
    assert len(flag.psi_edges) <= 2  # a 0/1 feature has at most two distinct deciles
    ones = np.ones(500)
    assert psi(flag, ones) > 1.0
    assert psi(flag, np.where(np.arange(1000) < 1000 * (1 - flag.cdf[0]), 1.0, 0.0)) < 0.01
    again = FeatureProfile.from_json(json.loads(json.dumps(flag.to_json())))
    assert again == flag


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty 2-D"):
        profile_features(np.empty((0, 3)))
    profiles = profile_features(np.ones((10, 2)))
    with pytest.raises(ValueError, match="2 feature columns"):
        compare(profiles, np.ones((5, 3)))
    with pytest.raises(ValueError, match="psi, ks|one of"):
        compare(profiles, np.ones((5, 2)), metric="kl")
