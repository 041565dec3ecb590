"""The statistics of the claims table on small examples worked by hand, against closed forms of
Student's t (df 1, 2 and 4) and published quantiles."""

import math

import pytest

from pyregnet import stats


def closed_form_cdf(t, df):
    """Student's t CDF in closed form for df 1, 2, 4 (an independent check of the beta route)."""
    if df == 1:
        return 0.5 + math.atan(t) / math.pi
    if df == 2:
        return 0.5 + t / (2 * math.sqrt(2 + t * t))
    u = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * u * (1 - u * u / 3)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("t", [-7.5, -2.0, -0.3, 0.0, 0.8, 3.1, 40.0])
def test_t_cdf_matches_closed_forms(t, df):
    assert math.isclose(stats.t_cdf(t, df), closed_form_cdf(t, df), rel_tol=1e-12, abs_tol=1e-14)


@pytest.mark.parametrize("df, q", [(1, 12.706204736174698), (2, 4.302652729749464), (4, 2.7764451051977934),
                                   (9, 2.2621571627982053), (30, 2.0422724563012373)])
def test_t_quantile_975_matches_tables(df, q):
    assert math.isclose(stats.t_quantile(0.975, df), q, rel_tol=1e-10)
    assert math.isclose(stats.t_quantile(0.025, df), -q, rel_tol=1e-10)


def test_paired_by_hand():
    # differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t = 3 / sqrt(0.5) = 4.2426
    a, b = [11, 12, 13, 14, 15], [10, 10, 10, 10, 10]
    r = stats.paired(a, b)
    se = math.sqrt(0.5)
    assert r.n == 5 and r.mean == 3
    assert math.isclose(r.low, 3 - 2.7764451051977934 * se, rel_tol=1e-10)
    assert math.isclose(r.high, 3 + 2.7764451051977934 * se, rel_tol=1e-10)
    assert math.isclose(r.p, 2 * closed_form_cdf(-3 / se, 4), rel_tol=1e-10)  # 0.01324
    assert 0.0132 < r.p < 0.0133
    flat = stats.paired([1, 2, 3], [1, 2, 3])
    assert (flat.mean, flat.low, flat.high, flat.p) == (0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        stats.paired([1], [2])


def test_holm_by_hand():
    # sorted: 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> raised to the running max 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []
