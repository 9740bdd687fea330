"""Preference rows for TRL: from the preference store, from JSONL, and back into the store.

A row is TRL's preference format (huggingface/trl, "Dataset formats"): ``{"prompt", "chosen",
"rejected"}``, either *standard* (three strings) or *conversational* (``prompt`` a list of
``{"role", "content"}`` messages, ``chosen``/``rejected`` lists holding the assistant's answer).
Every row of one data set has one format; a file mixing them, or a line missing a field, is refused
with the file, the line and the fix.

Text pairs live in the same preference store as robot rollouts (:mod:`hilrl.feedback.preferences.store`):
:func:`add_text_query` writes each candidate text as a segment (``text`` array) and a query carrying
``prompt`` and ``texts``, so the labelling page, the AI judge and people label them alike, and
:meth:`~hilrl.feedback.preferences.store.PreferenceStore.trl_rows` reads them back (rankings expanded to
their pairs). ``hilrl.llm`` may import ``hilrl.feedback``: both sit in one layer above ``envs``, and
``feedback`` never imports ``llm``, so there is no circle (tests/test_loop_core.py checks both).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError
from hilrl.feedback.preferences.store import PreferenceStore

__all__ = ["add_text_query", "load_preferences", "read_jsonl", "row_format", "split_rows", "store_rows",
           "to_dataset", "write_jsonl"]

FIELDS = ("prompt", "chosen", "rejected")
FORMAT_HINT = ('each line is {"prompt": str, "chosen": str, "rejected": str} (standard) or the same with lists '
               'of {"role", "content"} messages (conversational)')


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def row_format(row: Mapping[str, Any]) -> str:
    """``standard`` or ``conversational``; raises ``ValueError`` naming the field that is neither."""
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(f) for f in missing)}")
    if all(isinstance(row[f], str) for f in FIELDS):
        return "standard"
    if all(_is_messages(row[f]) for f in FIELDS):
        return "conversational"
    bad = [f for f in FIELDS if not isinstance(row[f], str) and not _is_messages(row[f])]
    raise ValueError(f"field {bad[0] if bad else 'prompt'!r} is neither a string nor a list of "
                     "{role, content} messages, or the fields mix the two formats")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a TRL preference JSONL file.

    Raises:
        HilrlError: the file is missing, a line is not a JSON object, misses a field, or the formats mix
            (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise HilrlError(f"{path}: no such preference file; {FORMAT_HINT}")
    rows: list[dict[str, Any]] = []
    kind = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HilrlError(f"{path}:{number}: not JSON ({exc.msg}); {FORMAT_HINT}") from None
        if not isinstance(row, dict):
            raise HilrlError(f"{path}:{number}: a line is a JSON object; {FORMAT_HINT}")
        try:
            this = row_format(row)
        except ValueError as exc:
            raise HilrlError(f"{path}:{number}: {exc}; {FORMAT_HINT}") from None
        if kind is not None and this != kind:
            raise HilrlError(f"{path}:{number}: a {this} row after {kind} ones; one file holds one format")
        kind = this
        rows.append({f: row[f] for f in FIELDS})
    if not rows:
        raise HilrlError(f"{path}: no preference rows; {FORMAT_HINT}")
    return rows


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``rows`` as TRL preference JSONL (tmp-then-rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(dict(row)) + "\n" for row in rows)
    os.replace(tmp, path)
    return path


def _store_folder(path: Path) -> Path | None:
    for folder in (path, path / "preferences"):
        if (folder / "queries.jsonl").is_file():
            return folder
    return None


def _as_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """A store row whose prompt is chat messages gets its answers as assistant messages (TRL's conversational)."""
    if isinstance(row["prompt"], list) and isinstance(row["chosen"], str):
        return {**row, "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}]}
    return row


def store_rows(store: PreferenceStore, who: Sequence[str] | None = None,
               only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The store's labelled pairs as TRL rows (rankings expanded; a chat-message prompt makes them conversational).

    :param who: only the labels of these labellers; :param only: only these query ids."""
    return [_as_conversation(row) for row in store.trl_rows(who=who, only=only)]


def load_preferences(source: str | os.PathLike, who: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Preference rows from a JSONL file, a preference store folder, or a run folder holding ``preferences/``.

    :param who: from a store, only the labels of these labellers (e.g. ``["ai"]``).
    """
    path = Path(source)
    folder = _store_folder(path) if path.is_dir() else None
    if path.is_dir() and folder is None:
        raise HilrlError(f"{path}: a folder without preference queries (queries.jsonl); give a TRL JSONL file, a "
                         "preference store folder or a run folder with preferences/")
    if folder is None:
        return read_jsonl(path)
    rows = store_rows(PreferenceStore(folder), who=who)
    if not rows:
        raise HilrlError(f"{folder}: no labelled text pairs yet (equal and skipped labels give none); label some "
                         "with `hilrl label` or the AI judge")
    for row in rows:
        if row["chosen"].startswith("segment:"):
            raise HilrlError(f"{folder}: its queries compare robot segments, not texts; text queries carry 'texts' "
                             "(hilrl.llm.align.data.add_text_query)")
    return rows


def add_text_query(store: PreferenceStore, prompt: str, texts: Sequence[str],
                   meta: Mapping[str, Any] | None = None) -> str:
    """Put candidate answers to ``prompt`` into ``store`` as one query (2 texts: a pair; more: a ranking).

    Each text is also a segment (a ``text`` array), so every tool that reads segments finds it."""
    import numpy as np

    segments = [store.add_segment({"text": np.array(text)}) for text in texts]
    return store.add_query(segments, {"prompt": prompt, "texts": list(texts), "modality": "text", **(meta or {})})


def split_rows(rows: Sequence[Mapping[str, Any]], held_out: float, seed: int = 0) -> tuple[list, list]:
    """``(train, held_out)``: a seeded shuffle, ``held_out`` of the rows (at least one each when possible)."""
    if not 0.0 <= held_out < 1.0:
        raise HilrlError(f"held-out fraction {held_out} must be in [0, 1)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = int(round(held_out * len(rows)))
    if held_out > 0 and len(rows) >= 2:
        count = min(max(count, 1), len(rows) - 1)
    test = [dict(rows[i]) for i in sorted(order[:count])]
    train = [dict(rows[i]) for i in sorted(order[count:])]
    return train, test


def to_dataset(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A ``datasets.Dataset`` of the rows (what TRL's trainers take)."""
    from datasets import Dataset

    return Dataset.from_list([dict(row) for row in rows])
