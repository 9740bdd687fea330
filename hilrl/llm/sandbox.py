"""The sandbox for LLM-written reward code: it never runs in the learner's process.

Two gates. :func:`check_code` parses the code (``ast``) before anything runs and refuses imports
other than ``math`` and ``numpy`` (and ``typing``'s few annotation names, which the worker hands out
from a module of its own), names and attributes that reach the interpreter's internals
(``__import__``, ``getattr``, ``__builtins__``, ``eval``, ``open``, dunder and frame attributes,
numpy's file and ``ctypes`` corners), classes and ``global``, and builtins the worker does not hand
out where the code uses them unbound; an ordinary word the code binds itself (``object = next_obs["object"]``,
``id``, ``input``, ``type``) is just a local name. It also checks the contract a small model gets wrong
(the signature, a batch unpacked by rows) and says how to fix each mistake. Then :class:`Sandbox` runs it in a
reused worker subprocess (:mod:`hilrl.llm._sandbox_worker`) with CPU-time, wall-time and memory
limits, no network, no process creation and no file writes outside its temp dir; the parent
enforces the wall time (kills and restarts the worker). Evaluation is batched: a whole
:class:`~hilrl.data.buffers.RewardBatch` (obs, action, next_obs arrays) goes over a pipe as raw
bytes in one request, and the reward plus each named component comes back the same way.

Every failure becomes a :class:`SandboxError` whose ``message`` is written for the LLM (the code's
traceback, or which limit was hit), as Eureka feeds execution errors back (eureka-research/Eureka,
``execution_error_feedback``).

The reward code's contract (Eureka's ``compute_reward``, batched over rows with numpy)::

    def compute_reward(obs: dict[str, np.ndarray], action: np.ndarray, next_obs: dict[str, np.ndarray]):
        ...
        return total_reward, {"component": values, ...}     # arrays of shape (N,)

A wrong shape, a missing return, NaN, a ``KeyError`` or a row unpacked at run time come back with a
``Hint:``/fix line after the traceback (the worker's ``_hint``), so the next sample can be corrected.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.errors import HilrlError
from hilrl.llm._sandbox_worker import SAFE_BUILTINS, TYPING_NAMES

__all__ = ["ALLOWED_IMPORTS", "CodeError", "Sandbox", "SandboxError", "SandboxLimits", "check_code", "check_row_by_row"]

ALLOWED_IMPORTS = ("math", "numpy", "typing")  # typing: a few names for annotations (TYPING_NAMES)
WORKER = Path(__file__).with_name("_sandbox_worker.py")
FUNCTION = "compute_reward"

# names the code may not mention at all: ways around the import allow-list and the builtins
_FORBIDDEN_NAMES = {
    "__import__", "__builtins__", "__loader__", "__spec__", "builtins", "getattr", "setattr", "delattr", "globals",
    "locals", "eval", "exec", "compile", "open", "breakpoint", "__build_class__",
}
# a builtin the worker does not hand out (only its small safe set, :data:`hilrl.llm._sandbox_worker.SAFE_BUILTINS`)
# is refused where the code uses it unbound; bound by the code itself it is an ordinary local name:
# ``object = next_obs["object"]`` or ``id = ...`` are fine (``object.__subclasses__`` stays refused: dunders)
_BUILTIN_NAMES = frozenset(name for name in dir(builtins) if not name.startswith("_"))
_AVAILABLE_BUILTINS = frozenset((*SAFE_BUILTINS, "print"))
# attributes the code may not read: interpreter internals, numpy's file, process and C corners
_FORBIDDEN_ATTRIBUTES = {
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "gi_frame", "gi_code", "cr_frame", "cr_code",
    "ag_frame", "tb_frame", "tb_next", "func_globals", "format", "format_map", "mro", "ctypes", "ctypeslib", "lib",
    "testing", "f2py", "distutils", "os", "sys", "load", "save", "savez", "savez_compressed", "loadtxt", "savetxt",
    "genfromtxt", "fromfile", "tofile", "memmap", "DataSource", "dump", "dumps", "fromregex", "show_config",
    "show_runtime", "get_include", "__array_interface__",
}


class CodeError(HilrlError):
    """Reward code refused before it ran: not Python, or it uses something outside the sandbox's rules.

    ``problems`` lists each one as ``line N: what``; ``str(error)`` is a message for the LLM."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the reward code was refused: " + "; ".join(problems))


