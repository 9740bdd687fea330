"""CurveZMQ keys for the robot link: generate, load, and find the allow-list.

Key files use ZeroMQ's certificate format (the one ``zmq.auth`` reads):
``NAME.key`` holds the public key and may be shared; ``NAME.key_secret``
holds both keys and is written owner-read-only. A robot server that binds
off loopback only talks to clients whose ``NAME.key`` lies in its
allow-list folder (``--allow-keys DIR``).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from hilrl.errors import HilrlError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class KeyFileError(HilrlError):
    """A key file is missing or unreadable; the text names the file and the fix."""


def _key_text(public: bytes, secret: bytes | None, kind: str) -> str:
    lines = [
        f"#   ZeroMQ CURVE {kind} certificate, written by hilrl on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        "#   " + ("Keep this file private." if secret else "Share this file with the peer that must accept you."),
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate_keypair(directory: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (0600) into ``directory``; return both paths.

    This is what ``hilrl keys generate`` runs. Refuses to overwrite existing
    files unless ``overwrite`` is set, because a replaced key locks out every
    peer that trusted the old one.
    """
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name such as 'robot' or 'laptop'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    if not overwrite and (public_path.exists() or secret_path.exists()):
        raise KeyFileError(f"{public_path} or {secret_path} already exists; pick another name or pass overwrite=True")
    public, secret = zmq.curve_keypair()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(secret_path, flags, 0o600), "w") as f:
        f.write(_key_text(public, secret, "secret"))
    os.chmod(secret_path, 0o600)  # O_CREAT's mode is ignored when the file already existed
    public_path.write_text(_key_text(public, None, "public"))
    return public_path, secret_path


def load_keypair(secret_path: str | Path) -> tuple[bytes, bytes]:
    """Read ``(public, secret)`` from a ``.key_secret`` file."""
    public, secret = _load(secret_path)
    if secret is None:
        raise KeyFileError(f"{secret_path} holds no secret key; pass the {SECRET_SUFFIX} file, not the {PUBLIC_SUFFIX} one")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    """Read the public key from a ``.key`` (or ``.key_secret``) file."""
    return _load(path)[0]


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise KeyFileError(f"key file {path} not found; create one with `hilrl keys generate --dir DIR --name NAME`")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"key file {path} is not a ZeroMQ certificate ({exc}); regenerate it with `hilrl keys generate`") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"key file {path} has no valid public-key line; regenerate it with `hilrl keys generate`")
    return public, secret


def allowed_public_keys(directory: str | Path) -> list[bytes]:
    """Public keys of every ``*.key`` file in an allow-list folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"allow-list folder {directory} not found; put the clients' {PUBLIC_SUFFIX} files in it")
    return [load_public_key(p) for p in sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))]


def is_loopback(address: str) -> bool:
    """True for ``tcp://127.0.0.1:*``-style, ``ipc://`` and ``inproc://`` addresses: no network peer can reach them."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS


def apply_client_keys(socket: zmq.Socket, client_secret_path: str | Path, server_public_path: str | Path) -> None:
    """Make ``socket`` a CurveZMQ client with our key pair, trusting only the given server key."""
    public, secret = load_keypair(client_secret_path)
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_serverkey = load_public_key(server_public_path)


def serve_curve(context: zmq.Context, sockets: list[zmq.Socket], server_secret_path: str | Path,
                allow_keys: str | Path) -> tuple[Any, int]:
    """Make ``sockets`` CurveZMQ servers with our key pair, behind a ZAP allow-list of the client
    keys in the folder ``allow_keys``. Returns the started authenticator (stop it when the sockets
    close) and how many client keys are allowed."""
    from zmq.auth.thread import ThreadAuthenticator

    allowed = allowed_public_keys(allow_keys)
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    try:
        authenticator.configure_curve(domain="*", location=str(allow_keys))
        for socket in sockets:
            apply_server_keys(socket, server_secret_path)
    except BaseException:
        authenticator.stop()
        raise
    return authenticator, len(allowed)


def apply_server_keys(socket: zmq.Socket, server_secret_path: str | Path) -> None:
    """Make ``socket`` a CurveZMQ server with the given key pair (pair it with a ZAP allow-list)."""
    public, secret = load_keypair(server_secret_path)
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.curve_server = True
