"""DROC's plan JSON and the judge's verdict JSON as a small model writes them (issue 28): the spellings that mean
the same thing are read as it, and an answer that cannot be read goes back with the exact format it must have,
through the real openai SDK against a scripted server that makes exactly those mistakes."""

import json

import numpy as np
import pytest

from hilrl.llm.align.judge import AIJudge
from hilrl.llm.droc.planner import Classification, DrocPlanner, Scene
from hilrl.llm.droc.corrections import SkillCorrection
from hilrl.llm.providers import LLMConfig, make_llm
from hilrl.llm.scripted_server import ScriptedServer

SCENE = Scene("hilrl/PickCube-v0", "Pick up the block and hold it above the goal.",
              {"block": np.array([0.5, 0.0, 0.025]), "goal": np.array([0.5, 0.0, 0.2])},
              (np.array([0.25, -0.35, 0.0]), np.array([0.75, 0.35, 0.45])))


def llm_for(server, retries=2):
    return make_llm(LLMConfig(base_url=server.base_url, model="small", retries=retries, backoff_s=0.01))


@pytest.mark.parametrize("answer", [
    # the names a small model uses: "name"/"parameters", parameters beside the skill, {skill: args}, "steps"
    {"plan": [{"name": "grasp", "parameters": {"object": "block"}}, {"skill": "place", "target": "goal"}]},
    {"steps": [{"grasp": {"object": "block"}}, {"action": "place", "arguments": {"target": "goal"}}]},
])
def test_plan_spellings_that_mean_the_same_plan_are_read_as_it(answer):
    with ScriptedServer([[json.dumps(answer)]]) as server:
        plan = DrocPlanner(llm_for(server)).plan(SCENE, [], [])
        assert len(server.requests) == 1  # read at the first answer, no retry
    assert [(c.skill, c.args.get("object") or c.args.get("target")) for c in plan] == [("grasp", "block"),
                                                                                      ("place", "goal")]


def test_a_plan_that_cannot_be_read_goes_back_with_the_format_and_the_next_one_runs():
    prose = json.dumps({"plan": "grasp the block, then place it on the goal"})
    no_skill = json.dumps({"plan": [{"object": "block", "what": "grasp"}]})
    wrong_parameter = json.dumps({"plan": [{"skill": "grasp", "args": {"target": "block"}}]})
    valid = json.dumps({"plan": [{"skill": "grasp", "args": {"object": "block"}},
                                 {"skill": "place", "args": {"target": "goal"}}]})
    with ScriptedServer([[prose], [no_skill], [wrong_parameter], [valid]]) as server:
        plan = DrocPlanner(llm_for(server)).plan(SCENE, [], [])
        retries = [r["messages"][-1]["content"] for r in server.requests[1:]]
    assert [c.skill for c in plan] == ["grasp", "place"]
    assert '"plan" must be a list of steps {"skill": NAME, "args": {PARAMETER: VALUE, ...}}' in retries[0]
    assert 'a plan step has no "skill" naming the skill' in retries[1]
    # a readable plan with a wrong parameter: the skill's own check names the parameters it has
    assert "grasp has no parameter 'target'; its parameters: object" in retries[2]
    assert '{"plan": [{"skill": NAME, "args": {...}}, ...]}' in retries[2]


def test_the_plan_prompt_carries_a_worked_example_in_the_answer_format():
    valid = json.dumps({"plan": [{"skill": "grasp", "args": {"object": "block"}}]})
    with ScriptedServer([[valid]]) as server:
        DrocPlanner(llm_for(server)).plan(SCENE, [], [])
        asked = server.requests[0]["messages"][-1]["content"]
    example = asked.split("an answer is:\n", 1)[1].strip()
    assert json.loads(example)["plan"][0] == {"skill": "grasp", "args": {"object": "cube"}}


def test_classification_and_skill_correction_words_are_read_and_others_refused_with_the_values():
    assert Classification.model_validate({"level": "Skill-level", "skill": "grasp", "step": 0}).level == "skill"
    correction = SkillCorrection.model_validate({"step": 0, "parameter": "height_offset", "direction": "higher",
                                                 "magnitude": "a bit"})
    assert (correction.direction, correction.magnitude) == ("increase", "small")
    with pytest.raises(ValueError, match='direction must be exactly "increase" or "decrease"; got \'sideways\''):
        SkillCorrection.model_validate({"step": 0, "parameter": "height_offset", "direction": "sideways"})
    with pytest.raises(ValueError, match='level must be exactly "plan", "skill" or "stop"'):
        Classification.model_validate({"level": "both"})


def test_verdict_spellings_are_read_and_an_unreadable_one_is_retried_with_the_values_allowed():
    answers = iter([json.dumps({"better": "Answer A"}),  # no reason, "Answer A": read as A
                    json.dumps({"reason": "the first is shorter", "better": "b"}),  # swapped: b is the first answer
                    json.dumps({"reason": "?", "better": "the first one"}),  # refused, retried
                    json.dumps({"reason": "both brief", "better": "neither"}),
                    json.dumps({"reason": "both brief", "better": "tie"})])
    with ScriptedServer(lambda body: [next(answers)]) as server:
        judge = AIJudge(llm_for(server), ["Be brief."], checks=False)
        first = judge.compare("Say hi.", "hi", "hello there")
        second = judge.compare("Say hi.", "hi", "hey")
        retried = server.requests[3]["messages"][-1]["content"]
        system = server.requests[0]["messages"][0]["content"]
    assert first == ("first", "")
    assert 'better must be exactly "A", "B" or "tie"; got \'the first one\'' in retried
    assert second == ("equal", "both brief")
    # the verdict's form with placeholders, no verdict a small model can copy word for word (Qwen2.5-Coder-1.5B did)
    assert '"better": "<A, B or tie>"' in system and '"better" is exactly "A", "B" or "tie"' in system
    assert '"better": "A"' not in system and '"better": "B"' not in system


def test_a_correction_is_applied_to_the_step_of_the_skill_named_when_the_index_is_off_by_one():
    from hilrl.envs.skills import SkillCall
    from hilrl.llm.droc.corrections import apply_correction

    plan = [SkillCall("move_to", {"pose": [0.518, -0.062, 0.285], "speed": 1.0}),
            SkillCall("grasp", {"object": "block", "height_offset": 0.0, "approach": 0.06, "width": 0.08}),
            SkillCall("place", {"target": "goal", "height": 0.2})]
    results = [{"skill": "move_to", "ok": True, "reason": ""},
               {"skill": "grasp", "ok": False, "reason": "the hand stopped 0.9 cm above the grasp point"}]
    # what Qwen2.5-Coder-1.5B answered: the grasp, at index 2 (the place), and height_offset at index 2 again
    answers = iter([json.dumps({"level": "skill", "skill": "grasp", "step": 2, "reason": "it hit the block"}),
                    json.dumps({"step": 2, "parameter": "height_offset", "direction": "increase",
                                "magnitude": "tiny", "amount": None})])
    with ScriptedServer(lambda body: [next(answers)]) as server:
        planner = DrocPlanner(llm_for(server))
        kind = planner.classify("go a bit higher when you grasp", plan, results)
        change = planner.skill_correction("go a bit higher when you grasp", kind.step, plan, [])
    assert (kind.level, kind.skill, kind.step) == ("skill", "grasp", 1)
    assert change.step == 1
    fixed, _ = apply_correction(plan, change)
    assert fixed[1].args["height_offset"] > 0 and fixed[2] == plan[2]
