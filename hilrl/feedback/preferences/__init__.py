"""Preference feedback (door 2): segments, queries, the durable store, synthetic teachers and reward models.

- :mod:`.store` the run's append-only preference store (queries, segments, labels; TRL export);
- :mod:`.segments` segments cut from stored episodes; :mod:`.teachers` B-Pref's and the regret teacher;
- :mod:`.models` Bradley–Terry / regret ensembles and query selection; :mod:`.source` the PEBBLE-style
  source (``reward: preferences``); :mod:`.heron` HERON (``reward: heron``); :mod:`.rapl` RAPL
  (``reward: rapl``); :mod:`.classifier` HIL-SERL's success classifier (``reward: success_classifier``);
- :mod:`.render` segment videos from stored MuJoCo states, for the labelling page (:mod:`hilrl.feedback.ui`).

Importing this package imports neither torch nor MuJoCo; the modules that need them load when used.
"""
