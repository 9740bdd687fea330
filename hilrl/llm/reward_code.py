"""LLM-written reward code as a :class:`~hilrl.feedback.rewards.RewardSource` (``reward: {source: code, path: F}``).

The code is checked and run in the sandbox (:mod:`hilrl.llm.sandbox`), never in the learner's process;
each batch of rows the buffers ask for (one sampled batch, or a bulk recompute) is one request to a
reused worker. Code extraction from an LLM answer follows Eureka (eureka-research/Eureka,
``eureka.py``: a fenced python block first, then any fenced block, then the whole text).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.data.buffers import RewardBatch
from hilrl.errors import HilrlError
from hilrl.llm.sandbox import Sandbox, SandboxLimits

__all__ = ["CodeReward", "extract_code", "make_code_source"]


def extract_code(text: str) -> str:
    """The reward code in an LLM answer (Eureka's patterns: ```python block, any ``` block, the text), made
    ready the way Eureka's loop does before running it (it keeps the code from the first ``def`` and supplies
    the imports itself): a block cut off by the token limit is taken to its end, a trailing
    ``if __name__ == "__main__":`` demo (a coder model's habit) is dropped, and ``import numpy as np`` /
    ``import math`` are added when the code uses ``np.``/``math.`` without importing them."""
    code = None
    for pattern in (r"```python(.*?)```", r"```(.*?)```", r"```python\n(.*)$"):
        found = re.search(pattern, text, re.S)
        if found:
            code = found.group(1).strip()
            break
    code = text.strip() if code is None else code
    code = re.split(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:", code, maxsplit=1, flags=re.M)[0].rstrip()
    imports = [line for name, line in (("np", "import numpy as np"), ("math", "import math"))
               if re.search(rf"\b{name}\.", code) and not re.search(rf"^\s*(import|from)\b.*\b{name}\b", code, re.M)]
    return "\n".join([*imports, code]) + "\n"


class CodeReward:
    """Reward code run in a sandbox worker on whole batches.

    Args:
        code: Python source defining ``compute_reward(obs, action, next_obs)``.
        limits: the sandbox's limits.
        name: how it reads in logs and ``metrics.json`` (e.g. its file).

    Raises:
        CodeError: the code breaks the sandbox's rules; SandboxError: loading it failed.
    """

    version = 0  # the code never changes while a run trains on it

    def __init__(self, code: str, limits: SandboxLimits | None = None, name: str = "<code>") -> None:
        self.code, self.name = code, name
        self.sandbox = Sandbox(code, limits)

    def evaluate(self, batch: RewardBatch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The reward and each named component of every row (float32 ``[N]``)."""
        return self.sandbox(batch.obs, batch.actions, batch.next_obs)

    def __call__(self, batch: RewardBatch) -> np.ndarray:
        return self.evaluate(batch)[0]

    def close(self) -> None:
        self.sandbox.close()

    def __repr__(self) -> str:
        return f"CodeReward({self.name})"


def make_code_source(reward_config: Any, context: Any = None) -> CodeReward:
    """The factory ``reward: {source: code, path: FILE}`` builds (registered in :mod:`hilrl.feedback.rewards`).

    Raises:
        HilrlError: the file is missing, or its code is refused by the sandbox (with the reasons).
    """
    path = Path(reward_config.path)
    if not path.is_absolute() and context is not None and getattr(context, "run_dir", None) is not None \
            and not path.is_file():
        path = Path(context.run_dir) / path
    if not path.is_file():
        raise HilrlError(f"reward.path {reward_config.path!r}: no such file; give the reward code a search wrote "
                         "(e.g. runs/search/best/reward.py)")
    return CodeReward(path.read_text(), name=str(path))
