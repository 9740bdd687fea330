"""The sandbox's worker process: runs LLM-written reward code, one batch of rows per request.

Started by :class:`hilrl.llm.sandbox.Sandbox` as ``python -I _sandbox_worker.py TMPDIR CPU_S MEMORY_MB``.
It imports nothing of hilrl (no torch): the standard library and numpy only. Before it reads the
first request it locks itself in, in layers, each of which alone stops most escapes:

1. its own network namespace (``unshare(CLONE_NEWNET)``, Linux, where the process may; no interface
   but a down loopback), working directory a fresh temp dir;
2. resource limits (``setrlimit``): address space (memory), file size, no core dumps, no child
   processes (``RLIMIT_NPROC``, for users other than root) and, per request, CPU seconds;
3. an audit hook (PEP 578, ``sys.addaudithook``; it cannot be removed) that refuses process
   creation (``os.system``, ``subprocess.Popen``, ``os.fork``, ``os.exec*``, ``os.posix_spawn``),
   sockets, ``ctypes``, new imports, ``compile``/``exec`` after loading, signals to other processes
   and file writes outside the temp dir;
4. the code itself runs with a small set of builtins, an ``__import__`` that hands out only
   ``math``, ``numpy`` and a ``typing`` of a few annotation names, after the parent's AST check
   (:func:`hilrl.llm.sandbox.check_code`).

Wire format (both directions, no pickle: the parent never unpickles what this process sends):
``uint32 header length | JSON header | raw array bytes``; the header lists ``[name, dtype, shape]``
of each array in order.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import resource
import signal
import struct
import sys
import traceback
import types
import typing

import numpy as np

SAFE_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance", "len",
    "list", "map", "max", "min", "pow", "range", "reversed", "round", "set", "slice", "sorted", "str", "sum",
    "tuple", "zip", "ArithmeticError", "Exception", "FloatingPointError", "IndexError", "KeyError",
    "ValueError", "TypeError", "ZeroDivisionError", "True", "False", "None", "frozenset", "complex", "iter", "next",
    "repr", "callable", "hash", "RuntimeError", "NotImplementedError", "AssertionError", "OverflowError",
    "StopIteration", "AttributeError", "LookupError",
)
# ``typing`` for annotations only (``-> Tuple[np.ndarray, Dict[str, np.ndarray]]``, as Eureka's prompts write):
# a module of these few names, never the real one (it holds sys, re, functools...)
TYPING_NAMES = ("Any", "Dict", "List", "Optional", "Tuple", "Union")
_TYPING = types.ModuleType("typing")
for _name in TYPING_NAMES:
    setattr(_TYPING, _name, getattr(typing, _name))
ALLOWED_MODULES = {"math": math, "numpy": np, "typing": _TYPING}
_DTYPES = ("float32", "float64", "int32", "int64", "bool", "uint8")


class CpuLimit(Exception):
    """Raised in the worker when a request used its CPU seconds (SIGXCPU)."""


def _on_sigxcpu(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise CpuLimit("CPU time limit exceeded")


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 (the builtin's names)
    root = name.split(".")[0]
    if level != 0 or root not in ALLOWED_MODULES:
        raise ImportError(f"import of {name!r} is not allowed in reward code (allowed: math, numpy)")
    module = _TYPING if root == "typing" else sys.modules.get(name)
    if module is None or (root == "typing" and name != "typing"):
        raise ImportError(f"import of {name!r} is not allowed in reward code (allowed: math, numpy)")
    return module if fromlist else ALLOWED_MODULES[root]


class _Guard:
    """The audit hook (layer 3). It judges events only while the reward code runs (``active``); while the
    module is loaded (``loading``) the worker's own ``compile``/``exec`` of it pass."""

    BLOCKED_PREFIXES = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "winreg.",
                        "shutil.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "pty.")
    BLOCKED = {"os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.startfile", "signal.pthread_kill",
               "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
               "os.truncate", "os.chdir", "os.putenv", "os.unsetenv", "resource.setrlimit", "resource.prlimit",
               "sys._getframe", "sys.settrace", "sys.setprofile", "builtins.input", "import", "code.__new__",
               "function.__new__", "sys.addaudithook", "os.listdir", "os.scandir", "glob.glob", "mmap.__new__",
               "marshal.loads", "pickle.find_class", "gc.get_referrers", "gc.get_objects", "gc.get_referents"}

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir = os.path.realpath(tmpdir)
        self.loading = False
        self.active = False

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event in ("compile", "exec"):
            if self.loading:
                return
            raise PermissionError(f"{event} is not allowed in reward code")
        if event in self.BLOCKED or event.startswith(self.BLOCKED_PREFIXES):
            raise PermissionError(f"{event} is not allowed in reward code (no processes, network, files or imports)")
        if event == "open":
            path, mode, flags = (args + (None, None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
            if isinstance(path, int):
                raise PermissionError("opening file descriptors is not allowed in reward code")
            if writes:
                real = os.path.realpath(os.fsdecode(path))
                if not (real == self.tmpdir or real.startswith(self.tmpdir + os.sep)):
                    raise PermissionError(f"writing {os.fsdecode(path)!r} is not allowed (only inside the "
                                          "sandbox's temp dir)")


def _read_exact(fd: int, n: int) -> bytearray:
    out = bytearray(n)
    view, got = memoryview(out), 0
    while got < n:
        chunk = os.readv(fd, [view[got:]])
        if chunk == 0:
            raise EOFError
        got += chunk
    return out


def _read_frame(fd: int) -> tuple[dict, dict[str, np.ndarray]]:
    (size,) = struct.unpack("<I", _read_exact(fd, 4))
    header = json.loads(bytes(_read_exact(fd, size)))
    arrays = {}
    for name, dtype, shape in header.get("arrays", []):
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64))
        raw = _read_exact(fd, count * np.dtype(dtype).itemsize)
        arrays[name] = np.frombuffer(raw, dtype).reshape(shape)  # bytearray: writable
    return header, arrays


