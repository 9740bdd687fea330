"""Learners and policies: SAC/RLPD, BC, DAgger, encoders, SB3 adapters.

Importing the package registers the built-in algorithms (:mod:`hilrl.policies.configs`, torch-free), so
:mod:`hilrl.policies.registry` is complete whenever it is imported; the registry never imports them.
"""

from hilrl.policies import configs  # noqa: F401  (registers the built-in algorithms)
