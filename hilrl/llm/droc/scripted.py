"""A rule-based stand-in for the LLM of a correction session: ``droc_responder(request_body)`` is a script
for :class:`~hilrl.llm.scripted_server.ScriptedServer`, so the session talks to it through the real
``openai`` SDK over HTTP, exactly as to vLLM or Ollama.

It is a fair stand-in: it reads only what the prompt shows (the ``KEY: json`` lines of the
``droc_*.txt`` prompts, the person's words) and answers as a careful LLM would, deterministically:

- plan: a plan from the task's description (pick and hold, insert, push, reach) with every parameter at its
  default unless PARAMETERS name it; a constraint it understands (lift/move above ... before/first) adds a
  ``move_to`` above the place target; one about pushing gently caps the push speed;
- classify: "stop"/"wait" is stop; ordering words (before, first, then, don't, never, avoid, instead) make it
  plan-level; otherwise skill-level, about the skill the words name or the step that failed;
- skill correction: the parameter from the words (higher/lower, slower/faster, further/shorter,
  wider/narrower), the size from the words (a tiny bit, a bit, a lot, "2 cm");
- constraint: the person's sentence itself, with the scene objects it names;
- distill: each constraint of the session, and each (skill, object) whose parameters differ between the first
  and the final plan;
- retrieve: the entries about objects that are in the new scene.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["droc_responder"]

_LINE = re.compile(r"^([A-Z_]+): (.*)$", re.M)


def _fields(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _LINE.findall(text):
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def droc_responder(body: dict[str, Any]) -> list[str]:
    """The answer to one chat-completions request body (a list of one choice text)."""
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    first = users[0] if users else ""
    request = _fields(first).get("REQUEST", "")
    quoted = re.search(r'said: "(.*?)"', first)
    fields = _fields(first)
    about = re.search(r"about step (\d+) of the plan", first)
    if about:
        fields["STEP"] = int(about.group(1))
    said = quoted.group(1) if quoted else ""
    answer = {"plan": _plan, "classify": _classify, "skill_correction": _skill, "constraint": _constraint,
              "distill": _distill, "retrieve": _retrieve}.get(request)
    if answer is None:
        return ["I can only answer the DROC prompts."]
    return [json.dumps(answer(fields, said))]


def _plan(fields: dict[str, Any], said: str) -> dict[str, Any]:
    description = str(fields.get("DESCRIPTION", "")).lower()
    objects = {k: v for k, v in fields.get("OBJECTS", {}).items()}
    movable = [k for k in objects if k not in ("goal", "hole")]
    target = "hole" if "hole" in objects else "goal"
    plan: list[dict[str, Any]]
    if "insert" in description and movable:
        plan = [{"skill": "grasp", "args": {"object": movable[0]}}, {"skill": "place", "args": {"target": target}},
                {"skill": "open_gripper", "args": {}}]
    elif "push" in description and movable:
        block, goal = objects[movable[0]], objects[target]
        dx, dy = goal[0] - block[0], goal[1] - block[1]
        distance = round((dx * dx + dy * dy) ** 0.5, 3)
        plan = [{"skill": "push", "args": {"object": movable[0], "direction": [round(dx, 3), round(dy, 3)],
                                           "distance": distance}}]
    elif movable:
        plan = [{"skill": "grasp", "args": {"object": movable[0]}}, {"skill": "place", "args": {"target": target}}]
    else:
        plan = [{"skill": "move_to", "args": {"pose": objects.get("goal", [0.45, 0.0, 0.2])}}]
    for rule in fields.get("CONSTRAINTS", []):
        rule = rule.lower()
        places = [i for i, c in enumerate(plan) if c["skill"] == "place"]
        if places and re.search(r"\b(lift|raise|move|carry)\b.*\b(above|over)\b", rule) and re.search(
                r"\b(before|first)\b", rule):
            spot = objects[plan[places[0]]["args"]["target"]]
            plan.insert(places[0], {"skill": "move_to", "args": {"pose": [spot[0], spot[1], round(spot[2] + 0.12, 3)]}})
        if re.search(r"\b(slow|gentl)", rule):
            for call in plan:
                if call["skill"] == "push":
                    call["args"]["speed"] = min(call["args"].get("speed", 1.0), 0.5)
    for taught in fields.get("PARAMETERS", []):
        for call in plan:
            args = call["args"]
            if call["skill"] == taught.get("skill") and taught.get("object") in (args.get("object"), args.get("target")):
                args.update(taught.get("parameters", {}))
    return {"plan": plan}


_SKILL_WORDS = {"grasp": r"\b(grasp|grab|grip|pick|hold)", "push": r"\b(push|shove|slide)",
                "place": r"\b(place|put|insert|lower it into)", "move_to": r"\b(move|go)\b"}


def _classify(fields: dict[str, Any], said: str) -> dict[str, Any]:
    text = said.lower()
    plan = fields.get("PLAN", [])
    if re.fullmatch(r"\W*(stop|halt|wait|freeze)\W*", text):
        return {"level": "stop", "skill": None, "step": None, "reason": "the person asked to stop"}
    if re.search(r"\b(before|first|then|don't|do not|never|avoid|instead|after)\b", text):
        return {"level": "plan", "skill": None, "step": None, "reason": "a rule about the order of the task"}
    skill = next((name for name, words in _SKILL_WORDS.items() if re.search(words, text)), None)
    results = fields.get("RESULTS", [])
    if skill is None and results:
        skill = results[-1].get("skill")
    steps = [i for i, c in enumerate(plan) if c["skill"] == skill]
    step = steps[-1] if steps else (len(results) - 1 if results else 0)
    return {"level": "skill", "skill": skill, "step": step, "reason": "a parameter of one skill"}


_PARAM_WORDS = [  # (pattern, {skill: parameter}, direction)
    (r"\b(higher|up|above)\b", {"grasp": "height_offset", "place": "height"}, "increase"),
    (r"\b(lower|down|deeper)\b", {"grasp": "height_offset", "place": "height"}, "decrease"),
    (r"\b(slower|slowly|gently|gentler)\b", {"push": "speed", "move_to": "speed"}, "decrease"),
    (r"\b(faster|quicker|harder)\b", {"push": "speed", "move_to": "speed"}, "increase"),
    (r"\b(less far|shorter|not so far|less)\b", {"push": "distance"}, "decrease"),
    (r"\b(further|farther|longer|more)\b", {"push": "distance"}, "increase"),
    (r"\b(wider)\b", {"grasp": "width"}, "increase"),
    (r"\b(narrower)\b", {"grasp": "width"}, "decrease"),
]


def _skill(fields: dict[str, Any], said: str) -> dict[str, Any]:
    text = said.lower()
    plan = fields.get("PLAN", [])
    step = int(fields.get("STEP", 0))
    parameter, direction = None, "increase"
    for pattern, by_skill, sense in _PARAM_WORDS:
        if not re.search(pattern, text):
            continue
        # the step the correction is about first, then the latest earlier step of a skill with that parameter
        for i in [step, *range(len(plan) - 1, -1, -1)]:
            name = by_skill.get(plan[i]["skill"]) if 0 <= i < len(plan) else None
            if name:
                parameter, direction, step = name, sense, i
                break
        if parameter:
            break
    if parameter is None:  # no size word it knows: slow the skill down, the safest change
        parameter, direction = "speed", "decrease"
    magnitude = "normal"
    if re.search(r"\b(a tiny bit|very slightly|tiny)\b", text):
        magnitude = "tiny"
    elif re.search(r"\b(a bit|a little|slightly|somewhat)\b", text):
        magnitude = "small"
    elif re.search(r"\b(a lot|much|way|far)\b", text) and not re.search(r"less far|so far", text):
        magnitude = "large"
    amount = None
    number = re.search(r"(\d+(?:\.\d+)?)\s*(mm|cm|m)\b", text)
    if number:
        amount = float(number.group(1)) * {"mm": 0.001, "cm": 0.01, "m": 1.0}[number.group(2)]
    return {"step": step if step is not None else 0, "parameter": parameter, "direction": direction,
            "magnitude": magnitude, "amount": amount}


def _constraint(fields: dict[str, Any], said: str) -> dict[str, Any]:
    sentence = said.strip().rstrip(".")
    sentence = sentence[:1].upper() + sentence[1:] + "."
    named = [name for name in fields.get("OBJECTS", {}) if re.search(rf"\b{re.escape(name)}\b", said.lower())]
    return {"constraint": sentence, "objects": named}


def _distill(fields: dict[str, Any], said: str) -> dict[str, Any]:
    constraints = [{"text": c["constraint"], "objects": c.get("objects", [])}
                   for c in fields.get("CORRECTIONS", []) if c.get("constraint")]
    first = fields.get("FIRST_PLAN", [])
    skills = []
    for final in fields.get("FINAL_PLAN", []):
        obj = final["args"].get("object") or final["args"].get("target")
        before = next((c for c in first if c["skill"] == final["skill"]
                       and obj in (c["args"].get("object"), c["args"].get("target"))), None)
        if obj is None or before is None:
            continue
        changed = {k: v for k, v in final["args"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and before["args"].get(k) != v}
        said_about = [c["correction"] for c in fields.get("CORRECTIONS", []) if c.get("parameter") in changed]
        if changed and said_about:
            values = ", ".join(f"{k} {v:g}" for k, v in changed.items())
            skills.append({"skill": final["skill"], "object": obj, "parameters": changed,
                           "text": f"{final['skill']} the {obj} with {values} (taught: {'; '.join(said_about)})"})
    return {"constraints": constraints, "skills": skills}


def _retrieve(fields: dict[str, Any], said: str) -> dict[str, Any]:
    objects = set(fields.get("OBJECTS", {}))
    relevant = []
    for entry in fields.get("ENTRIES", []):
        about = set(entry.get("objects") or []) | ({entry["object"]} if entry.get("object") else set())
        if about and about <= objects:
            relevant.append(entry["id"])
    return {"relevant": relevant}


def scripted_llm(log_path: str | None = None) -> Any:
    """An :class:`~hilrl.llm.providers.OpenAICompatible` provider talking to :func:`droc_responder` served on
    loopback by a :class:`~hilrl.llm.scripted_server.ScriptedServer` (closed with the provider)."""
    from hilrl.llm.providers import CallLog, LLMConfig, OpenAICompatible
    from hilrl.llm.scripted_server import ScriptedServer

    server = ScriptedServer(droc_responder, model="droc-scripted")
    config = LLMConfig(provider="openai", base_url=server.base_url, model="droc-scripted", retries=1, backoff_s=0.01,
                       temperature=0.0)
    llm = OpenAICompatible(config, CallLog(log_path))
    llm.provider, llm.server = "scripted", server
    return llm
