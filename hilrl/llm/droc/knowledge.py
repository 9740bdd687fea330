"""The knowledge base: what corrections taught, kept in a folder a person can read.

``entries.jsonl``: one JSON object per line, append-only, each line flushed and fsynced as it is written
(an entry, or ``{"forget": ID}`` that hides one); ``arrays/ID.npy``: the entry's visual feature, written
to a temp file, fsynced and renamed before its line is appended. So a session killed at any moment (kill -9)
leaves whole entries and, at worst, a torn last line, which reading skips. Entries (DROC's two kinds, Zha et
al. 2023, Stanford-ILIAD/droc): ``constraint`` (a plan-level rule, with the scene's visual feature) and
``skill`` (named parameters for a skill on an object, the object-relative grasp or goal offset, and the
object's visual feature).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hilrl.errors import HilrlError

__all__ = ["Entry", "KnowledgeBase", "KnowledgeError"]


class KnowledgeError(HilrlError):
    """A knowledge-base folder or entry that cannot be used."""


@dataclass
class Entry:
    """One piece of knowledge.

    Args:
        id: ``k0001``...
        kind: ``constraint`` or ``skill``.
        task: the gymnasium id it was taught on.
        text: what it says, for people and for retrieval by text.
        objects: the objects it is about.
        skill, object, parameters: a skill entry's skill, object and named parameters.
        relative_pose: a skill entry's offset of the grasp (or goal) point from the object's centre (m).
        visual: the feature file, relative to the folder.
        created: unix time.
        source: where it came from (task variant, the corrections).
    """

    id: str
    kind: Literal["constraint", "skill"]
    task: str
    text: str
    objects: list[str] = field(default_factory=list)
    skill: str | None = None
    object: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    relative_pose: list[float] | None = None
    visual: str | None = None
    created: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.kind == "skill":
            values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.parameters.items())
            return f"{self.id} skill {self.skill}({self.object}): {values} - {self.text}"
        return f"{self.id} constraint: {self.text}"


class KnowledgeBase:
    """The folder (created when missing).

    Args:
        folder: where ``entries.jsonl`` and ``arrays/`` live (a run's folder or one a person chose).
        create: make the folder when missing (False: a missing folder is an error, for reading commands).
    """

    def __init__(self, folder: str | os.PathLike, create: bool = True) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise KnowledgeError(f"{self.folder} is a file; give a folder for the knowledge base")
        if not create and not self.folder.is_dir():
            raise KnowledgeError(f"no knowledge base at {self.folder}; give the folder `hilrl correct --kb` wrote")
        if create:
            (self.folder / "arrays").mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "entries.jsonl"

    def _lines(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line torn by a crash
                continue
        return out

    def entries(self) -> list[Entry]:
        """The live entries, oldest first."""
        records = self._lines()
        gone = {r["forget"] for r in records if "forget" in r}
        fields = set(Entry.__dataclass_fields__)
        return [Entry(**{k: v for k, v in r.items() if k in fields}) for r in records
                if "id" in r and r["id"] not in gone]

    def get(self, entry_id: str) -> Entry:
        for entry in self.entries():
            if entry.id == entry_id:
                return entry
        known = ", ".join(e.id for e in self.entries()) or "none"
        raise KnowledgeError(f"no entry {entry_id!r} in {self.folder} (entries: {known}); see `hilrl kb list`")

    def feature(self, entry: Entry) -> np.ndarray | None:
        """The entry's visual feature, or None when it has none."""
        if entry.visual is None or not (self.folder / entry.visual).is_file():
            return None
        return np.load(self.folder / entry.visual)

    def _next_id(self) -> str:
        numbers = [int(r["id"][1:]) for r in self._lines() if str(r.get("id", "")).startswith("k")]
        return f"k{max(numbers, default=0) + 1:04d}"

    def _append(self, record: dict[str, Any]) -> None:
        torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # a crash cut the last line: start on a new one
        with open(self.path, "a") as f:
            f.write(("\n" if torn else "") + json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, kind: str, task: str, text: str, feature: np.ndarray | None = None, **fields: Any) -> Entry:
        """Write one entry (its feature first, then its line) and return it."""
        entry = Entry(self._next_id(), kind, task, text, created=time.time(), **fields)  # type: ignore[arg-type]
        if feature is not None:
            entry.visual = f"arrays/{entry.id}.npy"
            tmp = self.folder / f"arrays/.{entry.id}.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(feature, np.float32))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / entry.visual)
        self._append(asdict(entry))
        return entry

    def forget(self, entry_id: str) -> Entry:
        """Hide an entry (a ``forget`` line is appended; nothing is rewritten)."""
        entry = self.get(entry_id)
        self._append({"forget": entry_id, "time": time.time()})
        return entry
