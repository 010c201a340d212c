"""A limit on the number of processes (and threads) of one notebook run: a ``pids`` cgroup.

``RLIMIT_NPROC`` cannot do it: it counts every process of the user on the whole machine, and the
namespace root of ``unshare -r`` is exempt from it. A pids cgroup counts exactly the run's own tasks
(the worker, the kernel, whatever the notebook starts) and refuses the fork beyond ``pids.max``. It
needs a pids cgroup the grader may write: cgroup v1's ``/sys/fs/cgroup/pids`` or a cgroup v2
hierarchy with the pids controller (as root, or where the instructor's session delegates one).
Where there is none, the run goes on without the limit and grade.md says so.

    with process_limit(512) as limit:
        subprocess.Popen(cmd, preexec_fn=limit.enter)    # the child joins the cgroup before exec
        ...
    limit.how   # "at most 512 processes and threads" or why it was not enforced
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

PROCESS_LIMIT = 512      # the kernel, 2 sharded ranks and torch's threads fit many times over
_CANDIDATES = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def _writable_parent() -> tuple[Optional[Path], str]:
    """A pids cgroup folder this process may create children in, or None and why not."""
    if not Path("/proc/self/cgroup").exists():
        return None, "no cgroups on this system"
    for base in _CANDIDATES:
        v2 = (base / "cgroup.controllers").exists()
        if not (base / "cgroup.procs").exists() or (v2 and "pids" not in (base / "cgroup.controllers").read_text()):
            continue
        if v2 and "pids" not in (base / "cgroup.subtree_control").read_text().split():
            continue   # (enabling a controller for the root's children is the administrator's call)
        if os.access(base, os.W_OK):
            return base, ""
    return None, "no pids cgroup this user may write (cgroup delegation)"


def describe_limit(limit: int = PROCESS_LIMIT) -> str:
    """What a confined run will get, for grade.md's line on the sandbox."""
    parent, why = _writable_parent()
    return f"at most {limit} processes and threads (pids cgroup)" if parent else f"process count not limited ({why})"


class ProcessLimit:
    def __init__(self, limit: int = PROCESS_LIMIT):
        self.limit, self.group, self.how = limit, None, ""

    def __enter__(self) -> "ProcessLimit":
        parent, why = _writable_parent()
        if parent is None:
            self.how = f"process count not limited ({why})"
            return self
        group = parent / f"minigpt-run-{os.getpid()}-{time.monotonic_ns()}"
        try:
            group.mkdir()
            (group / "pids.max").write_text(str(self.limit))
        except OSError as exc:
            self.how = f"process count not limited ({exc.strerror or exc})"
            return self
        self.group, self.how = group, f"at most {self.limit} processes and threads (pids cgroup)"
        return self

    def enter(self) -> None:
        """preexec_fn: move the child into the cgroup before it execs the worker."""
        if self.group is not None:
            with open(self.group / "cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def __exit__(self, *exc) -> None:
        if self.group is None:
            return
        for _ in range(50):              # the run's tasks are gone (killed with its PID namespace)
            try:
                self.group.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def process_limit(limit: int = PROCESS_LIMIT) -> ProcessLimit:
    return ProcessLimit(limit)
