"""The sandbox as an LLM's hostile or broken reward code meets it: each attempt is refused or contained,
reported in words the LLM can act on, and the same sandbox keeps evaluating good code afterwards."""

import os
import socket
import textwrap
import threading

import numpy as np
import pytest

from hilrl.llm.sandbox import CodeError, Sandbox, SandboxError, SandboxLimits, check_code

GOOD = """
import numpy as np

def compute_reward(obs, action, next_obs):
    distance = np.linalg.norm(next_obs["ee_pos"] - next_obs["object"], axis=-1)
    return -distance, {"distance": distance}
"""
LIMITS = SandboxLimits(cpu_s=1.0, wall_s=2.0, memory_mb=1024)


def rows(n=64, seed=0):
    rng = np.random.default_rng(seed)
    obs = {"ee_pos": rng.normal(size=(n, 3)).astype(np.float32), "object": rng.normal(size=(n, 3)).astype(np.float32)}
    return obs, rng.uniform(-1, 1, (n, 4)).astype(np.float32), obs


def reward_code(body):
    """``body`` indented into compute_reward, after ``import numpy as np``."""
    return "import numpy as np\n\ndef compute_reward(obs, action, next_obs):\n" + textwrap.indent(
        textwrap.dedent(body).strip(), "    ") + "\n"


def test_a_good_reward_is_evaluated_batched_in_a_reused_worker():
    obs, action, next_obs = rows(2048)
    with Sandbox(GOOD, LIMITS) as sandbox:
        pid = sandbox._process.pid
        for _ in range(3):
            reward, parts = sandbox(obs, action, next_obs)
        assert sandbox._process.pid == pid and pid != os.getpid()  # one worker, reused, not this process
    expected = np.linalg.norm(obs["ee_pos"] - obs["object"], axis=-1)
    np.testing.assert_allclose(reward, -expected, rtol=1e-6)
    np.testing.assert_allclose(parts["distance"], expected, rtol=1e-6)
    assert reward.dtype == np.float32 and reward.shape == (2048,)


@pytest.mark.parametrize("code, needle", [
    ("import os\ndef compute_reward(obs, action, next_obs):\n    os.system('touch /tmp/pwned')\n", "import of 'os'"),
    ("import subprocess\ndef compute_reward(o, a, n):\n    subprocess.run(['ls'])\n", "import of 'subprocess'"),
    ("from socket import socket\ndef compute_reward(o, a, n):\n    return 0\n", "import from 'socket'"),
    (reward_code("__import__('os').system('id')"), "'__import__'"),
    (reward_code("getattr(np, 'ctypeslib')"), "'getattr'"),
    (reward_code("__builtins__['open']('/tmp/x', 'w')"), "'__builtins__'"),
    (reward_code("return ().__class__.__bases__[0].__subclasses__()"), "'__class__'"),
    (reward_code("open('/tmp/pwned', 'w').write('x')"), "'open'"),
    (reward_code("eval('1+1')"), "'eval'"),
    (reward_code("np.save('/tmp/pwned.npy', action)"), "'save'"),
    (reward_code("np.ctypeslib.as_array(0)"), "'ctypeslib'"),
    (reward_code("'{0.__class__}'.format(action)"), "'format'"),
    ("def compute_reward(obs, action, next_obs)\n    return 0\n", "SyntaxError"),
    ("def reward(obs, action, next_obs):\n    return 0\n", "no module-level function compute_reward"),
])
def test_code_that_reaches_outside_the_rules_is_refused_before_it_runs(code, needle):
    with pytest.raises(CodeError) as refused:
        Sandbox(code, LIMITS)
    assert needle in str(refused.value), str(refused.value)
    assert refused.value.problems and all(p.startswith("line ") for p in refused.value.problems)


def test_every_problem_is_listed_with_its_line():
    with pytest.raises(CodeError) as refused:
        check_code("import os\nimport numpy as np\ndef compute_reward(o, a, n):\n    return getattr(np, 'x')\n")
    assert refused.value.problems == ["line 1: import of 'os' is not allowed (allowed: math, numpy)",
                                      "line 4: the name 'getattr' is not allowed in reward code"]


@pytest.mark.parametrize("body, kind, needle", [
    ("while True:\n    pass", "cpu", "CPU time limit"),
    ("x = np.ones(10 * 1024 ** 3, dtype=np.uint8)\nreturn x[:len(action)]", "memory", "memory limit"),
    ("return np.full(len(action), np.nan)", "runtime", "NaN or infinite"),
    ("return np.zeros((len(action), 3))", "runtime", "must have shape (64,)"),
    ("return {'total': 1.0}['missing']", "runtime", "KeyError"),
    ("d = next_obs['no_such_key']\nreturn d", "runtime", "KeyError: 'no_such_key'"),
    ("return -np.linalg.norm(obs['ee_pos'], axis=-1), {'parts': np.zeros(3)}", "runtime", "component 'parts'"),
])
def test_runaway_or_wrong_code_is_contained_and_reported(body, kind, needle):
    # the CPU-time case gets wall time to spare: on a busy machine 1 s of CPU can take more than 2 s of wall
    limits = SandboxLimits(cpu_s=1.0, wall_s=30.0, memory_mb=1024) if kind == "cpu" else LIMITS
    with Sandbox(reward_code(body), limits) as sandbox:
        with pytest.raises(SandboxError) as failed:
            sandbox(*rows())
    assert failed.value.kind == kind, failed.value
    assert needle in failed.value.message


