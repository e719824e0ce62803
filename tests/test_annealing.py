import pytest

from recvae.nn.annealing import AnnealConfig, BetaSchedule


def test_liang_linear_ramp_reaches_cap_at_cap_times_total_steps():
    s = BetaSchedule(AnnealConfig(kind="linear", cap=0.2, total_steps=200_000), planned_steps=46_800)
    assert s.beta(0) == 0.0
    assert s.beta(20_000) == pytest.approx(0.1)
    assert s.beta(40_000) == pytest.approx(0.2)
    assert s.beta(46_000) == pytest.approx(0.2)


def test_scaled_ramp_reaches_cap_at_85_percent_of_the_run():
    s = BetaSchedule(AnnealConfig(cap=0.2), planned_steps=1000)
    assert s.beta(425) == pytest.approx(0.1)
    assert s.beta(850) == pytest.approx(0.2)
    assert s.beta(999) == pytest.approx(0.2)


def test_constant_and_cyclical():
    assert BetaSchedule(AnnealConfig(kind="constant", cap=0.3), 10).beta(7) == 0.3
    s = BetaSchedule(AnnealConfig(kind="cyclical", cap=1.0, cycles=2, cycle_ramp=0.5), planned_steps=100)
    assert [s.beta(t) for t in (0, 25, 40, 50, 75)] == pytest.approx([0.0, 1.0, 1.0, 0.0, 1.0])
    assert s.beta(10) == pytest.approx(0.4)


def test_auto_freezes_beta_at_the_best_validation_score():
    s = BetaSchedule(AnnealConfig(kind="auto", auto_patience=2), planned_steps=100)
    assert s.beta(85) == pytest.approx(1.0)
    for beta, score in [(0.1, 0.30), (0.2, 0.35), (0.3, 0.33), (0.4, 0.31)]:
        s.observe(score, beta)
    assert s.frozen_beta == pytest.approx(0.2)
    assert s.beta(99) == pytest.approx(0.2)
    restored = BetaSchedule(AnnealConfig(kind="auto", auto_patience=2), planned_steps=100)
    restored.load_state_dict(s.state_dict())
    assert restored.beta(50) == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs", [{"kind": "exponential"}, {"cap": -1}, {"total_steps": 0}, {"ramp_fraction": 0}])
def test_bad_configs(kwargs):
    with pytest.raises(ValueError):
        AnnealConfig(**kwargs)
