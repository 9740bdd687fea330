"""SAC in the RLPD form used by HIL-SERL and RLIF, in parts.

=================  ===================================================================================
``config.py``      :class:`SACConfig` in sections (core, variants, normalisation, images, execution),
                   every rule between settings, and the ``algo: sac`` registration; imports no torch
``agent.py``       :class:`SAC`: networks, optimisers, RLPD sampling, fitting, checkpoints, the choice
                   of update path
``update.py``      the eager update, top to bottom: the readable reference
``acting.py``      acting and the policy weights sent to actor processes
``fast.py``        the speed paths (fused LayerNorm, compiled critic, CUDA graph, the C++ update) and the
                   one build-and-load helper of the C++ sources in ``csrc/``
=================  ===================================================================================

``from hilrl.policies.sac import SAC, SACConfig`` works as before; the learner's modules (torch) load on
first use of :class:`SAC`, so that validating a config imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from hilrl.policies.sac.config import SACConfig, SACExecution, SACImages, SACNormalisation, SACVariants

__all__ = ["SAC", "SACConfig", "SACExecution", "SACImages", "SACNormalisation", "SACVariants", "batch_to_torch",
           "resolve_device"]

_FROM_AGENT = ("SAC", "batch_to_torch", "resolve_device")


def __getattr__(name: str) -> Any:
    if name in _FROM_AGENT:
        return getattr(importlib.import_module("hilrl.policies.sac.agent"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
