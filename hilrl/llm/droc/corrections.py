"""Skill-level corrective parameters: how a correction's words change a named parameter.

DROC (Zha et al. 2023, Stanford-ILIAD/droc) has the LLM write corrective parameters and scales vague
magnitudes. Here the LLM names the parameter, the direction and the size in the person's words
(:class:`SkillCorrection`), and one documented rule turns that into a number, so a correction does the same
thing whatever LLM answers:

- sizes: ``tiny`` ("a tiny bit", "very slightly") = 0.25 of a step, ``small`` ("a bit", "a little",
  "slightly") = 0.5, ``normal`` (no size given) = 1, ``large`` ("a lot", "much") = 2;
- an ``add`` parameter (a length, see :data:`hilrl.envs.skills.SKILLS`) moves by ``factor x step``
  (grasp ``height_offset``: step 4 cm, so "a bit higher" is +2 cm); an ``amount`` the person gave ("2 cm")
  is used as it is;
- a ``scale`` parameter (a speed) is multiplied by ``step ** factor`` to decrease and divided by it to
  increase (speed: step 0.5, so "slower" halves it and "a bit slower" multiplies it by 0.71); an ``amount``
  is the factor itself;
- the result is clipped to the parameter's bounds, and the note says so.

The note names the unit (an ``add`` parameter is a length in metres; a ``scale`` parameter is a fraction) and
what the number is (the parameter's description), e.g. ``grasp.height_offset: 0 -> 0.02 m (+0.02 m, small:
0.5 x its 0.04 m step); grasp point height above the object's centre``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from hilrl.envs.skills import SKILLS, SkillCall, SkillError

__all__ = ["MAGNITUDES", "SkillCorrection", "apply_correction", "corrected_value", "size_said"]

MAGNITUDES: dict[str, float] = {"tiny": 0.25, "small": 0.5, "normal": 1.0, "large": 2.0}


class SkillCorrection(BaseModel):
    """The LLM's reading of a skill-level correction."""

    model_config = ConfigDict(extra="forbid")

    step: int
    parameter: str
    direction: Literal["increase", "decrease"]
    magnitude: Literal["tiny", "small", "normal", "large"] = "normal"
    amount: float | None = None

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: Any) -> Any:
        """The words a small model uses for a direction (``up``, ``higher``, ``less``...) read as one."""
        word = str(value).strip().lower()
        for name, words in _DIRECTIONS.items():
            if word in words:
                return name
        raise ValueError(f'direction must be exactly "increase" or "decrease"; got {value!r}')

    @field_validator("magnitude", mode="before")
    @classmethod
    def _magnitude(cls, value: Any) -> Any:
        word = "normal" if value is None else str(value).strip().lower()
        for name, words in _SIZES.items():
            if word in words:
                return name
        raise ValueError(f'magnitude must be exactly "tiny", "small", "normal" or "large"; got {value!r}')


_DIRECTIONS = {"increase": ("increase", "up", "higher", "raise", "more", "larger", "bigger", "faster", "further",
                            "wider", "longer", "+"),
               "decrease": ("decrease", "down", "lower", "less", "smaller", "slower", "shorter", "narrower",
                            "reduce", "-")}
_SIZES = {"tiny": ("tiny", "very small", "a tiny bit", "very slightly"),
          "small": ("small", "a bit", "a little", "slightly", "little", "slight"),
          "normal": ("normal", "medium", "moderate", "default", ""),
          "large": ("large", "big", "a lot", "much", "very large", "huge")}


# the size phrases a person says, longest first, so "a tiny bit" is tiny and not "a bit" (:func:`size_said`)
_SAID_SIZES = sorted(((phrase, name) for name, words in _SIZES.items() if name != "normal" for phrase in words),
                     key=lambda pair: -len(pair[0]))


def size_said(correction: str) -> str | None:
    """The size the person's own words give (``tiny``, ``small`` or ``large`` by the phrases of :data:`_SIZES`,
    the longest phrase first), or ``None`` when they give none."""
    text = correction.lower()
    for phrase, name in _SAID_SIZES:
        if re.search(rf"\b{re.escape(phrase)}\b", text):
            return name
    return None


def corrected_value(skill: str, parameter: str, old: float, direction: str, magnitude: str = "normal",
                    amount: float | None = None) -> tuple[float, str]:
    """The parameter's new value by the module's rule, and a note saying what was done.

    Raises:
        SkillError: the skill has no such number parameter.
    """
    param = SKILLS[skill].param(parameter) if skill in SKILLS else None
    if param is None or param.kind != "number":
        raise SkillError(f"{skill}.{parameter} is not a number parameter a correction can change; the number "
                         f"parameters of {skill}: "
                         f"{', '.join(p.name for p in SKILLS[skill].params if p.kind == 'number') or 'none'}")
    sign = 1.0 if direction == "increase" else -1.0
    factor = MAGNITUDES[magnitude]
    if param.change == "add":  # a length, in metres
        unit = " m"
        change = abs(amount) if amount is not None else factor * param.step
        new = old + sign * change
        how = f"{'+' if sign > 0 else '-'}{change:.3g} m"
        size = f"{magnitude}: {factor:g} x its {param.step:g} m step"
    else:  # a fraction, scaled
        unit = ""
        ratio = abs(amount) if amount is not None else param.step ** factor
        ratio = ratio if ratio <= 1 else 1 / ratio
        new = old / ratio if sign > 0 else old * ratio
        how = f"x{(1 / ratio if sign > 0 else ratio):.3g}"
        size = f"{magnitude}: {param.step:g} to the power {factor:g}"
    clipped = min(max(new, param.low), param.high)
    what = re.sub(r"\s*\(m\)$", "", param.doc)  # the unit is on the numbers
    note = (f"{skill}.{parameter}: {old:.3g} -> {clipped:.3g}{unit} ({how}, {size if amount is None else 'as said'}); "
            f"{what}")
    if clipped != new:
        note += f"; clipped to its bounds [{param.low:g}, {param.high:g}]{unit}"
    return clipped, note


def apply_correction(plan: list[SkillCall], correction: SkillCorrection) -> tuple[list[SkillCall], str]:
    """The plan with the corrected step, and the note.

    Raises:
        SkillError: the step index or parameter does not fit the plan.
    """
    if not 0 <= correction.step < len(plan):
        raise SkillError(f"step {correction.step} is not in the plan (steps 0 to {len(plan) - 1})")
    call = plan[correction.step]
    SKILLS[call.skill].param(correction.parameter)  # a SkillError naming the skill's parameters
    value, note = corrected_value(call.skill, correction.parameter, float(call.args[correction.parameter]),
                                  correction.direction, correction.magnitude, correction.amount)
    fixed = SkillCall(call.skill, {**call.args, correction.parameter: value})
    return [*plan[:correction.step], fixed, *plan[correction.step + 1:]], note
