"""Programmatic verifiers: labellers that check an answer instead of asking anyone.

:class:`RewardCodeVerifier` labels two answers that hold reward code by whether the code passes the
sandbox (:mod:`hilrl.llm.sandbox`: the allow-listed imports, then a run in a worker subprocess on a
batch of arm observations returning a finite float reward of shape ``(N,)``), the check Eureka's
search makes of each sample (eureka-research/Eureka: a sample that fails to execute gets no fitness).
The rule task's verifier is :class:`~hilrl.llm.align.task.RuleVerifier`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RewardCodeVerifier", "arm_batch"]


def arm_batch(rows: int = 8, object_size: int = 3, seed: int = 0) -> tuple[dict, np.ndarray, dict]:
    """``(obs, action, next_obs)`` of random arm rows, with the fields :mod:`hilrl.llm.tasks` describes."""
    rng = np.random.default_rng(seed)

    def obs() -> dict[str, np.ndarray]:
        return {"ee_pos": rng.uniform(-0.3, 0.3, (rows, 3)), "ee_quat": np.tile([1.0, 0, 0, 0], (rows, 1)),
                "gripper": rng.uniform(0, 1, (rows, 1)), "joint_pos": rng.normal(0, 0.5, (rows, 7)),
                "joint_vel": rng.normal(0, 0.1, (rows, 7)), "object": rng.uniform(-0.3, 0.3, (rows, object_size))}

    as32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    return as32(obs()), rng.uniform(-1, 1, (rows, 4)).astype(np.float32), as32(obs())


class RewardCodeVerifier:
    """The answer whose reward code runs in the sandbox and returns the right shape wins; both or neither: equal.

    :param batch: the ``(obs, action, next_obs)`` to run the code on (default :func:`arm_batch`).
    """

    who = "synthetic"

    def __init__(self, batch: tuple[dict, np.ndarray, dict] | None = None) -> None:
        self.batch = batch or arm_batch()

    def check(self, answer: str) -> tuple[bool, str]:
        """``(passes, why)`` for the reward code in ``answer`` (a fenced block or the whole text)."""
        from hilrl.errors import HilrlError
        from hilrl.llm.reward_code import extract_code
        from hilrl.llm.sandbox import Sandbox

        try:
            with Sandbox(extract_code(answer)) as sandbox:
                reward, _ = sandbox(*self.batch)
        except HilrlError as exc:
            return False, str(exc).splitlines()[0][:200]
        return True, f"runs and returns {reward.shape[0]} finite rewards"

    def compare(self, prompt: Any, first: str, second: str) -> tuple[str, str]:
        (a, why_a), (b, why_b) = self.check(first), self.check(second)
        if a == b:
            return "equal", f"first: {why_a}; second: {why_b}"
        return ("first", f"only the first runs ({why_b})") if a else ("second", f"only the second runs ({why_a})")
