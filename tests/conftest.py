"""Shared test set-up: offscreen rendering, one torch thread (2 cores shared by many processes)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def curve_keys(tmp_path):
    """CurveZMQ key files for a server, a client it allows and a stranger it does not.

    ``allowed`` is the server's allow-list folder (the client's public key only); ``server_public``
    is what clients trust; ``client_secret`` / ``stranger_secret`` are the clients' own key pairs.
    """
    from types import SimpleNamespace

    from hilrl.envs import auth

    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    server_public, server_secret = auth.generate_keypair(keys, "server")
    client_public, client_secret = auth.generate_keypair(keys, "client")
    _, stranger_secret = auth.generate_keypair(keys, "stranger")
    allowed.mkdir()
    (allowed / client_public.name).write_bytes(client_public.read_bytes())
    return SimpleNamespace(server_public=server_public, server_secret=server_secret, client_secret=client_secret,
                           stranger_secret=stranger_secret, allowed=allowed)
