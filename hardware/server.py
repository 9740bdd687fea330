"""The robot server: one arm behind a ZeroMQ command channel and a state stream.

Run it as ``python -m hardware.server [--driver sim|kinematic|franka|ur]
[--config hardware/configs/NAME.yaml] [--bind tcp://127.0.0.1:5555] ...``
(``--help`` lists every option). The wire format is ``hardware/PROTOCOL.md``.

Everything a client sends is decoded, schema-checked and limit-checked here
before the driver sees it; anything wrong gets an error reply and the arm
holds. One thread does it all, in this order each turn of the loop: signals
(stop, e-stop), the watchdog, the state stream, then waiting commands.

A task-running driver (the sim) serves the task a client's ``hello`` asks for;
the server decides when it may switch (never during another client's live
episode) and refuses ``reset``/``step`` from a client whose hello was answered
for a task that has since been replaced (PROTOCOL.md, "Choosing the task").
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zmq

from hardware.driver import ArmCommand, ArmDriver, ArmState, DriverFault, NotReady
from hardware.limits import CommandRejected, RobotConfigError, RobotConfig, SafetyLimits, load_config, safe_target
from hilrl.envs import auth
from hilrl.envs.protocol import (
    MODE_ESTOP,
    MODE_FAULT,
    MODE_MOVING,
    MODE_READY,
    MODE_STOPPED,
    PROTOCOL_VERSION,
    ProtocolError,
    Request,
    decode,
    encode,
    reply,
    validate_request,
    validate_reward_term_names,
    validate_reward_terms,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_BIND = "tcp://127.0.0.1:5555"
MAX_FRAMES = 8
# Frames bigger than this make libzmq drop the peer before we ever read them (memory guard);
# anything between max_message_bytes and this gets a readable error reply instead.
HARD_FRAME_FACTOR = 16
# Another client's episode blocks a task switch until it ends or that client has been silent this long.
EPISODE_IDLE_S = 2.0
MAX_SESSIONS = 256  # clients remembered with the task build their hello was answered for


def make_driver(config: RobotConfig) -> ArmDriver:
    """Build the driver named in the config; vendor SDKs are imported only here, only when asked for."""
    if config.driver == "sim":
        from hardware.drivers.sim import SimArmDriver

        return SimArmDriver(config.sim, config.control_hz)
    if config.driver == "kinematic":
        from hardware.drivers.kinematic import KinematicArmDriver

        return KinematicArmDriver(config.limits)
    workspace = (config.limits.workspace_low, config.limits.workspace_high)
    section = getattr(config, config.driver)
    if section is None:
        raise RobotConfigError(f"driver {config.driver!r} needs a '{config.driver}:' section (host, home_joints, ...) in the robot config")
    if config.driver == "franka":
        from hardware.drivers.franka import FrankaArmDriver

        return FrankaArmDriver(section, workspace)
    from hardware.drivers.ur import URArmDriver

    return URArmDriver(section, workspace, config.control_hz)


class RobotServer:
    """Serves one driver on a ROUTER (commands) and a PUB (state stream) socket."""

    def __init__(self, driver: ArmDriver, config: RobotConfig, commands: zmq.Socket, stream: zmq.Socket) -> None:
        self.driver = driver
        self.config = config
        self.commands = commands
        self.stream = stream
        self.limits: SafetyLimits = config.limits
        self.mode = MODE_READY
        self.reason: str | None = None
        self.state: ArmState = driver.read(images=False)
        self.commanded_pos: np.ndarray | None = None
        self.watchdog_deadline: float | None = None
        self.stream_seq = 0
        self.stop_requested = False
        self.estop_requested: str | None = None
        self.counts = {"requests": 0, "rejected": 0, "watchdog": 0}
        self._description = self._describe()
        # Task switches (hello): the build number each client's hello was answered for, and the open episode.
        self.build = 0
        self.sessions: dict[bytes, int] = {}
        self.episode_client: bytes | None = None  # whose reset opened the episode; None once it ended
        self.episode_seen = 0.0  # when that client last sent anything

    def _describe(self) -> dict[str, Any]:
        description = self.driver.describe()
        try:
            validate_reward_term_names(description.get("reward_terms", []))
        except ProtocolError as exc:
            raise RobotConfigError(f"driver {self.driver.name!r} describes bad reward terms: {exc}") from None
        return description

    # ---------------------------------------------------------------- loop

    def serve_forever(self) -> None:
        period = 1.0 / self.config.control_hz
        next_publish = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.commands, zmq.POLLIN)
        while not self.stop_requested:
            if self.estop_requested:
                self._enter_estop(self.estop_requested)
                self.estop_requested = None
            now = time.monotonic()
            if self.watchdog_deadline is not None and now >= self.watchdog_deadline:
                self._watchdog_fired()
            if now >= next_publish:
                self._publish()
                # Skip missed ticks rather than bursting to catch up after a slow driver call.
                next_publish = max(next_publish + period, now)
            wake = next_publish if self.watchdog_deadline is None else min(next_publish, self.watchdog_deadline)
            timeout_ms = max(0.0, (wake - time.monotonic()) * 1000.0)
            if poller.poll(timeout_ms):
                self._serve_waiting()
        self.driver.hold()

    def _serve_waiting(self) -> None:
        # Bounded so that the watchdog and the stream still get their turn under a flood.
        for _ in range(64):
            frames = self.commands.recv_multipart()
            if self.watchdog_deadline is not None and time.monotonic() >= self.watchdog_deadline:
                self._watchdog_fired()  # a command that arrives late does not excuse the silence before it
            self.commands.send_multipart(self.handle(frames), copy=False)
            if not self.commands.get(zmq.EVENTS) & zmq.POLLIN:
                return

    # ---------------------------------------------------------------- one message

    def handle(self, frames: Sequence[bytes]) -> list[Any]:
        """Answer one ROUTER message (identity, [empty delimiter], payload...) with reply frames."""
        self.counts["requests"] += 1
        identity = frames[0]
        if len(frames) > 1 and len(frames[1]) == 0:
            envelope, payload = [identity, b""], frames[2:]
        else:
            envelope, payload = [identity], frames[1:]
        request_id = None
        try:
            if not payload:
                raise ProtocolError("no payload: send a msgpack header frame after the envelope")
            if len(payload) > MAX_FRAMES:
                raise ProtocolError(f"{len(payload)} frames; a request has at most {MAX_FRAMES}")
            message = decode(payload, max_bytes=self.config.max_message_bytes)
            maybe_id = message.get("id")
            request_id = maybe_id if type(maybe_id) is int else None
            request = validate_request(message)
            if identity == self.episode_client:
                self.episode_seen = time.monotonic()
            body = self._execute(request, identity)
        except (ProtocolError, CommandRejected, NotReady) as exc:
            self.counts["rejected"] += 1
            self._hold_after_rejection()
            body = self._reply(request_id, error=str(exc))
        except DriverFault as exc:
            self._enter_fault(f"driver fault: {exc}")
            body = self._reply(request_id, error=self.reason)
        except Exception as exc:  # a driver bug must not kill the server: latch a fault, keep answering
            traceback.print_exc(file=sys.stderr)
            self._enter_fault(f"driver error: {type(exc).__name__}: {exc}")
            body = self._reply(request_id, error=self.reason)
        return envelope + encode(body)

    def _execute(self, request: Request, identity: bytes) -> dict[str, Any]:
        op = request.op
        if op == "hello":
            if request.task:
                self._serve_task(request.task, identity)
            self.sessions.pop(identity, None)
            self.sessions[identity] = self.build
            if len(self.sessions) > MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]  # the oldest hello
            return self._reply(request.id, info=self._info())
        if op == "get_state":
            self.state = self.driver.read(images=request.images)
            return self._reply(request.id, images=request.images)
        if op == "estop":
            self._enter_estop("estop: client request")
            return self._reply(request.id)
        if op == "clear_error":
            self.driver.clear_error()
            self._set_mode(MODE_READY, None)
            return self._reply(request.id)
        if op == "hold":
            self.driver.hold()
            if self.mode == MODE_MOVING:
                self._set_mode(MODE_READY, None)
            return self._reply(request.id)
        if op == "set_limits":
            self.limits = self.limits.tightened(request.limits or {}, within=self.config.limits)
            return self._reply(request.id, limits=self.limits.model_dump())

        # The remaining ops may move the arm: refuse them in a latched stop.
        self._require_motion_allowed(op)
        if op == "resume":
            self._set_mode(MODE_READY, None)
            return self._reply(request.id)
        self._require_current_session(op, identity)
        if op == "reset":
            self.state = self.driver.reset(request.seed)
            self._check_task_state()
            self.commanded_pos = None
            self._set_mode(MODE_READY, None)
            self.episode_client, self.episode_seen = identity, time.monotonic()
            return self._reply(request.id, images=True)
        if op == "step":
            return self._step(request)
        raise ProtocolError(f"op {op!r} is valid but not served")  # unreachable while OPS and _execute agree

    def _step(self, request: Request) -> dict[str, Any]:
        target, delta, clipped = safe_target(request, self.state.ee_pos, self.limits)
        rotation = request.delta[3:] if request.delta is not None and request.delta.shape[0] == 6 else None
        command = ArmCommand(target_pos=target, delta_pos=delta, delta_rot=rotation, gripper=request.gripper)
        self.commanded_pos = target
        self.state = self.driver.move(command)
        self._check_task_state()
        if self.state.task is not None and (self.state.task.get("terminated") or self.state.task.get("truncated")):
            # The episode is over: the client is expected to pause (save, reset), so disarm the watchdog.
            self._set_mode(MODE_READY, None)
            self.episode_client = None
        else:
            self._set_mode(MODE_MOVING, None)
            self.watchdog_deadline = time.monotonic() + self.config.watchdog_timeout_s
        return self._reply(request.id, images=True, clipped=clipped)

    def _check_task_state(self) -> None:
        """A driver's reward terms are validated like every message: a bad one is a driver fault."""
        task = self.state.task
        if task is not None and "reward_terms" in task:
            try:
                task["reward_terms"] = validate_reward_terms(task["reward_terms"])
            except ProtocolError as exc:
                raise DriverFault(f"the task state's {exc}") from None

    # ---------------------------------------------------------------- choosing the task

    def _serve_task(self, task: dict[str, Any], identity: bytes) -> None:
        """Switch the driver to the task a hello asks for, when it needs a switch and one is allowed now."""
        prepared = self.driver.prepare_task(task)  # refuses what the robot config does not allow
        if prepared is None:
            return
        current = self._description.get("task_id")
        if self.mode in (MODE_ESTOP, MODE_FAULT):
            raise CommandRejected(f"cannot switch from {current} to {task.get('id', current)}: {self.reason}; "
                                  "send 'clear_error' once the arm is safe")
        idle = time.monotonic() - self.episode_seen
        if self.episode_client not in (None, identity) and idle < EPISODE_IDLE_S:
            raise CommandRejected(
                f"cannot switch from {current} to {task.get('id', current)} now: another client is in an episode of "
                f"{current}; ask again once it ends (or once that client has been silent for {EPISODE_IDLE_S:g}s)"
            )
        self.driver.switch_task(prepared)
        self.build += 1
        self._description = self._describe()
        self.state = self.driver.read(images=False)
        self.commanded_pos = None
        self.episode_client = None
        self._set_mode(MODE_READY, None)
        print(f"[robot-server] now serving {self._description.get('task_id')} ({_settings_text(self._description)}) "
              "for a client's hello", file=sys.stderr)

    def _require_current_session(self, op: str, identity: bytes) -> None:
        build = self.sessions.get(identity)
        if build is not None and build != self.build:
            raise CommandRejected(
                f"{op!r} refused: the arm now serves {self._description.get('task_id')}, switched for another client "
                "after our hello; send 'hello' again (asking for the task you want) once that client is done"
            )

    # ---------------------------------------------------------------- modes

    def _require_motion_allowed(self, op: str) -> None:
        if self.mode in (MODE_ESTOP, MODE_FAULT):
            raise CommandRejected(f"{op!r} refused: {self.reason}; send 'clear_error' once the arm is safe")
        if self.mode == MODE_STOPPED and op == "step":
            raise CommandRejected(f"'step' refused: arm stopped ({self.reason}); send 'resume' (or 'reset') to move again")

    def _set_mode(self, mode: str, reason: str | None) -> None:
        self.mode, self.reason = mode, reason
        if mode != MODE_MOVING:
            self.watchdog_deadline = None

    def _hold_after_rejection(self) -> None:
        if self.mode == MODE_MOVING and self._try(self.driver.hold):
            self._set_mode(MODE_READY, None)

    def _try(self, action) -> bool:
        """Run a driver call from the server's own logic; a failure latches a fault instead of killing the loop."""
        try:
            action()
            return True
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self._enter_fault(f"driver error in {getattr(action, '__name__', 'call')}: {type(exc).__name__}: {exc}")
            return False

    def _watchdog_fired(self) -> None:
        if not self._try(self.driver.hold):
            return
        self.counts["watchdog"] += 1
        self._set_mode(MODE_STOPPED, "watchdog")
        print(f"[robot-server] watchdog: no command for {self.config.watchdog_timeout_s}s during motion; arm holding", file=sys.stderr)

    def _enter_estop(self, why: str) -> None:
        self._try(self.driver.estop)
        self._set_mode(MODE_ESTOP, why)
        print(f"[robot-server] {why}; arm stopped, send clear_error to continue", file=sys.stderr)

    def _enter_fault(self, why: str) -> None:
        try:
            self.driver.hold()
        except Exception:
            traceback.print_exc(file=sys.stderr)
        self._set_mode(MODE_FAULT, why)
        print(f"[robot-server] {why}", file=sys.stderr)

    # ---------------------------------------------------------------- output

    def _state_wire(self, images: bool) -> dict[str, Any]:
        state = self.state
        obs = state.obs if images else {k: v for k, v in state.obs.items() if v.ndim < 3}
        # Orientation, gripper and joints travel in obs (float32, as the policy sees them); ee_pos
        # also travels here in float64, the precision the safety checks work in.
        return {"ee_pos": state.ee_pos, "commanded_pos": self.commanded_pos, "obs": obs, "task": state.task}

    def _reply(self, request_id: int | None, error: str | None = None, images: bool = False, **extra: Any) -> dict[str, Any]:
        return reply(
            request_id if request_id is not None else -1,
            ok=error is None,
            mode=self.mode,
            reason=self.reason,
            state=self._state_wire(images),
            error=error,
            **extra,
        )

    def _info(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "driver": self.driver.name,
            "control_hz": self.config.control_hz,
            "watchdog_timeout_s": self.config.watchdog_timeout_s,
            "max_message_bytes": self.config.max_message_bytes,
            "limits": self.limits.model_dump(),
            "stream": self.stream.getsockopt_string(zmq.LAST_ENDPOINT),
            **self._description,
        }

    def _publish(self) -> None:
        self.stream_seq += 1
        message = {
            "v": PROTOCOL_VERSION,
            "topic": "state",
            "seq": self.stream_seq,
            "time": time.time(),
            "status": {"mode": self.mode, "reason": self.reason},
            "state": self._state_wire(images=False),
            "counts": dict(self.counts),
        }
        try:
            self.stream.send_multipart(encode(message), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # a slow subscriber drops state messages; it never slows the control loop


def _settings_text(description: dict[str, Any]) -> str:
    names = ("cameras", "image_size", "use_rotation", "max_episode_steps", "terminate_on_success", "reward_type")
    return ", ".join(f"{name}={description[name]!r}" for name in names if name in description)


# -------------------------------------------------------------------- command line


def _stream_address(bind: str) -> str:
    """The state stream binds next to the command socket: port + 1, or another free port for ``*``."""
    base, _, port = bind.rpartition(":")
    if not base.startswith("tcp://"):
        raise RobotConfigError(f"--bind {bind!r}: give --pub-bind too for non-tcp addresses")
    return f"{base}:*" if port in ("*", "0") else f"{base}:{int(port) + 1}"


def _tcp_bind(socket: zmq.Socket, address: str, what: str) -> str:
    if address.startswith("tcp://") and address.endswith(":0"):
        address = address[:-2] + ":*"  # zmq spells "any free port" as '*'
    try:
        socket.bind(address)
    except zmq.ZMQError as exc:
        raise RobotConfigError(f"cannot bind the {what} socket to {address}: {exc}; pick another --bind/--pub-bind") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hardware.server", description="Serve one robot arm over the hilrl robot protocol (hardware/PROTOCOL.md)."
    )
    parser.add_argument("--driver", choices=["sim", "kinematic", "franka", "ur"], help="arm driver (default: the config's)")
    parser.add_argument("--config", type=Path, help="robot config YAML (default: hardware/configs/<driver>.yaml, else sim.yaml)")
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"command socket address (default {DEFAULT_BIND}; port 0 or * = any free port)")
    parser.add_argument("--task", help="sim driver: serve only this task id, e.g. hilrl/PickCube-v0 (sets sim.task and "
                        "sim.tasks: [ID]); by default a client's hello picks any task of sim.tasks")
    parser.add_argument("--pub-bind", help="state stream address (default: the command port + 1)")
    parser.add_argument("--server-key", type=Path, help="server .key_secret file; enables CurveZMQ")
    parser.add_argument("--allow-keys", type=Path, help="folder of client .key files allowed to connect")
    parser.add_argument("--require-auth", action="store_true", help="use CurveZMQ even on loopback")
    return parser