def test_a_runtime_error_carries_the_codes_own_traceback_for_the_llm():
    code = reward_code("scale = 0\nreturn np.ones(len(action)) / len([]) if scale else action[:, 7]")
    with Sandbox(code, LIMITS) as sandbox, pytest.raises(SandboxError) as failed:
        sandbox(*rows())
    message = failed.value.message
    assert message.startswith("Traceback") and 'File "reward.py", line 5, in compute_reward' in message
    assert "IndexError" in message and "_sandbox_worker" not in message  # the worker's own frames are left out


def test_an_endless_loop_in_c_code_hits_the_wall_time_and_the_next_batch_gets_a_fresh_worker():
    # a long numpy call is not interrupted by SIGXCPU's Python handler; the parent's wall clock kills it
    code = reward_code("""
        if action[0, 0] > 0.5:
            big = np.ones((4000, 4000))
            for _ in range(10 ** 6):
                big = big @ big
        return -np.abs(action).sum(axis=1)
    """)
    obs, action, next_obs = rows()
    with Sandbox(code, SandboxLimits(cpu_s=60, wall_s=1.0, memory_mb=1024)) as sandbox:
        first = sandbox._process
        slow = action.copy()
        slow[0, 0] = 1.0
        with pytest.raises(SandboxError) as failed:
            sandbox(obs, slow, next_obs)
        assert failed.value.kind == "timeout" and "wall-time limit of 1 s" in failed.value.message
        assert first.poll() is not None  # killed
        fast = action.copy()
        fast[0, 0] = 0.0
        reward, _ = sandbox(obs, fast, next_obs)
        assert sandbox.restarts == 1 and sandbox._process is not first
    np.testing.assert_allclose(reward, -np.abs(fast).sum(axis=1), rtol=1e-6)


def test_smuggled_process_file_and_network_access_is_blocked_inside_the_worker(tmp_path):
    """Behind the AST check, the worker's own walls: a module reached through numpy's internals."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    target = tmp_path / "written.txt"
    # the attacks the AST check stops, run with the check bypassed (as if it had a hole)
    # the attacks the AST check stops, run with the check bypassed (as if it had a hole); numpy's internals
    # hand out the real os module (np.lib._datasource.os), so only the worker's own walls stand
    leak = "import numpy as np\ndef compute_reward(o, a, n):\n    os = np.lib._datasource.os\n"
    attacks = {
        "fork bomb": leak + "    while True:\n        os.fork()\n",
        "os.system": leak + f"    os.system('touch {target}')\n    return a[:, 0]\n",
        "subprocess via import": "def compute_reward(o, a, n):\n    import subprocess\n    subprocess.run(['true'])\n",
        "posix_spawn": leak + f"    os.posix_spawn('/usr/bin/touch', ['touch', {str(target)!r}], {{}})\n",
        "file write": leak + f"    fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
        "open builtin": f"def compute_reward(o, a, n):\n    open({str(target)!r}, 'w').write('x')\n",
        "socket": "import numpy as np\ndef compute_reward(o, a, n):\n"
                  "    load = np.lib._datasource.os.sys.modules['importlib'].import_module\n"
                  f"    load('socket').create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "__import__": "def compute_reward(o, a, n):\n    __builtins__['__import__']('os').system('id')\n",
    }
    import hilrl.llm.sandbox as sandbox_module

    original = sandbox_module.check_code
    sandbox_module.check_code = lambda code, *args: None
    try:
        reports = {}
        for name, code in attacks.items():
            with Sandbox(code, LIMITS) as sandbox:
                with pytest.raises(SandboxError) as failed:
                    sandbox(*rows())
                reports[name] = failed.value
    finally:
        sandbox_module.check_code = original
        server.close()
    for name, report in reports.items():
        assert report.kind in ("runtime", "forbidden"), (name, report)
    assert "os.fork is not allowed" in reports["fork bomb"].message
    assert "os.system is not allowed" in reports["os.system"].message
    assert "os.posix_spawn is not allowed" in reports["posix_spawn"].message
    assert "import of 'subprocess' is not allowed" in reports["subprocess via import"].message
    assert "not allowed" in reports["file write"].message
    assert "'open' is not defined" in reports["open builtin"].message
    assert "is not allowed in reward code" in reports["socket"].message
    assert "import of 'os' is not allowed" in reports["__import__"].message
    assert not target.exists() and not accepted


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (the audit hook holds without it)")
def test_the_worker_has_no_network_of_its_own():
    with Sandbox(GOOD, LIMITS) as sandbox:
        theirs = os.readlink(f"/proc/{sandbox._process.pid}/ns/net")
    assert theirs != os.readlink("/proc/self/ns/net")


def test_the_audit_hook_stops_what_gets_past_the_builtins():
    """A deeper hole: the real os module reached anyway (here handed in by a test-only import table)."""
    import hilrl.llm._sandbox_worker as worker

    assert {"os.system", "os.fork", "import"} <= worker._Guard.BLOCKED
    guard = worker._Guard("/tmp/sandbox-dir")
    guard.active = True
    for event, args in [("os.system", (b"id",)), ("subprocess.Popen", ("ls", [], None, None)),
                        ("socket.connect", (None, ("1.2.3.4", 80))), ("os.fork", ()), ("ctypes.dlopen", ("libc",)),
                        ("open", ("/etc/passwd", "w", 0)), ("open", ("/tmp/other", None, os.O_WRONLY | os.O_CREAT)),
                        ("exec", (None,)), ("import", ("os", None, None, None, None))]:
        with pytest.raises(PermissionError):
            guard(event, args)
    guard("open", ("/tmp/sandbox-dir/scratch.npy", "w", 0))  # its own temp dir is writable
    guard("open", ("/usr/lib/python3/x.py", "r", 0))
    guard.active = False
    guard("os.system", (b"id",))  # the worker's own work between requests is not judged
