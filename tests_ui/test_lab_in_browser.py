"""A lab as a learner sees it: JupyterLab started as `make lab` starts it, in headless Chromium.

Opens a lab (default labs/01-lora-from-scratch.ipynb, or $UI_LAB), runs its first code cells
(the Colab/Kaggle bootstrap cell, which must say it installed nothing here, and the lab header)
with Shift+Enter, types one more cell that prints the kernel's sys.prefix, and reads from the page:
  - the toolbar's kernel name, which must be the course's kernel ("Phase 28 (minigpt)"), and the
    typed cell's sys.prefix, which must be the venv `make lab` runs from;
  - the lab header that course.learner.lab_header prints ("Lab 01 — LoRA from scratch") and its
    "which path ran" line ("Device: CPU (...)" or "Device: CUDA GPU ..."), which must equal
    minigpt.device.describe_device() on this machine.
It saves a screenshot (build/ui/<lab>.png, or $UI_SHOT) even when an assertion fails, and always
stops the browser, JupyterLab and its kernel, then checks that none of their processes is left.

Run it with `make test-ui`. It lives outside tests/ so that `make test` never collects it; under
plain pytest (`.venv/bin/python -m pytest tests_ui`) it is skipped, with the reason, when
Playwright or Chromium is missing (`make test-ui` sets PHASE28_UI_REQUIRED=1: then it fails).
The browser is Debian's chromium through executable_path; `playwright install` is never used.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_server import ROOT, new_server  # noqa: E402

LAB = ROOT / os.environ.get("UI_LAB", "labs/01-lora-from-scratch.ipynb")
SHOT = ROOT / os.environ.get("UI_SHOT", f"build/ui/{LAB.stem}.png")
SCRATCH = ROOT / "build" / "ui"          # ignored by git (.gitignore: build/)
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("PHASE28_UI_REQUIRED") == "1"
KERNELSPEC = {"name": "phase28", "display_name": "Phase 28 (minigpt)", "language": "python"}
MAX_CELLS = 2                             # code cells run before the typed kernel check
CELL_TIMEOUT_MS = 180_000                 # the first cell imports torch, transformers and peft
HEADER_CALL = re.compile(r'lab_header\(\s*"(?P<id>\d\d)"')
KERNEL_CHECK = 'import os, sys; print(f"kernel-check pid={os.getpid()} prefix={sys.prefix}")'
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def need(ok: bool, reason: str) -> None:
    if not ok:
        (pytest.fail if REQUIRED else pytest.skip)(reason)


def lab_plan(nb: dict) -> tuple[str, str, int]:
    """(lab id, title, how many leading code cells to run: the bootstrap cell and the header's)."""
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    at = [i for i, c in enumerate(code[:MAX_CELLS]) if HEADER_CALL.search(c)]
    assert at, f"{LAB.name}: one of the first {MAX_CELLS} code cells must call lab_header(\"NN\")"
    from course.lab_texts import LABS
    lab_id = HEADER_CALL.search(code[at[0]])["id"]
    return lab_id, LABS[lab_id].title, at[0] + 1


def scratch_copy(nb: dict) -> Path:
    """The lab written, unchanged, under build/ui/labs/: running it never touches labs/. Its
    kernelspec is the lab's own, so a lab declaring another kernel fails here as it would for a learner."""
    path = SCRATCH / "labs" / LAB.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class ProcessTree:
    """Every process started below this one, remembered at each snap(), so that processes
    re-parented away from us (a kernel whose server died) are still found at the end."""

    def __init__(self) -> None:
        self.seen: dict[int, psutil.Process] = {}

    def snap(self) -> None:
        for p in psutil.Process().children(recursive=True):
            self.seen.setdefault(p.pid, p)

    def leftovers(self, wait_s: float = 10) -> list[str]:
        """Wait for them to end; kill and name the ones that did not."""
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=wait_s)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        names = []
        for p in alive:
            with contextlib.suppress(psutil.Error):
                names.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
        return names