def _write_frame(fd: int, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    header = {**header, "arrays": [[k, str(v.dtype), list(v.shape)] for k, v in arrays.items()]}
    raw = json.dumps(header).encode()
    parts = [struct.pack("<I", len(raw)), raw, *(memoryview(v).cast("B") for v in arrays.values())]
    for part in parts:
        view = memoryview(part)
        while len(view):
            view = view[os.write(fd, view):]


def _hint(exc: BaseException, arrays: dict[str, np.ndarray] | None) -> str:
    """A line after the traceback naming the usual cause of this error in batched reward code (what a small
    model gets wrong: thinking in one row, attribute access on a dict, a key that is not there)."""
    text = str(exc)
    keys = sorted({k.split("/", 1)[1] for k in arrays or {} if k.startswith(("obs/", "next_obs/"))})
    columns = arrays["action"].shape[1] if arrays and "action" in arrays and arrays["action"].ndim == 2 else None
    if isinstance(exc, ValueError) and "values to unpack" in text:
        return (f"Hint: every argument is a whole batch: action is an array of shape (N, {columns or 'A'}) and each "
                "obs/next_obs entry is (N, ...), one row per transition, so unpacking gives rows. Take columns: "
                "dx = action[:, 0] (or dx, dy, dz, gripper = action.T).")
    if isinstance(exc, KeyError) and keys:
        return f"Hint: the keys of obs and next_obs are: {', '.join(keys)}."
    if isinstance(exc, AttributeError) and "'dict' object has no attribute" in text:
        return "Hint: obs and next_obs are dicts of arrays: write next_obs['ee_pos'], not next_obs.ee_pos."
    vector_and_rows = re.search(r"shapes \(\d+,(\d+)\) \(\d+,\)", text) or re.search(
        r"shapes \(\d+,\) \(\d+,(\d+)\)", text)
    if isinstance(exc, ValueError) and vector_and_rows and "broadcast" in text:
        # one operand is a vector per row (a position difference), the other one value per row: the vector was
        # never reduced (Qwen2.5-Coder-1.5B: np.abs(goal - ee_pos) then added to a (N,) effort)
        width = vector_and_rows.group(1)
        return (f"Hint: one operand has one vector per row, shape (N, {width}) (e.g. a difference of two positions), "
                "the other one value per row, shape (N,): reduce the vector first, e.g. distance = "
                "np.linalg.norm(next_obs['object'] - next_obs['ee_pos'], axis=-1), which has shape (N,).")
    if isinstance(exc, (IndexError, ValueError)) and ("too many indices" in text or "could not be broadcast" in text
                                                     or "operands could not" in text):
        return ("Hint: check the shapes: action is (N, A), obs['ee_pos'] is (N, 3); index columns with [:, i] and "
                "reduce over the last axis (axis=-1) so the reward has shape (N,).")
    if isinstance(exc, NameError) and getattr(exc, "name", None) in ("np", "numpy", "math"):
        return "Hint: import what you use at the top of the code: import numpy as np (and import math)."
    if isinstance(exc, ValueError) and "truth value of an array" in text:
        return ("Hint: `if`, `and`, `or` and `not` need one True/False, but a comparison of batches gives one per row: "
                "use np.where(condition, a, b) instead of if/else, and & | ~ instead of and/or/not.")
    if isinstance(exc, UnboundLocalError) or (isinstance(exc, NameError) and getattr(exc, "name", None)
                                               and not hasattr(builtins, exc.name)):
        name = getattr(exc, "name", None) or (re.findall(r"'(\w+)'", text) or ["it"])[0]
        return (f"Hint: {name} is read before anything is assigned to it; compute every variable from obs, action "
                f"and next_obs inside compute_reward before it is used (nothing else is passed in or kept between "
                "calls).")
    if isinstance(exc, TypeError) and "positional argument" in text:
        return "Hint: the function is called as compute_reward(obs, action, next_obs), with exactly these three."
    return ""


def _user_traceback(exc: BaseException, arrays: dict[str, np.ndarray] | None = None) -> str:
    """The traceback of the reward code's own frames (what the LLM can fix), the error line, and a hint."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "reward.py"]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(exc), exc)]
    hint = _hint(exc, arrays)
    return ("".join(lines).rstrip() + ("\n" + hint if hint else "")).rstrip()


class ContractError(Exception):
    """What the code returned breaks the contract (shape, type, NaN); its text says how, for the LLM."""


def _as_rows(value, n: int, what: str, scalar: bool = True) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ContractError(f"{what} is a {type(value).__name__} that is not an array of numbers; it must be a numpy "
                            f"array of shape ({n},), one value per row of the batch") from None
    if isinstance(value, (bool, np.bool_)):  # `a or b`, `x == y` on arrays made one, np.all without axis
        raise ContractError(f"{what} is a single {bool(value)}, not one value per row; np.all / np.any without "
                            "axis (and `and` / `or` on their results) reduce the whole batch to one truth value: "
                            "compare element-wise and combine with & and |, e.g. (distance < 0.02).astype(float), "
                            f"which has shape ({n},)")
    if array.ndim == 0 and not scalar:  # the same reward for every row: nothing to learn from (a lost axis)
        raise ContractError(f"{what} is a single number, the same for every row; it must have shape ({n},), one value "
                            "per row of the batch (did np.linalg.norm, np.sum or np.mean miss axis=-1?)")
    if array.ndim == 0:  # a constant component
        array = np.full(n, float(array))
    if array.shape == (n, 1):  # a column left over from obs['gripper'] or keepdims: the same values
        array = array[:, 0]
    if array.shape != (n,):
        hint = ""
        if array.ndim == 1:
            hint = (" (one row's values, not the batch's? index columns, action[:, 0], not rows, action[0])")
        elif array.ndim == 2 and array.shape[0] == n:
            hint = " (reduce the last axis, e.g. np.linalg.norm(..., axis=-1) or .sum(axis=-1))"
        raise ContractError(f"{what} has shape {array.shape}; it must have shape ({n},): one value per row of the "
                            f"batch{hint}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ContractError(f"{what} has {bad} NaN or infinite values of {n}; keep every value finite (a division by "
                            "a distance that can be 0, np.log or np.sqrt of 0 or a negative number? add a small "
                            "epsilon, e.g. / (distance + 1e-6), or clip)")
    return array.astype(np.float32)


def _evaluate(fn, arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}
    next_obs = {k[9:]: v for k, v in arrays.items() if k.startswith("next_obs/")}
    result = fn(obs, arrays["action"], next_obs)
    if result is None:
        raise ContractError("compute_reward returned None; end it with return reward, {'component_name': "
                            "component, ...}")
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        total, parts = result
    elif isinstance(result, tuple) and len(result) == 2:
        raise ContractError(f"the second value returned is a {type(result[1]).__name__}; it must be a dict of "
                            "named components, {'name': array of shape (N,), ...}")
    elif isinstance(result, tuple):
        raise ContractError(f"compute_reward returned {len(result)} values; return exactly two: reward (shape (N,)) "
                            "and a dict of named components, return reward, {'name': component, ...}")
    else:
        total, parts = result, {}
    out = {"reward": _as_rows(total, n, "the total reward (first value returned)", scalar=False)}
    for name, value in parts.items():
        if not isinstance(name, str):
            raise ContractError(f"reward component names must be strings, got {name!r}")
        out[f"component/{name}"] = _as_rows(value, n, f"reward component {name!r}")
    return out


def main() -> None:
    tmpdir, cpu_s, memory_mb = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints and C-level writes go to the log, never into the reply channel
    os.chdir(tmpdir)
    np.seterr(all="ignore")
    try:  # layer 1: no network (needs CAP_SYS_ADMIN or user namespaces; layer 3 holds without it)
        import ctypes

        ctypes.CDLL(None, use_errno=True).unshare(0x40000000)  # CLONE_NEWNET
    except Exception:  # noqa: BLE001 (an optional layer)
        pass
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with an error instead of killing us
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    guard = _Guard(tmpdir)
    sys.addaudithook(guard)

    builtins_ = {name: __builtins__[name] if isinstance(__builtins__, dict) else getattr(__builtins__, name)
                 for name in SAFE_BUILTINS}
    builtins_["__import__"] = _restricted_import
    builtins_["print"] = lambda *args, **kwargs: None  # noqa: ARG005 (prints are dropped)
    fn = None
    while True:
        try:
            header, arrays = _read_frame(0)
        except EOFError:
            return
        op = header.get("op")
        try:
            used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used + cpu_s), resource.RLIM_INFINITY))
            if op == "load":
                code = compile(header["code"], "reward.py", "exec")
                namespace = {"__builtins__": builtins_, "__name__": "reward"}
                guard.loading = guard.active = True
                try:
                    exec(code, namespace)  # noqa: S102 (this process is the sandbox)
                finally:
                    guard.loading = guard.active = False
                fn = namespace.get(header.get("function", "compute_reward"))
                if not callable(fn):
                    raise NameError(f"the code defines no function {header.get('function', 'compute_reward')!r}")
                _write_frame(reply_fd, {"ok": True})
            elif op == "eval":
                if fn is None:
                    raise RuntimeError("no reward code loaded")
                guard.active = True
                try:
                    result = _evaluate(fn, arrays, int(header["n"]))
                finally:
                    guard.active = False
                _write_frame(reply_fd, {"ok": True}, result)
            elif op == "score":  # a judge's check program on answers' text (hilrl.llm.align.judge)
                if fn is None:
                    raise RuntimeError("no code loaded")
                guard.active = True
                try:
                    scores = [fn(str(text)) for text in header["texts"]]
                finally:
                    guard.active = False
                if not all(isinstance(x, (bool, int, float, np.number)) and math.isfinite(x) for x in scores):
                    raise ContractError(f"{header.get('function', 'the function')} must return one finite number per "
                                        "answer")
                _write_frame(reply_fd, {"ok": True}, {"scores": np.asarray(scores, dtype=np.float64)})
            else:
                raise ValueError(f"unknown request {op!r}")
        except CpuLimit:
            _write_frame(reply_fd, {"ok": False, "kind": "cpu", "error": f"CPU time limit of {cpu_s:g} s exceeded"})
        except MemoryError:
            _write_frame(reply_fd, {"ok": False, "kind": "memory",
                                    "error": f"MemoryError: memory limit of {memory_mb} MB exceeded"})
        except PermissionError as exc:
            _write_frame(reply_fd, {"ok": False, "kind": "forbidden", "error": _user_traceback(exc)})
        except ContractError as exc:
            _write_frame(reply_fd, {"ok": False, "kind": "runtime", "error": f"ValueError: {exc}"})
        except BaseException as exc:  # noqa: BLE001 (every failure of the code goes back as text)
            _write_frame(reply_fd, {"ok": False, "kind": "runtime", "error": _user_traceback(exc, arrays)})
        finally:
            resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


if __name__ == "__main__":
    main()
