"""Run one notebook in a fresh kernel, isolated: a worker subprocess (course/nbrun.py) in its own
process group and, where this machine allows it, its own network namespace, with per-cell and
per-notebook time limits. What the grader and the tests use to execute a learner's notebook.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import CHECKS_FILE_ENV, read_checks_file
from .pids_limit import process_limit
from .confinement import JAIL_FLAGS, describe, jail_command, jail_spec, probe_jail
from .learner import PROFILE_ENV


_NETNS_PROBE = ("import socket, sys\n"
                "names = [n for _, n in socket.if_nameindex()]\n"
                "sys.exit(0 if set(names) <= {'lo'} else 3)\n")


@dataclass
class Isolation:
    prefix: list[str]   # command prefix for the worker, e.g. ["unshare", "-rn", ...]
    network: str        # "none" or "not restricted"
    how: str            # one line for the report
    jail: bool = False  # a mount namespace too: course/jail.py can confine the file system


_ISOLATION_CACHE: dict[tuple[bool, bool], "Isolation"] = {}


def detect_isolation(network: bool = True, confine: bool = False) -> Isolation:
    """The strongest isolation this machine allows: try ``unshare`` (Linux) with a new network
    namespace (and a PID namespace, so the kernel dies with its worker); probe that the network
    really is gone. With ``confine``, first try a mount namespace as well (course/jail.py: the
    file system read-only, the course's solutions and learners hidden, limits). Falls back step
    by step, and says so."""
    if not network:
        return Isolation([], "not restricted", "network isolation switched off (--no-network-isolation)"
                         + ("; no sandbox (it needs the namespaces)" if confine else ""))
    if (network, confine) in _ISOLATION_CACHE:
        return _ISOLATION_CACHE[(network, confine)]
    unshare = shutil.which("unshare")
    if confine:
        why = probe_jail(unshare) if unshare and sys.platform.startswith("linux") else "not Linux with unshare"
        plain = detect_isolation(network)
        result = (Isolation([unshare, *JAIL_FLAGS], "none", "no network (Linux user, network, PID and mount "
                            f"namespaces via `unshare {' '.join(JAIL_FLAGS)}`)", jail=True) if not why
                  else Isolation(plain.prefix, plain.network, f"{plain.how}; no sandbox of the file system ({why})"))
        _ISOLATION_CACHE[(network, confine)] = result
        return result
    result = Isolation([], "not restricted", "no network isolation: this is not Linux")
    if sys.platform.startswith("linux") and not unshare:
        result = Isolation([], "not restricted", "no network isolation: the `unshare` command is missing")
    elif sys.platform.startswith("linux"):
        why = "unknown"
        for flags in (["-rn", "--fork", "--pid", "--kill-child"], ["-rn"], ["-n"]):
            try:
                proc = subprocess.run([unshare, *flags, sys.executable, "-c", _NETNS_PROBE],
                                      capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = str(exc)
                continue
            if proc.returncode == 0:
                pid_ns = "--pid" in flags
                result = Isolation([unshare, *flags], "none",
                                   f"no network (Linux network namespace via `unshare {' '.join(flags)}`"
                                   + ("; a PID namespace kills the kernel with its worker)" if pid_ns else ")"))
                break
            why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        else:
            result = Isolation([], "not restricted",
                               f"no network isolation: `unshare` is not permitted here ({why})")
    _ISOLATION_CACHE[(network, confine)] = result
    return result


@dataclass
class Execution:
    status: str   # completed | kernel_died | worker_died | notebook_timeout | killed | failed_to_start | unreadable
    message: str
    runtime_s: float
    cells: list[dict[str, Any]] = field(default_factory=list)    # per executed code cell
    records: list[dict[str, Any]] = field(default_factory=list)  # from the checks file
    isolation: str = ""
    probe: dict[str, Any] | None = None   # the grader's probe: {"answer": ...} or {"error": ...}

    @property
    def env(self) -> dict[str, Any] | None:
        envs = [r for r in self.records if r.get("kind") == "env"]
        return envs[-1] if envs else None

    def checks(self) -> dict[str, dict[str, Any]]:
        """The last record of each check, by name."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.records:
            if r.get("kind") == "check":
                out.pop(r["name"], None)
                out[r["name"]] = r
        return out


def _child_env(checks_file: Path, profile: str, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        CHECKS_FILE_ENV: str(checks_file),
        PROFILE_ENV: profile,                       # "" = no profile (the solution runs)
        "IPYTHONDIR": str(scratch / "ipython"),     # no learner/instructor IPython startup files
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
        # inside the sandbox the home folder is read-only: Jupyter and matplotlib write here instead
        "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"), "MPLCONFIGDIR": str(scratch / "mpl"),
        "HOME": str(scratch / "home"),   # the instructor's home is not in the sandbox's view at all
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
    })
    return env


