"""JupyterLab started as `make lab` starts it, for the browser smoke test, and always stopped.

The command line is the Makefile's own (`$(LAB_CMD)`, which `make lab` runs): `make test-ui` passes
it in $PHASE28_LAB_CMD; under plain pytest we ask `make -s lab-cmd` for it. We only add what a
test needs: 127.0.0.1, a free port, a token and no browser. Lab settings and workspaces go to a
scratch folder so a developer's own JupyterLab state neither changes the test nor is changed by it.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never via a proxy
# No toast asking to fetch news, and no update check: either would make JupyterLab contact a website.
NOTIFICATION_SETTINGS = {"fetchNews": "false", "checkForUpdates": False}


def lab_command() -> list[str]:
    """The jupyter command line of `make lab` (without LAB_ARGS)."""
    cmd = os.environ.get("PHASE28_LAB_CMD")
    if not cmd:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        out = subprocess.run(["make", "-s", "--no-print-directory", "lab-cmd"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"`make lab-cmd` failed: {out.stderr.strip()}")
        cmd = out.stdout.strip()
    argv = shlex.split(cmd)
    if not argv or not argv[0].endswith("/jupyter") or argv[1:2] != ["lab"]:
        raise RuntimeError(f"expected '<venv>/bin/jupyter lab ...' from the Makefile, got {cmd!r}")
    return argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    argv: list[str]
    port: int
    token: str
    log_path: Path
    proc: subprocess.Popen | None = None
    _log: object = field(default=None, repr=False)

    @property
    def venv(self) -> Path:
        """The venv `make lab` uses: <venv>/bin/jupyter."""
        return Path(self.argv[0]).parent.parent

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, path: str, method: str = "GET") -> dict | list | None:
        req = urllib.request.Request(self.url(f"api/{path}"), method=method, data=b"" if method == "POST" else None)
        with LOCAL.open(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def start(self, scratch: Path, timeout_s: float = 90) -> None:
        """Start the server and wait until its REST API answers; raise with the log's tail if not."""
        settings = scratch / "lab-settings"
        for old in ("lab-settings", "lab-workspaces", "runtime"):   # a restored workspace would reopen tabs
            shutil.rmtree(scratch / old, ignore_errors=True)
        target = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(NOTIFICATION_SETTINGS), encoding="utf-8")
        env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
               "JUPYTERLAB_WORKSPACES_DIR": str(scratch / "lab-workspaces"),
               "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
               "MINIGPT_PROFILE": ""}   # no learner profile: the header's learner line is the same everywhere
        self._log = open(self.log_path, "w", encoding="utf-8")
        # Same process group as pytest: a `timeout` around `make test-ui` signals JupyterLab too.
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on port {self.port} within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Ask the server to shut down (it stops its kernels), then SIGTERM, then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.api("shutdown", method="POST")
            except OSError:
                pass
            for signal_it in (lambda: None, self.proc.terminate, self.proc.kill):
                signal_it()
                try:
                    self.proc.wait(timeout=15)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()


def new_server(scratch: Path) -> LabServer:
    """A server on a free loopback port with a fresh token, not started yet."""
    port, token = free_port(), secrets.token_hex(16)
    extra = ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    return LabServer(argv=lab_command() + extra, port=port, token=token, log_path=scratch / "jupyterlab.log")
