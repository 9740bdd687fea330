"""Preference feedback (door 2): segments, queries, the durable store, synthetic teachers and reward models.

- :mod:`.store` the run's append-only preference store (queries, segments, labels; TRL export);
- :mod:`.segments` segments cut from stored episodes; :mod:`.teachers` B-Pref's and the regret teacher;
- :mod:`.models` Bradley–Terry / regret ensembles and query selection; :mod:`.source` the PEBBLE-style
  source (``reward: preferences``); :mod:`.heron` HERON (``reward: heron``); :mod:`.rapl` RAPL
  (``reward: rapl``); :mod:`.classifier` HIL-SERL's success classifier (``reward: success_classifier``);
- :mod:`.render` segment videos from stored MuJoCo states, for the labelling page (:mod:`hilrl.feedback.ui`).

Importing this package imports neither torch nor MuJoCo; the modules that need them load when used.
"""

from pathlib import Path as _Path
from typing import Any as _Any

from hilrl.errors import HilrlError as _HilrlError


def saved_model_kwargs(config: _Any, source: str, allowed: set[str], what: str) -> tuple[dict[str, _Any], _Path]:
    """``reward.kwargs`` of a source that reads a model fitted beforehand: the kwargs and the model file,
    or a clear error naming what is missing (``model`` is required; only ``allowed`` keys are taken)."""
    kwargs = dict(config.kwargs)
    if sorted(set(kwargs) - allowed) or "model" not in kwargs:
        raise _HilrlError(f"reward source {source!r} takes kwargs {', '.join(sorted(allowed))} (model: a saved "
                          f"{what} file, required); got {sorted(kwargs)}")
    path = _Path(kwargs["model"])
    if not path.is_file():
        raise _HilrlError(f"reward.kwargs.model {path}: no such {what} file")
    return kwargs, path
