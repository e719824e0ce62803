"""KL annealing: the weight beta of the KL term as training proceeds.

A schedule maps the global gradient-step count to beta. ``planned_steps`` (the
number of updates the run will make) is given by the trainer before training,
so ramps can be scaled to the run. The auto schedule also watches validation
scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recvae.nn.hyperparams import HyperParameterError, apply_rules, choice, integer, number, optional, rule, shown

__all__ = ["AnnealConfig", "ANNEAL_KINDS", "anneal_config", "BetaSchedule", "make_schedule"]


@dataclass(frozen=True)
class AnnealConfig:
    """How beta evolves.

    Attributes:
        kind: ``"linear"`` (ramp from 0 to ``cap``), ``"constant"`` (``cap``
            throughout), ``"cyclical"`` (Fu et al. 2019: ``cycles`` ramps from 0 to
            ``cap`` over the first ``cycle_ramp`` of each cycle, then flat), or
            ``"auto"`` (ramp towards 1 while validation NDCG is tracked; once it
            has not improved for ``auto_patience`` evaluations beta is frozen at
            the value of the best evaluation, the procedure Liang et al. describe).
        cap: the largest beta (Liang et al.: 0.2).
        total_steps: Liang et al.'s ramp, beta = min(cap, step / total_steps)
            (their code: 200,000, so the 0.2 cap comes after 40,000 updates,
            ~85% of a 200-epoch ML-20M run). On small data those numbers leave
            beta near 0, so the default None scales the ramp to the run: the
            cap (or 1 for ``auto``) is reached after ``ramp_fraction`` of the
            planned updates.
        ramp_fraction: see ``total_steps``.
        cycles, cycle_ramp: cyclical schedule shape.
        auto_patience: evaluations without improvement before auto freezes beta.
    """

    kind: str = "linear"
    cap: float = 0.2
    total_steps: int | None = None
    ramp_fraction: float = 0.85
    cycles: int = 4
    cycle_ramp: float = 0.5
    auto_patience: int = 5

    def __post_init__(self) -> None:
        # Named as the flat parameters spell them (anneal_cap=..., what --beta-cap sets).
        apply_rules(self, _ANNEAL_RULES, prefix="anneal_")


#: the kinds of schedule (:attr:`AnnealConfig.kind`).
ANNEAL_KINDS = ("linear", "constant", "cyclical", "auto")

_ANNEAL_RULES = {
    "kind": rule(choice, options=ANNEAL_KINDS),
    "cap": rule(number, minimum=0.0),  # the largest KL weight: finite, >= 0 (inf/nan diverge)
    "total_steps": optional(rule(integer, minimum=1)),
    "ramp_fraction": rule(number, minimum=0.0, maximum=1.0, low_open=True),
    "cycles": rule(integer, minimum=1),
    "cycle_ramp": rule(number, minimum=0.0, maximum=1.0, low_open=True),
    "auto_patience": rule(integer, minimum=1),
}


def anneal_config(value: Any, name: str = "anneal") -> AnnealConfig:
    """An :class:`AnnealConfig` from itself or a table of its fields (``{"kind": "constant", "cap": 0.1}``).

    Raises:
        HyperParameterError: not a table, an unknown key (named), or a field's value out of its rule.
    """
    if isinstance(value, AnnealConfig):
        return value
    fields = [f.name for f in dataclasses.fields(AnnealConfig)]
    if not isinstance(value, Mapping):
        raise HyperParameterError(f"{name}={shown(value)}: expected a table of the KL schedule, e.g. "
                                  f"{{kind = \"linear\", cap = 0.2}} (or set anneal_kind=..., anneal_cap=...)")
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise HyperParameterError(f"{name}={shown(dict(value))}: unknown key(s) {unknown}; "
                                  f"the schedule's keys are {', '.join(fields)}")
    return AnnealConfig(**value)


class BetaSchedule:
    """Stateful beta schedule built from an :class:`AnnealConfig`."""

    def __init__(self, config: AnnealConfig, planned_steps: int) -> None:
        self.config = config
        self.planned_steps = max(1, int(planned_steps))
        # auto-schedule state
        self.frozen_beta: float | None = None
        self.best_score = float("-inf")
        self.best_beta = 0.0
        self.evaluations_since_best = 0

    def slope(self, peak: float) -> float:
        """beta gained per step by a ramp towards ``peak``.

        With ``total_steps`` it is Liang et al.'s 1 / total_steps (so the 0.2 cap
        is reached after 0.2 * total_steps); otherwise the ramp reaches ``peak``
        after ``ramp_fraction`` of the planned updates.
        """
        c = self.config
        if c.total_steps is not None:
            return 1.0 / c.total_steps
        return peak / max(1.0, c.ramp_fraction * self.planned_steps)

    def beta(self, step: int) -> float:
        """beta after ``step`` gradient updates."""
        c = self.config
        if c.kind == "constant":
            return c.cap
        if c.kind == "linear":
            return min(c.cap, step * self.slope(c.cap))
        if c.kind == "cyclical":
            period = self.planned_steps / c.cycles
            phase = (step % period) / period
            return c.cap * min(1.0, phase / c.cycle_ramp)
        if self.frozen_beta is not None:  # auto
            return self.frozen_beta
        return min(1.0, step * self.slope(1.0))

    def observe(self, score: float, beta: float) -> None:
        """Report a validation score measured at ``beta`` (used by ``auto``)."""
        if self.config.kind != "auto" or self.frozen_beta is not None:
            return
        if score > self.best_score:
            self.best_score, self.best_beta, self.evaluations_since_best = score, beta, 0
        else:
            self.evaluations_since_best += 1
            if self.evaluations_since_best >= self.config.auto_patience:
                self.frozen_beta = self.best_beta

    def state_dict(self) -> dict:
        return {
            "frozen_beta": self.frozen_beta,
            "best_score": self.best_score,
            "best_beta": self.best_beta,
            "evaluations_since_best": self.evaluations_since_best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.frozen_beta = state["frozen_beta"]
        self.best_score = state["best_score"]
        self.best_beta = state["best_beta"]
        self.evaluations_since_best = state["evaluations_since_best"]


def make_schedule(config: AnnealConfig, planned_steps: int) -> BetaSchedule:
    """A fresh schedule for a run of ``planned_steps`` updates."""
    return BetaSchedule(config, planned_steps)
