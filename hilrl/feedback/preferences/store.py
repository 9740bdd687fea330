"""The durable preference store of a run: queries, their segments, and the labels people (or teachers) give.

Layout under ``RUN/preferences/`` (all appended, never rewritten)::

    queries.jsonl         one query per line: {"id", "kind": "pair"|"ranking", "segments": [ids], "created", ...}
    segments/<id>.npz     a segment's arrays (features, env rewards, reward terms, MuJoCo states...), tmp-then-rename
    labels.jsonl          one label per line: {"id", "query", "label", "order", "who", "at"} (+ "reason" when
                          the labeller gave one, e.g. an AI judge); an undo is a line
                          {"id", "undoes": label id, "who", "at"}

Every label is appended under an exclusive ``flock`` (several servers, tabs or people at once never
double-count: a query already labelled is refused inside the lock), then flushed and fsynced before
:meth:`PreferenceStore.add_label` returns, so an acknowledged label survives ``kill -9`` (and power
loss). Readers never lock: they parse whole lines and ignore a torn last line (a writer killed
mid-write); the next writer ends that line first. A learner reads the store while people label.

Labels: ``first``, ``second``, ``equal``, ``skip`` for pairs; ``ranking`` with ``order`` (the query's
item indices, best first) for K-way rankings, which :func:`ranking_pairs` expands to pairs.
``who``: a person's id, ``synthetic`` (a simulated teacher) or ``ai``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.errors import HilrlError

PAIR_LABELS = ("first", "second", "equal", "skip")
LABELS = (*PAIR_LABELS, "ranking")


class LabelRefused(HilrlError):
    """A label the store will not take (unknown query, already labelled, bad value); nothing was written."""


@dataclass
class Label:
    """One (not undone) label of a query."""

    id: int
    query: str
    label: str
    who: str
    at: float
    order: list[int] = field(default_factory=list)
    reason: str = ""

    def pairs(self, count: int) -> list[tuple[int, int, float]]:
        """``(i, j, p)`` comparisons of the query's items: ``p`` = probability that ``i`` is preferred (0.5 = equal)."""
        if self.label == "first":
            return [(0, 1, 1.0)]
        if self.label == "second":
            return [(0, 1, 0.0)]
        if self.label == "equal":
            return [(0, 1, 0.5)]
        if self.label == "ranking":
            return ranking_pairs(self.order)
        return []  # skip