@contextlib.contextmanager
def sigterm_raises():
    """`timeout` (make test-ui's time limit) sends SIGTERM: turn it into an exception so that
    every finally below stops the browser and JupyterLab."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}: the time limit of make test-ui ran out")
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_cell(page, cell, seen: dict, key: str) -> str:
    """Shift+Enter in a code cell, wait for its prompt to show a number, return its output text."""
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    t = time.monotonic()
    from playwright.sync_api import expect
    expect(cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[\d+\]:"), timeout=CELL_TIMEOUT_MS)
    out = cell.locator(".jp-OutputArea").inner_text()
    seen[key] = out
    error = cell.locator('[data-mime-type="application/vnd.jupyter.error"]')
    assert error.count() == 0, f"cell {key} raised:\n{out}"
    print(f"  {key}: ran in {time.monotonic() - t:.1f} s")
    return out


def wait_for_kernel(page, panel, timeout_s: float = 90) -> str:
    """The kernel name the toolbar shows once a kernel is idle; fails at once on a dialog
    (e.g. "Select Kernel", which a learner would see when the notebook's kernel is missing)."""
    name, idle = panel.locator(".jp-Toolbar-kernelName"), panel.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog")
        assert dialog.count() == 0, f"JupyterLab asks instead of starting the kernel: {dialog.inner_text()!r}"
        text = name.inner_text().strip() if name.count() else ""
        if text not in ("", "No Kernel", "Kernel") and idle.count():
            return text
        page.wait_for_timeout(250)
    raise AssertionError(f"no idle kernel within {timeout_s:.0f} s; the toolbar says {text!r}")


def drive(page, server, notebook: Path, n_cells: int, seen: dict) -> None:
    """What a learner does: open the lab, wait for the kernel, run the first cells, type one."""
    t = time.monotonic()
    page.goto(server.url(f"lab/tree/{notebook.relative_to(ROOT).as_posix()}"))
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    panel.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=90_000)
    seen["kernel_name"] = wait_for_kernel(page, panel)
    print(f"  page loaded and kernel idle in {time.monotonic() - t:.1f} s")
    cells = panel.locator(".jp-Notebook .jp-CodeCell")
    for i in range(n_cells):
        run_cell(page, cells.nth(i), seen, f"code cell {i + 1}")
    page.keyboard.press("Escape")          # command mode, then B: a new code cell below
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.insert_text(KERNEL_CHECK)
    check = cells.filter(has_text="kernel-check")
    run_cell(page, check, seen, "typed kernel check")
    # What the screenshot shows: the header's output at the top of the notebook's view.
    cells.nth(n_cells - 1).locator(".jp-OutputArea").evaluate(
        "el => { el.scrollIntoView({block: 'start'}); el.closest('.jp-WindowedPanel-outer')?.scrollBy(0, -80); }")
    page.wait_for_timeout(300)


def test_lab_opens_and_runs_in_the_course_kernel():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "Playwright is not installed in this venv: `make test-ui` installs requirements-ui.txt")
    need(os.access(CHROMIUM, os.X_OK),
         f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or set CHROMIUM=/path")
    nb = json.loads(LAB.read_text(encoding="utf-8"))
    lab_id, title, n_cells = lab_plan(nb)
    notebook = scratch_copy(nb)
    server, tree, seen, outside = new_server(SCRATCH), ProcessTree(), {}, []
    print(f"\n{LAB.relative_to(ROOT)} in {CHROMIUM}, JupyterLab on 127.0.0.1:{server.port}: "
          f"{' '.join(server.argv[:4])} ...")
    with sigterm_raises():
        try:
            t = time.monotonic()
            server.start(SCRATCH)
            print(f"  JupyterLab answered in {time.monotonic() - t:.1f} s")
            with sync_playwright() as pw:
                args = ["--no-sandbox"] if os.geteuid() == 0 else []   # Chromium refuses root otherwise
                # No name resolves: the page can reach only 127.0.0.1 (and requests elsewhere are listed).
                args.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    page.on("request", lambda r: urllib.parse.urlsplit(r.url).hostname not in LOOPBACK
                            and r.url.startswith(("http", "ws")) and outside.append(r.url))
                    try:
                        drive(page, server, notebook, n_cells, seen)
                        seen["sessions"] = server.api("sessions")
                    finally:
                        tree.snap()
                        SHOT.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(SHOT))
                        print(f"  screenshot: {SHOT.relative_to(ROOT)}")
                finally:
                    tree.snap()
                    browser.close()
        finally:
            tree.snap()
            server.stop()
            left = tree.leftovers()
    assert not left, f"still running after the test stopped everything (now killed): {left}"

    # The course's kernel, as the page shows it and as the kernel itself reports it.
    assert seen["kernel_name"] == KERNELSPEC["display_name"], seen["kernel_name"]
    kernels = {s["kernel"]["name"] for s in seen["sessions"] if s["path"].endswith(notebook.name)}
    assert kernels == {KERNELSPEC["name"]}, seen["sessions"]
    m = re.search(r"kernel-check pid=(\d+) prefix=(.+)", seen["typed kernel check"])
    assert m, seen["typed kernel check"]
    assert Path(m[2].strip()).resolve() == server.venv.resolve(), \
        f"the kernel runs in {m[2]}, not in the venv `make lab` uses ({server.venv})"

    # The bootstrap cell said it installed nothing (not a cloud host); then the lab header and its
    # "which path ran" line, read from the page.
    from course.cloud import NOT_ON_HOST
    if n_cells > 1:
        assert seen["code cell 1"].strip() == NOT_ON_HOST, seen["code cell 1"]
    header = seen[f"code cell {n_cells}"]
    lines = [ln for ln in header.splitlines() if ln.strip()]
    assert lines and lines[0] == f"Lab {lab_id} — {title}", header
    device = [ln for ln in lines if ln.startswith("Device: ")]
    from minigpt.device import describe_device
    assert device == [describe_device()], header
    assert re.match(r"Device: (CPU \(|CUDA GPU )", device[0]), device
    assert not outside, f"the page tried to reach other hosts than 127.0.0.1: {outside[:5]}"
    print(f"  read from the page: {lines[0]!r}; {device[0]!r}; kernel {seen['kernel_name']!r} "
          f"(sys.prefix {m[2].strip()})")
