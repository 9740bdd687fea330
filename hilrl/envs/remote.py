"""``RemoteArmEnv``: a gymnasium env whose arm lives behind a robot server.

The server (``hilrl serve-robot``, which runs ``python -m hardware.server``; protocol in ``hardware/PROTOCOL.md``)
may run the MuJoCo reference arm or a real one; this env looks the same
either way. Its spaces come from the server's ``hello`` reply, so they are
the task's own spaces. An action in ``[-1, 1]`` is scaled here into an
end-effector delta in metres (and radians), exactly as the local task scales
it, and the server clips and checks it again: the client is never trusted.

Its ``hello`` asks the server for the task and the settings given here
(``task_id``, ``cameras``, ``max_episode_steps``, ...): the sim driver builds that
task if its robot config allows it (``sim.tasks``), a real arm ignores the
request. Reward, termination and ``info["reward_terms"]`` come from the server
when it runs a task (the sim driver); a real arm reports none, so wrap the env
in a reward source.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import gymnasium as gym
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from hilrl.envs import auth
from hilrl.envs.protocol import (
    ProtocolError,
    decode,
    encode,
    request,
    space_from_wire,
    validate_reward_term_names,
    validate_reward_terms,
)
from hilrl.errors import HilrlError

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)


class RobotConnectionError(HilrlError, ConnectionError):
    """No usable reply from the robot server (not running, wrong address, or our key refused)."""


class RobotCommandError(HilrlError):
    """The robot server refused a command; ``status`` is its mode and reason at that moment."""

    def __init__(self, message: str, status: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status or {}


class RobotClient:
    """Blocking request/reply link to one robot server (a DEALER socket; replies matched by id).

    Args:
        address: the server's command address, e.g. ``tcp://127.0.0.1:5555``.
        timeout_s: how long to wait for each reply.
        client_key: our ``.key_secret`` file, for a server that uses CurveZMQ.
        server_key: the server's public ``.key`` file (needed with ``client_key``).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout_s: float = 2.0,
        client_key: str | None = None,
        server_key: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if (client_key is None) != (server_key is None):
            raise HilrlError("pass both client_key (our .key_secret) and server_key (the server's .key), or neither")
        if not timeout_s > 0:
            raise HilrlError(f"timeout_s={timeout_s}: must be a positive number of seconds")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.keys = (client_key, server_key) if client_key else None
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.rcvtimeo = max(1, round(self.timeout_s * 1000))
        # A DEALER with no live connection (server gone, or our CurveZMQ key refused and the link
        # dropped) blocks on send; bound that wait too, so every call ends within its timeout.
        self.socket.sndtimeo = self.socket.rcvtimeo
        self._monitor: zmq.Socket | None = None
        if self.keys:
            auth.apply_client_keys(self.socket, *self.keys)
            self._monitor = self.socket.get_monitor_socket(_HANDSHAKE_EVENTS)
        self.socket.connect(address)
        self._ids = itertools.count(1)
        self._auth_failure: str | None = None

    def call(self, op: str, *, check: bool = True, **fields: Any) -> dict[str, Any]:
        """Send one request and return the server's reply map; raise RobotCommandError if refused and ``check``."""
        request_id = next(self._ids)
        try:
            self.socket.send_multipart([b"", *encode(request(op, request_id, **fields))], copy=False)
        except zmq.Again:
            raise RobotConnectionError(self._timeout_text(op)) from None
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                frames = self.socket.recv_multipart(copy=False)  # waits at most rcvtimeo
            except zmq.Again:
                raise RobotConnectionError(self._timeout_text(op)) from None
            try:
                message = decode(frames[1:] if len(frames[0]) == 0 else frames)
            except ProtocolError as exc:
                raise RobotConnectionError(f"robot server at {self.address} sent an unreadable reply: {exc}") from None
            if message.get("id") != request_id:
                if time.monotonic() > deadline:
                    raise RobotConnectionError(self._timeout_text(op))
                continue  # the late answer to a request that already timed out
            if check and not message.get("ok"):
                raise RobotCommandError(f"robot server refused {op!r}: {message.get('error')}", message.get("status"))
            return message

    def _timeout_text(self, op: str) -> str:
        self._read_handshake_events()
        if self._auth_failure:
            return (
                f"robot server at {self.address} refused our CurveZMQ key ({self._auth_failure}); add our .key file "
                "to the server's --allow-keys folder and check server_key is the server's public key"
            )
        hint = (" (is a robot server running there? `hilrl serve-robot --driver sim` starts the simulated arm, "
                "`--driver franka|ur` a real one")
        hint += "; does it require CurveZMQ keys?)" if not self.keys else ")"
        return f"no reply to {op!r} from the robot server at {self.address} within {self.timeout_s}s{hint}"

    def _read_handshake_events(self) -> None:
        if self._monitor is None:
            return
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._auth_failure = None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._auth_failure = "handshake failed: our key is not on the server's allow-list"
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self._auth_failure = "handshake failed: wrong server key or not a CurveZMQ server"

    def close(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.socket.close(linger=0)


class StateSubscriber:
    """Reads the server's state stream (a SUB socket): status and proprioception at the control rate."""

    def __init__(self, address: str, client_key: str | None = None, server_key: str | None = None,
                 context: zmq.Context | None = None) -> None:
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.socket.linger = 0
        if client_key:
            auth.apply_client_keys(self.socket, client_key, server_key)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(address)

    def recv(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """Return the next state message, or raise RobotConnectionError after ``timeout_s``."""
        if not self.socket.poll(timeout_s * 1000.0):
            raise RobotConnectionError(f"no state message within {timeout_s}s")
        return decode(self.socket.recv_multipart(copy=False))

    def close(self) -> None:
        self.socket.close(linger=0)


def stream_address(command_address: str, reported: str) -> str:
    """Where to connect to a stream a server reports (``reported``: the ``LAST_ENDPOINT`` of its PUB socket),
    given the address we reach its command socket at (``command_address``).

    A socket bound to all interfaces reports ``0.0.0.0`` (or ``*``, ``[::]``): reach its stream at the host
    we already use. The robot server's hello reports its state stream so; the distributed learner names
    its weights stream with this from its own two sockets, and each actor resolves the address its
    ``welcome`` names with it (:mod:`hilrl.runtime.distributed`).
    """
    host = command_address.rpartition(":")[0]
    reported_host, _, port = reported.rpartition(":")
    if reported_host in ("tcp://0.0.0.0", "tcp://*", "tcp://[::]"):
        return f"{host}:{port}"
    return reported


def _maybe(cast, value):
    return None if value is None else cast(value)


class RemoteArmEnv(gym.Env):
    """A hilrl arm task played through a robot server.

    Args:
        address: the server's command address.
        task_id: gymnasium id of the task to play; the hello asks the server to serve it (the sim
            driver switches to it if its robot config allows, else refuses with the reason).
            ``None`` accepts whatever the server runs (e.g. a real arm).
        cameras, image_size, control_hz, use_rotation, terminate_on_success, reward_type: task
            keywords the hello asks for, as ``task_id``; the server's answer must match each given one.
            ``None`` accepts the server's.
        max_episode_steps: time limit, asked of the server's task and also counted here (a real arm
            has no task limit); ``None`` takes the server task's.
        render_mode: ``"rgb_array"`` returns the latest ``front`` (else ``wrist``) camera image.
        timeout_s: seconds to wait for each reply before raising :class:`RobotConnectionError`.
        client_key, server_key: CurveZMQ key files (our ``.key_secret``, the server's ``.key``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        task_id: str | None = None,
        *,
        cameras: tuple[str, ...] | list[str] | None = None,
        image_size: int | None = None,
        control_hz: float | None = None,
        use_rotation: bool | None = None,
        max_episode_steps: int | None = None,
        terminate_on_success: bool | None = None,
        reward_type: str | None = None,
        render_mode: str | None = "rgb_array",
        timeout_s: float = 2.0,
        client_key: str | None = None,
        server_key: str | None = None,
    ) -> None:
        super().__init__()
        if render_mode not in (None, "rgb_array"):
            raise HilrlError(f"render_mode={render_mode!r}: a remote arm supports 'rgb_array' or None")
        self.render_mode = render_mode
        self.client = RobotClient(address, timeout_s, client_key, server_key)
        expected = {
            "control_hz": _maybe(float, control_hz),
            "use_rotation": _maybe(bool, use_rotation),
            "cameras": _maybe(list, cameras),
            "image_size": _maybe(int, image_size),
            "terminate_on_success": _maybe(bool, terminate_on_success),
            "reward_type": reward_type,
        }
        wanted = {"id": task_id, **expected, "max_episode_steps": _maybe(int, max_episode_steps)}
        task = {key: value for key, value in wanted.items() if value is not None}
        try:
            info = self.client.call("hello", **({"task": task} if task else {}))["info"]
            self._check_matches(info, task_id, expected)
            self.reward_terms = validate_reward_term_names(info.get("reward_terms", []))
        except ProtocolError as exc:
            self.client.close()
            raise RobotConnectionError(f"robot server at {address} sent a bad hello reply: {exc}") from None
        except BaseException:
            self.client.close()
            raise
        self.server_info = info
        self.observation_space = space_from_wire(info["observation_space"])
        self.action_space = space_from_wire(info["action_space"])
        self.task_name = info.get("task_name")
        self.action_scale = float(info["action_scale"]) if info.get("action_scale") is not None else None
        self.rotation_scale = float(info.get("rotation_scale") or 0.0)
        self.use_rotation = self.action_space.shape[0] == 7
        limits = info["limits"]
        self.workspace = (np.array(limits["workspace_low"]), np.array(limits["workspace_high"]))
        self.control_hz = float(info["control_hz"])
        self.metadata = {**self.metadata, "render_fps": self.control_hz}
        server_limit = info.get("max_episode_steps")
        if max_episode_steps is not None and server_limit is not None and max_episode_steps > server_limit:
            self.client.close()
            raise HilrlError(
                f"max_episode_steps={max_episode_steps} exceeds the server task's limit of {server_limit} (the server "
                "did not take it from our hello); raise sim.env_kwargs.max_episode_steps in the robot config or ask for fewer steps"
            )
        if self.action_scale is None:
            self.client.close()
            raise HilrlError(f"the robot server at {address} reports no action_scale; its driver cannot take delta actions")
        self.max_episode_steps = max_episode_steps if max_episode_steps is not None else server_limit
        self._elapsed = 0
        self._last_obs: dict[str, np.ndarray] | None = None
        self._sim_state: np.ndarray | None = None

    @staticmethod
    def _check_matches(info: dict[str, Any], task_id: str | None, given: dict[str, Any]) -> None:
        if info.get("task_id") is None:
            return  # a real arm runs no task: nothing to compare
        # The hello asked for these; a server that runs a task either serves them or refuses the hello,
        # so a difference here means a server that ignores the request (one older than it).
        if task_id is not None and task_id != info["task_id"]:
            raise HilrlError(f"task_id={task_id!r} but the robot server runs {info['task_id']!r} and did not switch "
                             "when asked; set sim.task in its robot config (or update the server)")
        for name, want in given.items():
            if want is None or (name == "image_size" and not info.get("cameras")):
                continue
            have = info.get(name)
            if want != have:
                raise HilrlError(
                    f"{name}={want!r} but the robot server's task uses {have!r}; set sim.env_kwargs.{name} "
                    "in the robot config (control_hz at its top level) or match it here"
                )

    # ---------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None and not (type(seed) is int and 0 <= seed < 2**32):
            raise HilrlError(f"seed={seed!r}: the robot protocol takes int seeds in [0, 2**32)")
        super().reset(seed=seed)
        message = self.client.call("reset", seed=seed)
        self._elapsed = 0
        obs = self._obs(message)
        task = message["state"].get("task")
        info = {"is_success": bool((task or {}).get("is_success", False)), "robot": message["status"]}
        self._add_reward_terms(info, task)
        return obs, info

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise HilrlError(f"action has shape {action.shape}, expected {self.action_space.shape}")
        if not np.all(np.isfinite(action)):
            raise HilrlError(f"action {action} has NaN or inf entries; send finite values in [-1, 1]")
        action = np.clip(action, -1.0, 1.0)
        delta = action[:3] * self.action_scale
        if self.use_rotation:
            delta = np.concatenate([delta, action[3:6] * self.rotation_scale])
        message = self.client.call("step", delta=delta, gripper=float(action[-1]))
        self._elapsed += 1
        obs = self._obs(message)
        task_state = message["state"].get("task")
        task = task_state or {}
        terminated = bool(task.get("terminated", False))
        truncated = bool(task.get("truncated", False)) or (
            self.max_episode_steps is not None and self._elapsed >= self.max_episode_steps
        )
        if truncated and not terminated and not task.get("truncated", False):
            self.client.call("hold")  # our own time limit: tell the server the motion is over (disarms its watchdog)
        info = {"is_success": bool(task.get("is_success", False)), "robot": message["status"], "clipped": message.get("clipped", False)}
        self._add_reward_terms(info, task_state)
        return obs, float(task.get("reward", 0.0)), terminated, truncated, info

    def render(self):
        if self.render_mode is None or self._last_obs is None:
            return None
        for camera in ("front", "wrist"):
            if camera in self._last_obs:
                return self._last_obs[camera].copy()
        return None

    def close(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------- helpers

    def get_state(self) -> np.ndarray | None:
        """The simulator state of the last reply when the server runs the sim driver; ``None`` for a real arm.

        Recorders store it, so demos recorded through the server replay state-exactly in the local task.
        """
        return None if self._sim_state is None else self._sim_state.copy()

    def estop(self) -> dict[str, Any]:
        """Emergency-stop the arm (latched on the server until :meth:`clear_error`)."""
        return self.client.call("estop")["status"]

    def clear_error(self) -> dict[str, Any]:
        return self.client.call("clear_error")["status"]

    def _add_reward_terms(self, info: dict[str, Any], task: dict[str, Any] | None) -> None:
        """``info["reward_terms"]`` as the local task gives it, when the server runs a task that reports them."""
        if task is None or "reward_terms" not in task:
            return
        try:
            info["reward_terms"] = validate_reward_terms(task["reward_terms"])
        except ProtocolError as exc:
            raise RobotConnectionError(f"robot server at {self.client.address} sent bad reward terms: {exc}") from None

    def _obs(self, message: dict[str, Any]) -> dict[str, np.ndarray]:
        sim_state = (message["state"].get("task") or {}).get("sim_state")
        self._sim_state = None if sim_state is None else np.array(sim_state, dtype=np.float64)
        wire = message["state"]["obs"]
        # Fresh, writable arrays with the declared dtypes (decoded ones are read-only views of frames).
        obs = {key: np.array(wire[key], dtype=space.dtype) for key, space in self.observation_space.spaces.items()}
        self._last_obs = obs
        return obs
