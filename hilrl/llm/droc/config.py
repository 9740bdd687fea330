"""The YAML of ``hilrl correct CONFIG`` (e.g. ``sim_configs/correct_pick_tall.yaml``). Pydantic only: importing
it loads neither torch, sentence-transformers nor MuJoCo."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hilrl.envs.tasks.variants import VARIANTS
from hilrl.errors import HilrlError

__all__ = ["CorrectionConfig", "load_correction_config"]


class CorrectionConfig(BaseModel):
    """A correction session.

    Args:
        task: a task variant of :mod:`hilrl.envs.tasks.variants` (``pick_tall``, ``peg_insert``...).
        seed: the episode seed (where the objects start); every retry starts from it again.
        llm: ``scripted`` (the rule-based DROC responder on a loopback OpenAI-compatible server) or the path
            of an LLM YAML (``provider``, ``model``, ``base_url``: README, Reward search).
        kb: the knowledge-base folder (``--kb`` overrides it).
        retrieval: ``text+visual``, ``text`` or ``none`` (the knowledge base is neither read nor written).
        max_corrections: corrections accepted before the task counts as failed.
        max_episode_steps: env steps of one attempt.
        remote: a robot server address (``tcp://HOST:5555``) to run on a remote arm instead of the sim.
    """

    model_config = ConfigDict(extra="forbid")

    task: str
    seed: int = 0
    llm: str = "scripted"
    kb: str = "runs/knowledge"
    retrieval: Literal["text+visual", "text", "none"] = "text+visual"
    max_corrections: int = Field(5, ge=0)
    max_episode_steps: int = Field(400, ge=10)
    remote: str | None = None

    @field_validator("task")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in VARIANTS:
            raise ValueError(f"unknown task variant {value!r}; allowed: {', '.join(VARIANTS)}")
        return value


def load_correction_config(path: str | os.PathLike) -> CorrectionConfig:
    """The config in ``path``; an LLM YAML path in it is read relative to the file.

    Raises:
        HilrlError: missing file or a field that does not validate (naming it and what is allowed).
    """
    file = Path(path)
    if not file.is_file():
        raise HilrlError(f"{file}: no such config; see sim_configs/correct_pick_tall.yaml")
    try:
        config = CorrectionConfig.model_validate(yaml.safe_load(file.read_text()) or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HilrlError(f"{file}: {problems} (keys: {', '.join(CorrectionConfig.model_fields)})") from None
    if config.llm != "scripted" and not Path(config.llm).is_absolute():
        config = config.model_copy(update={"llm": str((file.parent / config.llm).resolve())})
    return config
