"""Narrow what a notebook run can see and use, then exec the worker: run inside ``unshare --mount``.

    python -I course/jail.py SPEC_JSON -- python -I course/nbrun.py NOTEBOOK ...

SPEC_JSON (built by course.sandbox.jail_spec):
    readonly  folders bound read-only onto themselves ("/", the course, the package, the venv)
    readonly_mounts  true: every other mount point too (/dev, /sys/fs/cgroup/..., /boot, ...)
    hide      folders covered by an empty read-only tmpfs (solutions/, learners/, .cache/, .git)
    keep      folders under /tmp that stay visible and writable (the notebook's copy, the scratch)
    limits    {"RLIMIT_FSIZE": bytes, "RLIMIT_CPU": seconds, "RLIMIT_AS": bytes}, each optional

/tmp and /dev/shm become fresh private tmpfs mounts. Any step that fails stops here with exit
code 97 and one line on stderr, so the grader never runs a notebook with less than it reports.
Standard library only, like nbrun.py: it runs before the notebook's imports, on every notebook.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


# statvfs flag -> mount flag. A remount must repeat these: in a user namespace a mount inherited
# from the host has them locked, and a remount that drops one fails with EPERM.
_KEEP_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: 8, os.ST_NOATIME: 1024,
               os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}


def _readonly(folder: str) -> None:
    if folder != "/":      # "/" is remounted as it is: a mount stacked on it would not be entered
        _mount(folder, folder, None, MS_BIND | MS_REC)
    current = os.statvfs(folder).f_flag
    kept = sum(ms for st, ms in _KEEP_FLAGS.items() if current & st)
    _mount(None, folder, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def _mount_points() -> list[str]:
    """Every mount point of this namespace, parents first (field 5 of /proc/self/mountinfo)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return sorted(set(points), key=lambda p: (p.count("/"), p))


def _fresh_tmpfs(folder: str, keep: dict[str, int]) -> None:
    """A new empty tmpfs at ``folder``, with the ``keep`` folders under it bound back in through
    descriptors opened at the start: their paths are hidden once the tmpfs is there, and a
    descriptor opened after "/" went read-only would bind them read-only."""
    _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for k, fd in keep.items():
        if k.startswith(folder.rstrip("/") + "/"):
            os.makedirs(k, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)


def setup(spec: dict) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)      # nothing done here leaks back to the host
    keep = {}
    for k in map(os.path.realpath, spec.get("keep", [])):
        _mount(k, k, None, MS_BIND | MS_REC)          # its own mount: stays writable when "/" is not
        keep[k] = os.open(k, os.O_RDONLY | os.O_DIRECTORY)
    readonly = [f for f in spec.get("readonly", []) if os.path.isdir(f)]
    if spec.get("readonly_mounts"):     # and every mount under them: /dev, /sys/fs/cgroup/*, ...
        readonly += [m for m in _mount_points() if m not in keep and m != "/proc" and not m.startswith("/proc/")]
    for folder in dict.fromkeys(readonly):
        _readonly(folder)
    for folder in spec.get("hide", []):
        if os.path.isdir(folder):
            _mount("tmpfs", folder, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    for folder in ("/tmp", "/dev/shm"):
        if os.path.isdir(folder):
            _fresh_tmpfs(folder, keep)
    for fd in keep.values():
        os.close(fd)
    for name, value in spec.get("limits", {}).items():
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: jail.py SPEC_JSON -- COMMAND ...", file=sys.stderr)
        return 2
    try:
        setup(json.loads(argv[0]))
    except (OSError, ValueError, AttributeError) as exc:
        print(f"jail: {exc}", file=sys.stderr)
        return 97
    os.execv(argv[2], argv[2:])
    return 0   # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