def _load(args: argparse.Namespace) -> RobotConfig:
    path = args.config or CONFIG_DIR / f"{args.driver or 'sim'}.yaml"
    config = load_config(path)
    if args.driver and args.driver != config.driver:
        config = config.model_copy(update={"driver": args.driver})
    if args.task:
        if config.driver != "sim":
            raise RobotConfigError(f"--task {args.task} is for the sim driver; the {config.driver} driver runs no task")
        config = config.model_copy(update={"sim": config.sim.model_copy(update={"task": args.task, "tasks": [args.task]})})
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hardware.server``; returns the exit status."""
    args = build_parser().parse_args(argv)
    stream_bind = args.pub_bind or None
    context = zmq.Context()
    authenticator = None
    driver: ArmDriver | None = None
    try:
        config = _load(args)
        stream_bind = stream_bind or _stream_address(args.bind)
        curve = args.require_auth or args.server_key is not None or not (auth.is_loopback(args.bind) and auth.is_loopback(stream_bind))
        if curve and (args.server_key is None or args.allow_keys is None):
            raise RobotConfigError(
                f"binding {args.bind} / {stream_bind} needs CurveZMQ: pass --server-key SERVER.key_secret and "
                "--allow-keys DIR (create keys with `hilrl keys generate`), or bind to 127.0.0.1"
            )
        commands = context.socket(zmq.ROUTER)
        stream = context.socket(zmq.PUB)
        for sock in (commands, stream):
            sock.linger = 0
        commands.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes * HARD_FRAME_FACTOR)
        stream.sndhwm = 10
        if curve:
            authenticator, allowed = auth.serve_curve(context, [commands, stream], args.server_key, args.allow_keys)
            print(f"[robot-server] CurveZMQ on: {allowed} allowed client key(s) in {args.allow_keys}", file=sys.stderr)
        else:
            print("[robot-server] no authentication (loopback only); pass --require-auth to use CurveZMQ", file=sys.stderr)
        command_address = _tcp_bind(commands, args.bind, "command")
        stream_address = _tcp_bind(stream, stream_bind, "state stream")
        driver = make_driver(config)
        server = RobotServer(driver, config, commands, stream)
        gc.collect()
        gc.freeze()  # the driver's long-lived objects (MuJoCo model, task) leave the collector's scans

        def request_stop(signum: int, _frame: Any) -> None:
            server.stop_requested = True

        def request_estop(signum: int, _frame: Any) -> None:
            server.estop_requested = "estop: SIGUSR1"

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGUSR1, request_estop)
        print(
            f"robot server ready: driver={driver.name} cmd={command_address} state={stream_address} auth={'curve' if curve else 'none'}",
            flush=True,
        )
        server.serve_forever()
        print(f"[robot-server] stopped; arm holding ({server.counts['requests']} requests served)", file=sys.stderr)
        return 0
    except (RobotConfigError, auth.KeyFileError) as exc:
        print(f"robot server: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if driver is not None:
            driver.close()
        if authenticator is not None:
            authenticator.stop()
        context.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(main())
