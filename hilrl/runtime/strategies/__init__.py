"""The training strategies :func:`hilrl.runtime.train.train` dispatches to, one per registered ``loop``:
``online`` (RL, one process), ``offline`` (BC), ``dagger_loop`` (DAgger / HG-DAgger) and ``sb3_loop``
(SB3's own ``learn()``). Each is built from the loop core (run folder, step source, seeds) and hands its
result to the run folder."""