class SandboxError(HilrlError):
    """The code failed in the worker. ``kind``: runtime, forbidden, cpu, memory, timeout or crash;
    ``message``: the traceback or the limit, written for the LLM."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message
        super().__init__(f"reward code failed in the sandbox ({kind}): {message}")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one worker.

    Args:
        cpu_s: CPU seconds per request (loading the code, or one batch).
        wall_s: wall-clock seconds per request; past it the worker is killed (and restarted on the next call).
        memory_mb: address-space limit of the worker (numpy itself needs ~300 MB of it).
        start_s: wall-clock seconds the worker may take to start (import numpy).
    """

    cpu_s: float = 5.0
    wall_s: float = 10.0
    memory_mb: int = 1024
    start_s: float = 30.0


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the code binds somewhere (assigned, a parameter, a loop or ``with`` target, a def, an import)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
    return bound


_NUMERIC_LIBRARIES = ("scipy", "torch", "sklearn", "jax", "pandas", "numba", "tensorflow")


def _numpy_has(module: str) -> str:
    """What numpy offers instead of a numeric library a small model reaches for (Qwen2.5-Coder-1.5B wrote
    `from scipy.linalg import norm` and `from scipy.spatial.distance import ...` for a distance)."""
    if module.split(".")[0] not in _NUMERIC_LIBRARIES:
        return ""
    return ("; numpy has what reward code needs: a distance per row is np.linalg.norm(a - b, axis=-1), and np.exp, "
            "np.tanh, np.clip, np.where, np.minimum work on whole batches")