def ranking_pairs(order: Sequence[int]) -> list[tuple[int, int, float]]:
    """A K-way ranking (item indices, best first) as its K(K-1)/2 pairs ``(better, worse, 1.0)``."""
    return [(int(better), int(worse), 1.0) for better, worse in combinations(order, 2)]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (a torn or garbled last line, from a killed writer, is ignored)."""
    if not path.is_file():
        return []
    records = []
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n")[:-1] if not data.endswith(b"\n") else data.split(b"\n"):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write: it was never acknowledged
    return records


class PreferenceStore:
    """The preference files of one run (module docstring).

    :param folder: the store's folder, usually ``RUN/preferences`` (:meth:`for_run`); created when missing.
    :param fsync: fsync after every write (labels and queries survive power loss, not only ``kill -9``).
    """

    def __init__(self, folder: str | os.PathLike, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.segments_dir = self.folder / "segments"
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        self.queries_path = self.folder / "queries.jsonl"
        self.labels_path = self.folder / "labels.jsonl"
        self.lock_path = self.folder / "store.lock"
        self.fsync = fsync

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> PreferenceStore:
        return cls(Path(run_dir) / "preferences")

    # ---- writing --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, path: Path, record: Mapping[str, Any]) -> None:
        """Append one line (under the lock), ending a torn last line first; flushed (and fsynced) on return."""
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        line = b"\n" + line  # the previous writer died mid-line; that line stays unparsable
            os.write(fd, line)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def next_segment_id(self) -> str:
        with self._locked():
            count = len(list(self.segments_dir.glob("*.npz"))) + len(list(self.segments_dir.glob("*.reserved")))
            sid = f"s{count:06d}"
            (self.segments_dir / f"{sid}.reserved").touch()
        return sid

    def add_segment(self, arrays: Mapping[str, np.ndarray], sid: str | None = None) -> str:
        """Write a segment's arrays (tmp-then-rename); returns its id."""
        sid = sid or self.next_segment_id()
        path = self.segments_dir / f"{sid}.npz"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        (self.segments_dir / f"{sid}.reserved").unlink(missing_ok=True)
        return sid

    def add_query(self, segments: Sequence[str], meta: Mapping[str, Any] | None = None) -> str:
        """Append a query over stored segments (2: a pair, K > 2: a ranking); returns its id."""
        if len(segments) < 2:
            raise HilrlError(f"a query compares at least 2 segments, got {len(segments)}")
        missing = [s for s in segments if not (self.segments_dir / f"{s}.npz").is_file()]
        if missing:
            raise HilrlError(f"query over segments {missing} that are not in {self.segments_dir}; add_segment first")
        with self._locked():
            qid = f"q{len(_read_lines(self.queries_path)):06d}"
            record = {"id": qid, "kind": "pair" if len(segments) == 2 else "ranking", "segments": list(segments),
                      "created": time.time(), **(meta or {})}
            self._append(self.queries_path, record)
        return qid

    def add_label(self, query: str, label: str, who: str, order: Sequence[int] | None = None,
                  reason: str = "") -> Label:
        """Record ``label`` for ``query``; returns it once it is on disk. Raises :class:`LabelRefused` (nothing
        written) for an unknown query, a query that already has a label (undo it first), or a bad label.
        ``reason``: why (an AI judge's explanation), kept with the label."""
        if not isinstance(who, str) or not who.strip() or len(who) > 100:
            raise LabelRefused("who must name the labeller: a person's id, 'synthetic' or 'ai' (1-100 characters)")
        if label not in LABELS:
            raise LabelRefused(f"label {label!r} is not one of {', '.join(LABELS)}")
        with self._locked():
            queries = {q["id"]: q for q in _read_lines(self.queries_path)}
            if query not in queries:
                raise LabelRefused(f"no query {query!r} in {self.queries_path}")
            size = len(queries[query]["segments"])
            if label == "ranking":
                order = [int(i) for i in (order or [])]
                if sorted(order) != list(range(size)):
                    raise LabelRefused(f"a ranking of query {query!r} orders all of its {size} items once, best "
                                       f"first (a permutation of 0..{size - 1}); got {order}")
            elif size != 2 and label != "skip":
                raise LabelRefused(f"query {query!r} ranks {size} items: label it 'ranking' with an order, or 'skip'")
            elif order:
                raise LabelRefused("order is given with label 'ranking' only")
            records = _read_lines(self.labels_path)
            active = _active(records)
            if query in active:
                raise LabelRefused(f"query {query!r} is already labelled ({active[query].label!r} by "
                                   f"{active[query].who}); undo that label first")
            record = {"id": len(records), "query": query, "label": label, "order": list(order or []),
                      "who": who, "at": time.time(), **({"reason": str(reason)} if reason else {})}
            self._append(self.labels_path, record)
        return Label(record["id"], query, label, who, record["at"], record["order"], str(reason or ""))

    def undo_last(self, who: str | None = None) -> Label:
        """Undo the newest label still in force (of ``who`` when given); returns it. Its query is pending again."""
        with self._locked():
            records = _read_lines(self.labels_path)
            live = [lab for lab in _active(records).values() if who is None or lab.who == who]
            if not live:
                raise LabelRefused("nothing to undo" + (f" for {who!r}" if who else ""))
            last = max(live, key=lambda lab: lab.id)
            self._append(self.labels_path, {"id": len(records), "undoes": last.id, "who": who or last.who,
                                            "at": time.time()})
        return last

    # ---- reading --------------------------------------------------------------------------

    def queries(self) -> list[dict[str, Any]]:
        return _read_lines(self.queries_path)

    def labels(self) -> dict[str, Label]:
        """The labels in force, by query id (undone ones dropped)."""
        return _active(_read_lines(self.labels_path))

    def pending(self) -> list[dict[str, Any]]:
        """Queries without a label in force, oldest first."""
        done = self.labels()
        return [q for q in self.queries() if q["id"] not in done]

    def segment(self, sid: str) -> dict[str, np.ndarray]:
        path = self.segments_dir / f"{sid}.npz"
        if not path.is_file():
            raise HilrlError(f"segment {sid!r} is not in {self.segments_dir}")
        with np.load(path) as f:
            return {k: f[k] for k in f.files}

    def progress(self) -> dict[str, Any]:
        """Labelled and pending counts, and labels per minute over the last 5 minutes of labelling."""
        labels = list(self.labels().values())
        pending = len(self.queries()) - len(labels)
        recent = [lab.at for lab in labels if lab.at > time.time() - 300]
        rate = 0.0
        if len(recent) >= 2:
            rate = 60.0 * (len(recent) - 1) / max(max(recent) - min(recent), 1e-6)
        return {"labelled": len(labels), "pending": pending, "labels_per_minute": round(rate, 1)}

    def trl_rows(self, prompt: str | None = None, who: Sequence[str] | None = None,
                 only: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The labels as TRL preference rows ``{"prompt", "chosen", "rejected"}``, oldest label first; rankings
        expand to their pairs; equal and skipped ones are left out. A query's items are its ``texts`` (a
        query may carry ``prompt`` and ``texts``), else ``segment:<id>``. ``who``: only these labellers;
        ``only``: only these query ids."""
        queries = {q["id"]: q for q in self.queries()}
        keep = None if only is None else set(only)
        rows = []
        for label in sorted(self.labels().values(), key=lambda lab: lab.id):
            if (who is not None and label.who not in who) or (keep is not None and label.query not in keep):
                continue
            query = queries[label.query]
            texts = query.get("texts") or [f"segment:{sid}" for sid in query["segments"]]
            for i, j, p in label.pairs(len(texts)):
                if p == 0.5:
                    continue
                chosen, rejected = (i, j) if p == 1.0 else (j, i)
                rows.append({"prompt": query.get("prompt", prompt or ""), "chosen": texts[chosen],
                             "rejected": texts[rejected]})
        return rows

    def export_trl(self, path: str | os.PathLike, prompt: str | None = None) -> int:
        """Write :meth:`trl_rows` as TRL's preference JSONL, one row a line. Returns the number of lines."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.trl_rows(prompt)
        with open(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        return len(rows)


def _active(records: list[dict[str, Any]]) -> dict[str, Label]:
    undone = {r["undoes"] for r in records if "undoes" in r}
    active: dict[str, Label] = {}
    for r in records:
        if "undoes" in r or r["id"] in undone:
            continue
        active[r["query"]] = Label(r["id"], r["query"], r["label"], r["who"], r["at"], r.get("order", []),
                                   r.get("reason", ""))
    return active
