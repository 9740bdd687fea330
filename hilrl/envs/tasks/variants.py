"""Named task variants for language corrections: a registered task with keyword arguments and the text a
planner is told about it. Some need a skill parameter a person would name (DROC's setting, Zha et al.
2023): a tall block is grasped too low at its centre ("grasp it a bit higher"), a cube on a slippery table
slides past its goal when pushed fast ("push it more slowly"), a peg carried straight to the hole hits the
block ("lift the peg above the block before moving it over the hole"). Every variant's keyword defaults
leave the registered task unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hilrl.errors import HilrlError

__all__ = ["VARIANTS", "Variant", "variant"]


@dataclass(frozen=True)
class Variant:
    """A task and the keyword arguments of one of its variants.

    Args:
        name: the variant id (``pick_tall``).
        task_id: the registered gymnasium id.
        kwargs: keywords for ``gymnasium.make`` (the task's constructor).
        description: the goal, as a planner reads it (it names the objects, not their sizes).
    """

    name: str
    task_id: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_PICK = "Pick up the block and hold its centre at the goal, a point in the air."
_PUSH = "Push the block across the table so that it stops at the goal on the table."
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("reach", "hilrl/Reach-v0", "Move the gripper to the goal."),
    Variant("pick_cube", "hilrl/PickCube-v0", _PICK),
    Variant("pick_tall", "hilrl/PickCube-v0", _PICK, {"block_height": 0.12}),
    Variant("pick_taller", "hilrl/PickCube-v0", _PICK, {"block_height": 0.16}),
    Variant("push", "hilrl/Push-v0", _PUSH),
    Variant("push_ice", "hilrl/Push-v0", _PUSH, {"table_friction": 0.05}),
    Variant("peg_insert", "hilrl/PegInsert-v0", "Pick up the peg and insert it into the hole of the block on the table."),
)}


def variant(name: str) -> Variant:
    """The variant called ``name``.

    Raises:
        HilrlError: no such variant (naming those there are).
    """
    if name not in VARIANTS:
        raise HilrlError(f"unknown task variant {name!r}; the variants are {', '.join(VARIANTS)}")
    return VARIANTS[name]
