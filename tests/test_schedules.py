"""Every registered schedule: endpoints, monotonicity, and a derivative that matches alpha."""

import pytest
import torch

from dlm.schedules import SCHEDULES, make_schedule, schedule_to_dict


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_contract(name):
    s = make_schedule(name)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a = s.alpha(t)
    assert a[0] == pytest.approx(1.0)
    assert a[-1] <= 1e-2  # (nearly) pure noise at t = 1
    assert bool((a[1:] <= a[:-1] + 1e-12).all()), "alpha must not increase with t"
    assert bool(((a >= 0) & (a <= 1)).all())
    # alpha' against a central finite difference, away from the end points
    h = 1e-6
    inner = t[5:-5]
    numeric = (s.alpha(inner + h) - s.alpha(inner - h)) / (2 * h)
    torch.testing.assert_close(s.alpha_prime(inner), numeric, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.alpha_inverse(s.alpha(inner)), inner, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_round_trips_through_its_config(name):
    s = make_schedule(name)
    assert make_schedule(**schedule_to_dict(s)) == s


def test_unknown_schedule_is_named():
    with pytest.raises(KeyError, match="unknown schedule 'zigzag'"):
        make_schedule("zigzag")