class _Checker(ast.NodeVisitor):
    def __init__(self, bound: set[str]) -> None:
        self.problems: list[str] = []
        self.bound = bound

    def _refuse(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith("typing."):
                self._refuse(node, f"import of {alias.name!r} is not allowed (typing: only `from typing import "
                                   f"{', '.join(TYPING_NAMES)}`)")
            elif alias.name.split(".")[0] not in ALLOWED_IMPORTS:
                self._refuse(node, f"import of {alias.name!r} is not allowed (allowed: math, numpy)"
                                   f"{_numpy_has(alias.name)}")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or (node.module or "").split(".")[0] not in ALLOWED_IMPORTS:
            self._refuse(node, f"import from {node.module!r} is not allowed (allowed: math, numpy)"
                               f"{_numpy_has(node.module or '')}")
        for alias in node.names:
            if alias.name == "*" or alias.name in _FORBIDDEN_ATTRIBUTES or alias.name.startswith("_"):
                self._refuse(node, f"importing {alias.name!r} from {node.module!r} is not allowed")
            elif node.module == "typing" and alias.name not in TYPING_NAMES:
                self._refuse(node, f"typing offers reward code only {', '.join(TYPING_NAMES)} (for annotations), "
                                   f"not {alias.name!r}")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _FORBIDDEN_NAMES or node.id.startswith("__"):
            self._refuse(node, f"the name {node.id!r} is not allowed in reward code")
        elif node.id in _BUILTIN_NAMES and node.id not in _AVAILABLE_BUILTINS and node.id not in self.bound:
            self._refuse(node, f"the builtin {node.id!r} is not available in reward code (use numpy and math; a "
                               f"variable of your own named {node.id!r} is fine)")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_") or node.attr in _FORBIDDEN_ATTRIBUTES:
            self._refuse(node, f"the attribute {node.attr!r} is not allowed in reward code")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._refuse(node, "classes are not allowed in reward code; write functions")

    def visit_Global(self, node: ast.Global) -> None:
        self._refuse(node, "'global' is not allowed in reward code")

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value.startswith("__") and node.value.endswith("__"):
            self._refuse(node, f"the string {node.value!r} is not allowed in reward code")


ARGUMENTS = ("obs", "action", "next_obs")
_COUNTS = {1: "one", 2: "two", 3: "three"}


def _contract_problems(tree: ast.Module, code: str, function: str,
                       arguments: tuple[str, ...] = ARGUMENTS) -> list[str]:
    """Mistakes against the reward function's contract that would only fail later, each with its fix: the
    signature ``function(obs, action, next_obs)`` and a batch unpacked by rows (what the worker finds on a real
    batch, a missing return, a wrong shape, NaN, comes back from it with its own fix)."""
    found = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and node.name == function]
    if not found:
        return [f"line 1: the code defines no module-level function {function}({', '.join(arguments)})"]
    fn, problems = found[-1], []
    call = f"{function}({', '.join(arguments)})"
    if isinstance(fn, ast.AsyncFunctionDef):
        problems.append(f"line {fn.lineno}: {function} must be a plain 'def', not 'async def'")
    args = fn.args
    positional = [a.arg for a in (*args.posonlyargs, *args.args)]
    required = positional[:len(positional) - len(args.defaults)]
    extra = required[len(arguments):] + [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    if len(positional) < len(arguments) and args.vararg is None:
        problems.append(f"line {fn.lineno}: {function} takes {len(positional)} argument(s) ({', '.join(positional)}) "
                        f"but is called with {_COUNTS.get(len(arguments), len(arguments))}: def {call}:")
    elif extra:
        names = ", ".join(repr(name) for name in extra)
        problems.append(f"line {fn.lineno}: {function} has the extra argument(s) {names}, but it is called as {call} "
                        f"and nothing else is passed: write def {call}: and compute what {names} stood for from "
                        f"{', '.join(arguments[:-1]) + ' and ' if len(arguments) > 1 else ''}{arguments[-1]}, or "
                        "make it a constant inside the function")
    if arguments != ARGUMENTS:  # the batch checks below are the reward function's
        return problems
    names = positional[:len(ARGUMENTS)]
    batches = set(names[1:2])  # the action
    dicts = {*names[0:1], *names[2:3]}  # obs and next_obs
    for node in ast.walk(fn):
        for target in node.targets if isinstance(node, ast.Assign) else []:
            if not isinstance(target, (ast.Tuple, ast.List)) or not _is_batch(node.value, batches, dicts):
                continue
            value = ast.get_source_segment(code, node.value) or "the array"
            parts = [ast.get_source_segment(code, e) or "_" for e in target.elts]
            columns = ", ".join(f"{value}[:, {i}]" for i in range(len(parts)))
            problems.append(
                f"line {node.lineno}: `{', '.join(parts)} = {value}` unpacks the batch by rows, but {value} is an "
                f"array of shape (N, {len(parts)}) with one row per transition: index its columns instead, "
                f"`{', '.join(parts)} = {columns}` (or `= {value}.T`)")
    return problems


def _is_batch(node: ast.AST, batches: set[str], dicts: set[str]) -> bool:
    """``action`` or ``obs["key"]`` as written (a whole batch, not a column of it)."""
    if isinstance(node, ast.Name):
        return node.id in batches
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in dicts
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str))


def check_code(code: str, function: str = FUNCTION, arguments: tuple[str, ...] = ARGUMENTS) -> ast.Module:
    """Parse ``code`` and check it against the sandbox's rules and the reward function's contract; returns the tree.

    Args:
        code: Python source of the reward.
        function: the function it must define at module level, called as ``function(obs, action, next_obs)``.
        arguments: the arguments it is called with (a judge's check program: ``("answer",)``).

    Raises:
        CodeError: a syntax error (with its line), or every rule it breaks and every contract mistake it makes
            (wrong arguments, a batch unpacked by rows), each with its fix.
    """
    try:
        tree = ast.parse(code, filename="reward.py")
    except SyntaxError as exc:
        raise CodeError([f"line {exc.lineno}: SyntaxError: {exc.msg}"]) from None
    checker = _Checker(_bound_names(tree))
    checker.visit(tree)
    checker.problems.extend(_contract_problems(tree, code, function, arguments))
    if checker.problems:
        raise CodeError(checker.problems)
    return tree


