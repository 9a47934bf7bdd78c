"""Intensity normalisation fitted on training data and stored in the model card."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from streamer.core.card import Normalization


def test_fit_gives_mean_and_std_over_all_stacks() -> None:
    """fit() uses every pixel of every stack (population mean and std)."""
    rng = np.random.default_rng(0)
    a = rng.normal(100, 5, (3, 16, 16)).astype(np.float32)
    b = rng.integers(0, 4000, (2, 8, 24)).astype(np.uint16)

    norm = Normalization.fit([a, b])

    everything = np.concatenate([a.ravel().astype(np.float64), b.ravel().astype(np.float64)])
    assert norm.mean == pytest.approx(everything.mean(), rel=1e-9)
    assert norm.std == pytest.approx(everything.std(), rel=1e-9)
    assert norm.kind == "meanstd"


def test_fit_uint16_does_not_overflow() -> None:
    """Large uint16 stacks are accumulated in float64 (no wrap-around)."""
    stack = np.full((4, 64, 64), 60000, np.uint16)
    stack[0, 0, 0] = 0

    norm = Normalization.fit([stack])

    assert norm.mean == pytest.approx(60000 - 60000 / stack.size)


def test_normalized_data_has_zero_mean_unit_std() -> None:
    """normalize() of the fitted data has mean ≈ 0 and std ≈ 1, as float32."""
    data = np.random.default_rng(1).gamma(2.0, 300.0, (5, 32, 32)).astype(np.uint16)
    norm = Normalization.fit([data])

    z = norm.normalize(data)

    assert z.dtype == np.float32
    assert abs(float(z.mean())) < 1e-4
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_round_trip_is_identity() -> None:
    """denormalize(normalize(x)) ≈ x."""
    x = np.random.default_rng(2).uniform(0, 65535, (3, 20, 20)).astype(np.float32)
    norm = Normalization(mean=1234.5, std=321.0)

    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)), x, rtol=1e-5, atol=1e-2)


def test_dict_round_trip_through_json() -> None:
    """to_dict → JSON → from_dict gives back an equal Normalization."""
    norm = Normalization(mean=101.25, std=7.5)

    back = Normalization.from_dict(json.loads(json.dumps(norm.to_dict())))

    assert back == norm
    assert norm.to_dict() == {"mean": 101.25, "std": 7.5, "kind": "meanstd"}


def test_from_dict_rejects_other_kinds() -> None:
    """from_dict refuses a normalisation kind it does not implement."""
    with pytest.raises(ValueError, match="kind 'meanstd' or 'anscombe', got 'percentile'"):
        Normalization.from_dict({"mean": 0.0, "std": 1.0, "kind": "percentile"})


def test_constant_data_rejected() -> None:
    """Constant training data raises ValueError (std 0: nothing to learn)."""
    with pytest.raises(ValueError, match="constant"):
        Normalization.fit([np.full((3, 16, 16), 7, np.uint16)])


def test_no_stacks_rejected() -> None:
    """fit() on an empty list raises ValueError."""
    with pytest.raises(ValueError, match="at least one stack"):
        Normalization.fit([])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_rejected(bad: float) -> None:
    """fit() on data with NaN or inf raises ValueError instead of returning a NaN normalisation."""
    data = np.ones((3, 16, 16), np.float32)
    data[0, 0, 1] = 2.0
    data[1, 2, 3] = bad

    with warnings.catch_warnings():
        # inf - inf in the variance warns before the ValueError; the error is what matters here
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="finite"):
            Normalization.fit([data])


@pytest.mark.parametrize(("mean", "std"), [(0.0, 0.0), (0.0, -1.0), (np.nan, 1.0), (0.0, np.inf)])
def test_invalid_parameters_rejected(mean: float, std: float) -> None:
    """A non-finite mean or a non-positive/non-finite std is refused at construction."""
    with pytest.raises(ValueError, match="positive std"):
        Normalization(mean=mean, std=std)
