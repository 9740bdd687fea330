"""The one seed scheme of every loop: which seed each random thing of a run gets from ``train.seed``.

A run draws from several independent streams of steps: the local loop is stream 0 and actor
process ``k`` (``hilrl actor --index k``) is stream ``k + 1``. For ``train.seed = s``:

=================================  ==========================================  ======================
what                               seed                                        who uses it
=================================  ==========================================  ======================
training episode ``i`` of stream   ``s * 1_000_003 + 100_003 * stream + i``    env ``reset`` (mod 2^32)
recorded demo ``i``                ``s * 100_000 + i``                         ``demos`` section
validation episode ``i``           ``20_000 + i``                              ``train.eval_every``
test episode ``i``                 ``10_000 + i``                              final eval, ``hilrl eval``
network initialisation             ``s``                                       the learner
acting noise of stream             ``s + stream``                              an actor's own copy
loop's own generator               ``s + 1_000 * stream``                      ``train.random_steps``
scripted expert of stream          ``s + 1 + 7_919 * stream``                  a simulated person
the person's gate                  ``s + 2 + 7_919 * stream``                  its random choices
=================================  ==========================================  ======================

Test, validation, demo and training seeds never meet: demos use 0 .. episodes-1 (seed 0),
evaluations 10 000 and 20 000 on, and training episodes are spread by the large multipliers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEST_SEED = 10_000
VALIDATION_SEED = 20_000


@dataclass(frozen=True)
class Seeds:
    """The seeds of one stream of a run (see the module table)."""

    seed: int
    stream: int = 0

    def episode(self, index: int) -> int:
        return (self.seed * 1_000_003 + 100_003 * self.stream + int(index)) % 2**32

    def demo(self, index: int) -> int:
        return self.seed * 100_000 + int(index)

    @property
    def network(self) -> int:
        return self.seed

    @property
    def acting(self) -> int:
        return self.seed + self.stream

    @property
    def expert(self) -> int:
        return self.seed + 1 + 7_919 * self.stream

    @property
    def gate(self) -> int:
        return self.expert + 1

    def loop_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed + 1_000 * self.stream)
