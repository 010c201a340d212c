"""The grader's own files: reports written without following links, the reference cache keyed
and verified by content hash, a lock per learner (and per cached solution), and the digest of
the whole repository tree that "files unchanged" in grade.md is computed from.

A learner's folder and, without the sandbox, the whole repository are writable by the code
being graded, so nothing here trusts a path it did not create: a report is written to a fresh
private file (O_EXCL | O_NOFOLLOW) in the target folder, opened through a folder descriptor that
was itself opened without following links, and renamed over the report.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:        # Windows: no flock; the report's "lock" line says so
    fcntl = None  # type: ignore[assignment]

GRADER_FILES = ("grade.md", "grade.json", "feedback.md")   # what grading writes in a learner's folder
GRADEBOOK = "gradebook.csv"
# Never part of the tree digest: the grader's own outputs and caches, and what Python or Jupyter
# write as they run (a walk without git only; with git, .gitignore decides).
_SKIP_DIRS = {".git", ".venv", "venv", ".cache", "__pycache__", ".ipynb_checkpoints", ".pytest_cache",
              ".ruff_cache", "build", "node_modules"}


class AlreadyGrading(RuntimeError):
    """Another grading run holds this learner's lock."""


# --- writing reports -----------------------------------------------------------------------------
def _open_dir(folder: Path) -> int:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(folder, flags)
    except OSError as exc:
        raise ValueError(f"Cannot write grading reports into {folder} ({exc.strerror}); make it a real "
                         f"folder, not a link.") from None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically without following a link planted at the path or at
    a temporary name: a fresh file only this process created, then os.replace (which replaces a
    link at ``path`` by the file, never writes through it)."""
    path = Path(path)
    if path.parent.is_symlink():
        raise ValueError(f"Cannot write {path.name}: {path.parent} is a link; make it a real folder.")
    data = text.encode("utf-8")
    if not hasattr(os, "O_NOFOLLOW"):      # Windows: no dir_fd, no O_NOFOLLOW
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    dfd = _open_dir(path.parent)
    tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"    # unguessable, and O_EXCL refuses an existing one
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


# --- locks ---------------------------------------------------------------------------------------
@contextmanager
def file_lock(path: Path, wait: bool, busy_message: str) -> Iterator[None]:
    """flock on ``path`` (created without following a link). ``wait=False``: raise AlreadyGrading
    with ``busy_message`` if another process holds it. A no-op where fcntl is missing."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise AlreadyGrading(busy_message) from None
        yield
    finally:
        os.close(fd)     # closing releases the lock, also when the process dies


def learner_lock(lock_dir: Path, name: str) -> Any:
    """Held while one learner is graded: a second run for the same learner stops at once."""
    return file_lock(lock_dir / f"learner-{name}.lock", wait=False,
                     busy_message=f"already grading {name}: another make grade for this learner is running; "
                                  f"wait for it to finish.")


# --- the reference cache -------------------------------------------------------------------------
def source_digest(*folders: Path) -> str:
    """sha256 over the .py files of ``folders`` (the grader and the package the solutions use)."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.rglob("*.py")):
            h.update(f"{folder.name}/{f.relative_to(folder)}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _payload_digest(key: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256((key + "\0" + json.dumps(payload, sort_keys=True, ensure_ascii=False)).encode()).hexdigest()


def read_cached(path: Path, key: str) -> tuple[dict[str, Any] | None, str]:
    """(payload, "") when ``path`` holds an entry for ``key`` whose content hash verifies;
    (None, why) otherwise: "" for no entry, else one line for the report. A plain hash catches
    a damaged or naively edited entry, not one rewritten with a matching hash by code that could
    read this module: that needs the sandbox to keep notebooks away from .cache/."""
    if not path.is_file() or path.is_symlink():
        return None, ("" if not path.is_symlink() else f"{path.name} is a link, ignored and recomputed")
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("execution"), dict)
              and entry.get("sha256") == _payload_digest(key, entry["execution"]))
    except (OSError, ValueError):
        ok = False
    if not ok:
        return None, f"the cached reference {path.name} did not verify (edited or damaged), so it was recomputed"
    return entry["execution"], ""


def write_cached(path: Path, key: str, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({"key": key, "sha256": _payload_digest(key, payload), "execution": payload},
                                   ensure_ascii=False))


# --- the repository tree -------------------------------------------------------------------------
def _is_output(rel: str) -> bool:
    parts = rel.split("/")
    return (len(parts) == 3 and parts[0] == "learners" and parts[2] in GRADER_FILES) or rel == f"learners/{GRADEBOOK}"


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked, not ignored, files (git ls-files), or None if root is not a git
    work tree of its own (a course copied to a temporary folder, as the tests build)."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=30)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p] if out.returncode == 0 else None


def _walk(folder: Path, root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):     # os.walk does not follow links to folders
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        out += [str((Path(dirpath) / f).relative_to(root)).replace(os.sep, "/") for f in filenames]
    return out


def tree_digest(root: Path, extra: tuple[Path, ...] = ()) -> dict[str, str]:
    """{path relative to root: sha256} for every file of the repository (git's view when root
    is a git work tree, else a walk that skips caches and virtual environments) plus every file
    under ``extra`` (the learner's folder, which .gitignore may hide). A link is hashed as its
    target's name, so pointing it elsewhere counts as a change."""
    root = Path(root)
    names = _git_files(root)
    names = set(_walk(root, root) if names is None else names)
    for folder in extra:
        names |= set(_walk(folder, root))
    out = {}
    for rel in sorted(n for n in names if not _is_output(n)):
        p = root / rel
        try:
            data = (b"link:" + os.readlink(p).encode()) if p.is_symlink() else p.read_bytes()
        except FileNotFoundError:
            continue     # git lists a tracked file deleted from the work tree: absent, like after
        except OSError as exc:
            data = f"unreadable: {exc.strerror}".encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def tree_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """'added: x', 'removed: y', 'changed: z' for every file that differs."""
    changes = [f"added: {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"removed: {p}" for p in sorted(before.keys() - after.keys())]
    return changes + [f"changed: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]


def shorten(changes: list[str], limit: int = 50) -> list[str]:
    """The first ``limit`` changes, and how many more there were: a flag stays readable."""
    return changes[:limit] + ([f"... and {len(changes) - limit} more"] if len(changes) > limit else [])
