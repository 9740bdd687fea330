"""The training strategies :func:`hilrl.runtime.train.train` dispatches to, one per registered ``loop``:
``online`` (RL, one process), ``offline`` (BC), ``dagger_loop`` (DAgger / HG-DAgger) and ``sb3_loop``
(SB3's own ``learn()``); the distributed learner (:mod:`hilrl.runtime.distributed.learner`) is the online
one across processes. Each is built from the loop core (run folder, step source, seeds) and ends the same
way: it evaluates its final policy (:func:`hilrl.runtime.evaluate.final_evaluation`) and hands the result to
the run folder (:meth:`hilrl.runtime.run.RunFolder.finish`: scalars, ``metrics.json``)."""