def execute_notebook(path: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None,
                     cell_timeout: float = 300, notebook_timeout: float = 900,
                     kernel_name: str = "python3", profile: str = "",
                     isolation: Isolation | None = None, confine: list[Path] | None = None,
                     probe: tuple[str, str] | None = None) -> Execution:
    """Execute the notebook at ``path`` (a copy: its outputs are not written back) in a fresh
    kernel run by a worker subprocess; every failure becomes an Execution status, never an
    exception. ``cwd`` defaults to the notebook's folder; ``profile`` sets $MINIGPT_PROFILE.
    ``confine``: the course folders whose solutions/, learners/, ... the run must not see, used
    when ``isolation`` has a mount namespace (detect_isolation(confine=True)). ``probe``: (source,
    token) of the grader's cell (course/probes.py), written for the worker only once it says that
    the notebook's cells are done."""
    path = Path(path).resolve()
    cwd = Path(cwd).resolve() if cwd is not None else path.parent
    isolation = isolation if isolation is not None else detect_isolation()
    scratch = Path(tempfile.mkdtemp(prefix="minigpt-run-"))
    checks_file, status_file = scratch / "checks.jsonl", scratch / "status.json"
    how, jail = isolation.how, []
    if isolation.jail and confine is not None:
        keep = [scratch, cwd, path.parent] + ([Path(profile).resolve().parent] if profile else [])
        spec = jail_spec(confine, keep, notebook_timeout)
        how, jail = f"{how}; sandbox: {describe(spec)}", jail_command(spec)
    cmd = [*isolation.prefix, *jail, sys.executable, "-I", str(Path(__file__).with_name("nbrun.py")), str(path),
           "--cwd", str(cwd), "--scratch", str(scratch), "--kernel", kernel_name,
           "--cell-timeout", str(cell_timeout), "--notebook-timeout", str(notebook_timeout),
           *(["--probe"] if probe else [])]
    start = time.monotonic()
    limit = process_limit().__enter__() if jail else None      # a pids cgroup, where one is writable
    if limit is not None and limit.group is None:
        how = f"{how}; {limit.how}"        # (the sandbox line promised a limit this run did not get)
    with open(scratch / "worker.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(checks_file, profile, scratch),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=limit.enter if limit is not None and limit.group else None)
        # + kernel start-up and shutdown, and the probe
        killed = _wait(proc, start + notebook_timeout + 90 + (120 if probe else 0), status_file, probe)
    output = (scratch / "worker.log").read_bytes()
    runtime = time.monotonic() - start
    try:
        status = json.loads(status_file.read_text())
    except (OSError, ValueError, RecursionError):   # the kernel can write there: never trust its shape
        status = {}
    kernel_pid = status.get("kernel_pid")
    # the worker died mid-notebook (killed by the notebook it ran, or out of memory)
    worker_died = not killed and status.get("status") == "running" and kernel_pid is not None
    if (killed or worker_died) and kernel_pid and "--pid" not in isolation.prefix:
        # the worker could not stop its kernel (which runs in its own session); inside a PID
        # namespace the kernel already died with the worker, and its pid means nothing here
        _kill_group(kernel_pid)
    if limit is not None:
        limit.__exit__(None, None, None)
    records = read_checks_file(checks_file)
    shutil.rmtree(scratch, ignore_errors=True)
    if killed:
        st, msg = "killed", f"the notebook did not finish within {notebook_timeout:g} s and was stopped"
    elif worker_died:
        # Nothing of this run is trusted: the checks it recorded count for nothing.
        records = [r for r in records if r.get("kind") != "check"]
        st, msg = "worker_died", _worker_death(proc.returncode, status.get("current"))
    elif not status or status.get("status") == "running":
        tail = " / ".join(output.decode(errors="replace").strip().splitlines()[-3:])
        st, msg = "failed_to_start", f"the grading worker failed (exit code {proc.returncode}): {tail}"
    else:
        st, msg = status["status"], status.get("message", "")
    return Execution(st, msg, round(runtime, 2), status.get("cells", []), records, how,
                     status.get("probe") if probe and not worker_died and not killed else None)


def _wait(proc: subprocess.Popen, deadline: float, status_file: Path, probe: tuple[str, str] | None) -> bool:
    """Wait for the worker; hand it the probe when it asks; True if it had to be killed."""
    sent = probe is None
    while True:
        try:
            proc.wait(timeout=0.1)
            return False
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            _kill_group(proc.pid)
            proc.wait()
            return True
        if not sent:
            try:
                asked = json.loads(status_file.read_text()).get("awaiting_probe")
            except (OSError, ValueError, RecursionError, AttributeError):
                asked = False
            if asked:
                tmp = status_file.with_name("probe.json.tmp")
                tmp.write_text(json.dumps({"source": probe[0], "token": probe[1]}))
                os.replace(tmp, status_file.with_name("probe.json"))
                sent = True


def _worker_death(returncode: int | None, cell: dict[str, Any] | None) -> str:
    how = f"exited with code {returncode}"
    if returncode is not None and returncode < 0:
        try:
            how = f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    where = (f" while running cell {cell['index'] + 1} (`{cell.get('first_line', '')}`)" if cell else "")
    return (f"the grading worker {how}{where}, so nothing this run recorded counts (a notebook that kills "
            f"its grader, or one that ran out of memory)")


def _kill_group(pid: int) -> None:
    """Kill a process and its group (POSIX); just the process elsewhere. Never raises."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(pid, signal.SIGKILL)
            return
        except OSError:
            pass
    try:
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
    except OSError:
        pass
