"""Online RL across processes: the learner (its training loop, :mod:`~hilrl.runtime.distributed.learner`, and
its ZMQ server, :mod:`~hilrl.runtime.distributed.learner_server`), actor processes
(:mod:`~hilrl.runtime.distributed.actor`), and the transport between them (:mod:`~hilrl.runtime.distributed.transport`:
pyzmq, msgpack with raw numpy buffers, CurveZMQ off loopback)."""

from __future__ import annotations

from hilrl.config import ExperimentConfig
from hilrl.errors import HilrlError


def check_distributable(config: ExperimentConfig) -> None:
    """Refuse an algorithm that cannot run as a learner fed by actors (the config does it for runtime: distributed);
    the learner and every actor check it."""
    from hilrl.policies.registry import algorithm_names, algorithm_spec

    if not algorithm_spec(config.algo.name).distributed:
        raise HilrlError(f"algo.name {config.algo.name!r} does not run as a learner fed by actors; the ones that do: "
                         f"{', '.join(algorithm_names(distributed=True))}")
