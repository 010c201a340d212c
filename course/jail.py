"""Narrow what a notebook run can see and use, then exec the worker: run inside ``unshare --mount``.

    python -I course/jail.py SPEC_JSON -- python -I course/nbrun.py NOTEBOOK ...

SPEC_JSON (built by course.sandbox.jail_spec):
    readonly  folders bound read-only onto themselves ("/", the course, the package, the venv)
    readonly_mounts  true: every other mount point too (/dev, /sys/fs/cgroup/..., /boot, ...)
    hide      folders covered by an empty read-only tmpfs (solutions/, learners/, .cache/, .git)
    keep      folders under /tmp that stay visible and writable (the notebook's copy, the scratch)
    allow     when given: the only paths the run sees at all (the system's /usr, /etc, the Python,
              the venv, the course...), bound read-only into a fresh root it pivots into; the rest
              of the file system (home folders, /var, /run, the host's sockets) does not exist there
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
import stat
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


MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}


def _new_root(spec: dict) -> None:
    """Pivot into a fresh tmpfs that holds only spec["allow"] (read-only), spec["keep"] (writable),
    a private /proc, /tmp and /dev/shm. Paths are reached through descriptors opened first: the
    staging tmpfs covers /tmp, where the course and the notebook's copy may live."""
    nr = _PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(0, f"pivot_root: unknown system call number on {os.uname().machine}")
    # a link among them (/lib -> usr/lib on a merged-/usr system) is recreated as a link, its target bound
    links = {p: os.readlink(p) for p in spec["allow"] if os.path.islink(p)}
    allow = [p for p in dict.fromkeys(map(os.path.realpath, spec["allow"])) if os.path.exists(p)]
    keep = list(dict.fromkeys(map(os.path.realpath, spec.get("keep", []))))
    fds = {p: os.open(p, os.O_PATH) for p in allow + keep}
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")     # staging, this namespace only
    new = "/tmp/root"
    os.mkdir(new)
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for d in ("tmp", "dev/shm"):
        os.makedirs(f"{new}/{d}")
        _mount("tmpfs", f"{new}/{d}", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for p in sorted(allow + keep, key=lambda p: (p.count("/"), p)):
        target, src = new + p, f"/proc/self/fd/{fds[p]}"
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _mount(src, target, None, MS_BIND | MS_REC)
    for m in _mount_points():          # every bound mount read-only, except the run's own folders
        if m.startswith(new + "/") and not any(m == new + k or m.startswith(new + k + "/") for k in keep) \
                and m not in (f"{new}/tmp", f"{new}/dev/shm"):
            _readonly(m)
    for link, target in links.items():
        os.makedirs(os.path.dirname(new + link), exist_ok=True)
        if not os.path.lexists(new + link):
            os.symlink(target, new + link)
    for entry in os.scandir(f"{new}/dev"):   # the host's sockets in /dev (syslog's /dev/log): gone
        if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
            _mount("/dev/null", entry.path, None, MS_BIND)
    os.makedirs(f"{new}/proc", exist_ok=True)
    _mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | 8)           # 8: MS_NOEXEC
    for folder in spec.get("hide", []):
        if os.path.isdir(new + folder):
            _mount("tmpfs", new + folder, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=755")
    for fd in fds.values():
        os.close(fd)
    os.chdir(new)
    os.mkdir(".old")
    if _libc.syscall(nr, b".", b".old") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    os.chdir("/")
    if _libc.umount2(b"/.old", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount the old root: {os.strerror(err)}")
    os.rmdir("/.old")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)   # the new root itself


def setup(spec: dict) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)      # nothing done here leaks back to the host
    if spec.get("allow"):
        _new_root(spec)
    else:
        _narrow_in_place(spec)
    for name, value in spec.get("limits", {}).items():
        resource.setrlimit(getattr(resource, name), (int(value), int(value)))


def _narrow_in_place(spec: dict) -> None:
    """Without an allow-list: the host's tree, read-only, with the hidden folders covered."""
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
