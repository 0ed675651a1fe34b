"""What an answer is worth in a GRPO run: `grpo.rewards`, a weighted sum of checks against the row's
reference answer that need no model, a user's function, or the reward model the project trains.

    exact_match    1 when the answer equals the reference after whitespace and case folding
    numeric        1 when the answer's last number is within `tolerance` of the reference's number
    regex          1 when the whole answer matches `pattern`
    json_schema    1 when the answer parses as JSON and validates against `json_schema`
    length         1 when the answer has between min_chars and max_chars characters
    reward_model   the score of a `recipe: reward` run
    module:function  f(prompt, answer, reference) -> a number

A reward that raises or returns something that is not a finite number stops the run with one line
naming the reward and the row (file:line).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import jsonschema

from forgetless.config.preference import RewardSpec
from forgetless.config.user_code import load_callable
from forgetless.data.answers import fold, last_number
from forgetless.errors import UserError
from forgetless.objectives.reward_model import score


@dataclass(frozen=True)
class Rollout:
    """One answer to score: the row it came from, its conversation up to the answer, the answer, the reference."""

    where: str
    prompt: list[dict]
    answer: str
    reference: str


def exact_match(answer: str, reference: str, spec: RewardSpec) -> float:
    return float(fold(answer) == fold(reference))


def numeric(answer: str, reference: str, spec: RewardSpec) -> float:
    got, want = last_number(answer), last_number(reference)
    return float(got is not None and want is not None and abs(got - want) <= spec.tolerance)


def regex(answer: str, reference: str, spec: RewardSpec) -> float:
    return float(re.fullmatch(spec.pattern, answer.strip(), flags=re.DOTALL) is not None)


def json_schema(answer: str, reference: str, spec: RewardSpec) -> float:
    try:
        jsonschema.validate(json.loads(answer), spec.json_schema)
    except (ValueError, jsonschema.ValidationError):
        return 0.0
    return 1.0


def length(answer: str, reference: str, spec: RewardSpec) -> float:
    n = len(answer.strip())
    return float(n >= spec.min_chars and (spec.max_chars is None or n <= spec.max_chars))


BUILTIN: dict[str, Callable[[str, str, RewardSpec], float]] = {
    "exact_match": exact_match,
    "numeric": numeric,
    "regex": regex,
    "json_schema": json_schema,
    "length": length,
}


def _checked(value, kind: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: reward {kind} returned {value!r}, not a finite number; fix the reward function")
    return float(value)


class Rewards:
    """The weighted sum of `specs` for a list of rollouts; each reward's mean is kept for the log."""

    def __init__(self, specs: list[RewardSpec], reward_model=None):
        """`reward_model`: (model, tokenizer) of a `recipe: reward` run, when a spec names one."""
        self.specs, self.reward_model = specs, reward_model
        self.functions = {s.kind: load_callable(s.kind, "grpo.rewards") for s in specs if ":" in s.kind}

    def _one(self, spec: RewardSpec, rollouts: list[Rollout]) -> list[float]:
        if spec.kind == "reward_model":
            model, tokenizer = self.reward_model
            values = score(model, tokenizer, [(r.prompt, r.answer or "-") for r in rollouts])
            return [_checked(v, spec.kind, r.where) for v, r in zip(values, rollouts, strict=True)]
        out = []
        for r in rollouts:
            try:
                if spec.kind in BUILTIN:
                    value = BUILTIN[spec.kind](r.answer, r.reference, spec)
                else:
                    value = self.functions[spec.kind](r.prompt, r.answer, r.reference)
            except Exception as e:  # a user's function may raise anything: the row and the error, in one line
                raise UserError(f"{r.where}: reward {spec.kind} raised {type(e).__name__}: {e}") from None
            out.append(_checked(value, spec.kind, r.where))
        return out

    def __call__(self, rollouts: list[Rollout]) -> tuple[list[float], dict[str, float]]:
        """(the weighted sum per rollout, each reward's mean over them)."""
        total = [0.0] * len(rollouts)
        means = {}
        for spec in self.specs:
            values = self._one(spec, rollouts)
            total = [t + spec.weight * v for t, v in zip(total, values, strict=True)]
            name = f"reward.{spec.kind}" if f"reward.{spec.kind}" not in means else f"reward.{spec.kind}.{len(means)}"
            means[name] = sum(values) / max(len(values), 1)
        return total, means