def _frame(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    header = {**header, "arrays": [[k, str(v.dtype), list(v.shape)] for k, v in arrays.items()]}
    raw = json.dumps(header).encode()
    return [struct.pack("<I", len(raw)), raw, *(memoryview(v).cast("B") for v in arrays.values() if v.nbytes)]


def _kill(process: subprocess.Popen, tmpdir: str) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()
    shutil.rmtree(tmpdir, ignore_errors=True)


class Sandbox:
    """Reward code in a reused worker subprocess; ``sandbox(obs, action, next_obs)`` evaluates a batch.

    Args:
        code: the reward's source (checked with :func:`check_code` first).
        limits: the worker's limits.
        function: the function to call.
        arguments: what it is called with: a reward's ``(obs, action, next_obs)``, or ``("answer",)`` for a judge's
            check program scored with :meth:`score_texts`.

    Raises:
        CodeError: the code breaks the rules (nothing is started).
        SandboxError: loading the code failed in the worker (its module-level code raised, a limit).
    """

    _DTYPES = {"float32", "float64", "int32", "int64", "bool", "uint8"}

    def __init__(self, code: str, limits: SandboxLimits | None = None, function: str = FUNCTION,
                 arguments: tuple[str, ...] = ARGUMENTS) -> None:
        check_code(code, function, arguments)
        self.code, self.limits, self.function = code, limits or SandboxLimits(), function
        self.calls, self.restarts = 0, 0
        self._process: subprocess.Popen | None = None
        self._tmpdir = ""
        self._finalizer: Any = None
        self._start()

    # ---- the worker ---------------------------------------------------------------------------
    def _start(self) -> None:
        self._tmpdir = tempfile.mkdtemp(prefix="hilrl-sandbox-")
        log = open(os.path.join(self._tmpdir, "stderr.log"), "wb")  # noqa: SIM115 (handed to the child)
        env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "HOME": self._tmpdir, "TMPDIR": self._tmpdir, "PYTHONHASHSEED": "0"}
        self._process = subprocess.Popen(
            [sys.executable, "-I", str(WORKER), self._tmpdir, str(self.limits.cpu_s), str(self.limits.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self._tmpdir, env=env, close_fds=True,
            start_new_session=True)
        log.close()
        self._finalizer = weakref.finalize(self, _kill, self._process, self._tmpdir)
        self._request({"op": "load", "code": self.code, "function": self.function}, None,
                      self.limits.start_s + self.limits.wall_s)

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._process = None

    def _restart_if_stopped(self) -> None:
        if self._process is None:  # killed after a timeout or crash: a fresh worker for the next request
            self.restarts += 1
            self._start()

    def close(self) -> None:
        """Stop the worker (it also stops when this object is collected, or when the parent dies)."""
        self._stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------------
    def _request(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None,
                 wall_s: float) -> dict[str, np.ndarray]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        deadline = time.monotonic() + wall_s
        try:
            for part in _frame(header, arrays):
                process.stdin.write(part)
            process.stdin.flush()
            (size,) = struct.unpack("<I", self._read(4, deadline))
            if size > 1 << 20:
                raise SandboxError("crash", "the worker sent a malformed reply")
            reply = json.loads(self._read(size, deadline))
            out = {}
            for name, dtype, shape in reply.get("arrays", []):
                if dtype not in self._DTYPES or not isinstance(name, str):
                    raise SandboxError("crash", "the worker sent a malformed reply")
                count = int(np.prod(shape, dtype=np.int64))
                out[name] = np.frombuffer(self._read(count * np.dtype(dtype).itemsize, deadline), dtype).reshape(shape)
        except TimeoutError:
            self._stop()
            raise SandboxError("timeout", f"the code ran longer than the wall-time limit of {wall_s:g} s (an endless "
                                          "loop?); keep the reward a few vectorised numpy operations") from None
        except (BrokenPipeError, EOFError, ValueError, OSError):
            code = process.poll()
            self._stop()
            raise SandboxError("crash", f"the worker process died (exit status {code}); the code may have exhausted "
                                        "a resource limit") from None
        if not reply.get("ok"):
            if reply.get("kind") == "cpu":  # the worker survives a CPU limit, but its state is suspect
                self._stop()
            raise SandboxError(str(reply.get("kind", "runtime")), str(reply.get("error", "unknown error")))
        return out

    def _read(self, n: int, deadline: float) -> bytes:
        stdout = self._process.stdout  # type: ignore[union-attr]
        fd, chunks, got = stdout.fileno(), [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, min(n - got, 1 << 22))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def __call__(self, obs: dict[str, np.ndarray], action: np.ndarray,
                 next_obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The reward of each row and the code's named components, float32 ``[N]`` each.

        Args:
            obs: observation arrays with a leading batch axis ``N``.
            action: actions ``[N, A]``.
            next_obs: next observations, same keys as ``obs``.

        Raises:
            SandboxError: the code raised, returned the wrong shape or non-finite values, or hit a limit.
        """
        self._restart_if_stopped()
        n = len(action)
        arrays = {f"obs/{k}": np.asarray(v) for k, v in obs.items()}
        arrays.update({f"next_obs/{k}": np.asarray(v) for k, v in next_obs.items()})
        arrays["action"] = np.asarray(action)
        self.calls += 1
        out = self._request({"op": "eval", "n": n}, arrays, self.limits.wall_s)
        reward = out.pop("reward")
        if reward.shape != (n,):
            raise SandboxError("crash", "the worker sent a malformed reply")
        return reward, {name.removeprefix("component/"): value for name, value in out.items()}

    def score_texts(self, texts: list[str]) -> np.ndarray:
        """``function(text)`` for each text (code loaded with ``arguments=("answer",)``): float64 ``[len(texts)]``.

        Raises:
            SandboxError: the code raised, returned something other than a finite number, or hit a limit.
        """
        self._restart_if_stopped()
        self.calls += 1
        out = self._request({"op": "score", "texts": [str(t) for t in texts], "function": self.function}, None,
                            self.limits.wall_s)
        scores = out.get("scores")
        if scores is None or scores.shape != (len(texts),):
            raise SandboxError("crash", "the worker sent a malformed reply")
        return scores


def check_row_by_row(sandbox: Sandbox, obs: dict[str, np.ndarray], action: np.ndarray,
                     next_obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the code on a batch and on each half of it (every other row, in reverse order); each row must get the
    same reward and components every time. A value computed across rows (``ee_pos[0]``, the first row where a column was
    meant; ``np.linalg.norm``/``np.sum``/``np.mean`` without ``axis=-1`` added to a per-row term; the batch's own
    statistics) passes every shape check and trains on noise: the reward of a transition then depends on which
    other transitions were sampled with it. Qwen2.5-Coder-1.5B wrote ``np.linalg.norm(ee_pos - ee_pos[0])``
    in the best program of a Reach search, which retrained to 0% success.

    Returns:
        the whole batch's reward and components (what ``sandbox(...)`` returns).

    Raises:
        SandboxError: (``runtime``) a row's values differ between the two batches, the message written for the LLM.
    """
    reward, parts = sandbox(obs, action, next_obs)
    n = len(action)
    if n < 4:
        return reward, parts
    for rows in (np.arange(n)[::-2], np.arange(n)[-2::-2]):  # both halves: a batch maximum is missing from one
        sub_reward, sub_parts = sandbox({k: np.asarray(v)[rows] for k, v in obs.items()}, np.asarray(action)[rows],
                                        {k: np.asarray(v)[rows] for k, v in next_obs.items()})
        for name, whole, part in [("the total reward", reward, sub_reward),
                                  *((f"component {key!r}", parts[key], sub_parts.get(key)) for key in parts)]:
            if part is not None and np.allclose(whole[rows], part, rtol=1e-4, atol=1e-6):
                continue
            row = 0 if part is None else int(np.argmax(np.abs(whole[rows] - part)))
            seen = "" if part is None else (f" (row {int(rows[row])}: {float(whole[rows][row]):.6g} in a batch of "
                                             f"{n}, {float(part[row]):.6g} in a batch of {len(rows)})")
            raise SandboxError("runtime", (
                f"{name} of a row changes with the other rows of its batch{seen}: some value is computed across "
                "rows, not per row. Usual causes: x[0] or x[-1] (a row; a column is x[:, 0]), np.linalg.norm / "
                "np.sum / np.mean / np.max without axis=-1 (one number for the whole batch), or scaling by the "
                "batch's own min, max or mean. Compute every value of a row from that row's obs, action and "
                "next_obs only."))
    return reward, parts
