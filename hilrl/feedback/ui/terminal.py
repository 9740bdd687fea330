"""``hilrl label RUN --terminal``: label pending queries without a browser.

Each query's segment videos are written to ``RUN/preferences/videos/`` (open them with any player);
then type ``1``/``f`` first, ``2``/``s`` second, ``e`` equal, ``k`` skip, ``u`` undo, ``q`` quit; a
ranking is its item numbers best first (``2 1 3``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from pathlib import Path

from hilrl.feedback.preferences.store import LabelRefused, PreferenceStore
from hilrl.feedback.ui.app import VideoCache

PAIR_KEYS = {"1": "first", "f": "first", "2": "second", "s": "second", "e": "equal", "k": "skip"}


def label_in_terminal(run_dir: str | Path, env_config: Any = None, who: str = "person",
                      read: Callable[[str], str] = input, write: Callable[[str], None] = print) -> int:
    """Ask for a label of each pending query until none is left or the person quits; returns labels made.

    ``env_config``: the run's env section (:func:`hilrl.config.load_run_env`) to write segment videos with;
    ``None`` writes none.
    """
    run_dir = Path(run_dir)
    store = PreferenceStore.for_run(run_dir)
    cache = VideoCache(store, env_config, prefetch=2)
    made = 0
    try:
        while True:
            pending = store.pending()
            progress = store.progress()
            if not pending:
                write(f"no pending queries ({progress['labelled']} labelled)")
                return made
            query = pending[0]
            write(f"query {query['id']} ({query['kind']}; {progress['pending']} pending, {progress['labelled']} "
                  "labelled)")
            for line in (f"task: {query['task']}" if query.get("task") else "", query.get("criterion", "")):
                if line:
                    write(f"  {line}")
            for i, sid in enumerate(query["segments"], 1):
                path = cache.path(sid) if env_config is not None else None
                write(f"  {i}: {path if path else 'segment ' + sid + ' (no video)'}")
            prompt = ("[1/f] first  [2/s] second  [e] equal  [k] skip  [u] undo  [q] quit: " if query["kind"] == "pair"
                      else f"order best first (e.g. {' '.join(str(i) for i in range(1, len(query['segments']) + 1))}),"
                      " [k] skip, [u] undo, [q] quit: ")
            answer = read(prompt).strip().lower()
            try:
                if answer == "q":
                    return made
                if answer == "u":
                    undone = store.undo_last(who)
                    write(f"undid {undone.label!r} on {undone.query}")
                    made -= 1
                elif query["kind"] == "pair" and answer in PAIR_KEYS:
                    store.add_label(query["id"], PAIR_KEYS[answer], who)
                    made += 1
                elif answer == "k":
                    store.add_label(query["id"], "skip", who)
                    made += 1
                elif query["kind"] == "ranking" and answer.replace(" ", "").isdigit():
                    store.add_label(query["id"], "ranking", who, order=[int(x) - 1 for x in answer.split()])
                    made += 1
                else:
                    write(f"{answer!r} is not an answer here; see the keys above")
            except LabelRefused as exc:
                write(f"not saved: {exc}")
    finally:
        cache.close()
