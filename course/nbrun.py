"""Run one notebook in a fresh Jupyter kernel: the worker behind course.grading.execute_notebook.

    python -I course/nbrun.py NOTEBOOK --cwd DIR --scratch DIR [--kernel python3]
                               [--cell-timeout S] [--notebook-timeout S]

It executes every code cell (errors allowed), interrupts a cell that exceeds its time limit and
goes on, stops at the notebook's time limit or when the kernel dies, and writes its progress to
``<scratch>/status.json`` after every cell, so the grader learns what happened even if this
process is killed. The executed copy goes to ``<scratch>/executed.ipynb``.

This file is run by path, with ``python -I``, and imports nothing from minigpt: the grader pays
for neither torch nor the package at each notebook (only the kernel imports what the notebook
imports). It uses the ipc transport (Unix sockets), which keeps working inside a network
namespace where loopback is down.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= 60 else line[:59] + "…"
    return ""


def main(argv: list[str] | None = None) -> int:
    """Execute every code cell of one notebook; always exits 0 (the outcome is in status.json)."""
    p = argparse.ArgumentParser(prog="course/nbrun.py")
    p.add_argument("notebook")
    p.add_argument("--cwd", required=True)
    p.add_argument("--scratch", required=True)
    p.add_argument("--kernel", default="python3")
    p.add_argument("--cell-timeout", type=float, default=300)
    p.add_argument("--notebook-timeout", type=float, default=900)
    p.add_argument("--probe", action="store_true",
                   help="after the last cell, wait for the grader's <scratch>/probe.json and run it as one more cell")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    scratch = Path(a.scratch)
    status: dict[str, Any] = {"status": "running", "message": "", "cells": [], "kernel_pid": None}
    start = time.monotonic()

    def save() -> None:
        status["runtime_s"] = round(time.monotonic() - start, 2)
        tmp = scratch / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, scratch / "status.json")

    save()
    # nbformat imports jsonschema, which builds an IRI grammar (rfc3987_syntax) at import time:
    # seconds per notebook on a 2-core machine. Nothing here validates IRIs, so skip it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import nbformat
    try:
        nb = nbformat.read(a.notebook, as_version=4)
    except Exception as exc:
        status.update(status="unreadable", message=f"the notebook file cannot be read "
                      f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
        save()
        return 0
    # The async manager matters: with the blocking one, nbclient waits for a reply in a blocking
    # call and never notices that the kernel died.
    from jupyter_client import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    errors: dict[int, dict[str, Any]] = {}

    def on_error(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        c = execute_reply.get("content", {})
        errors[cell_index] = {"ename": c.get("ename", "?"), "evalue": " ".join(str(c.get("evalue", "")).split())[:300]}

    # ipc transport: Unix sockets work inside a network namespace, where loopback is down.
    km = AsyncKernelManager(kernel_name=a.kernel, transport="ipc" if os.name == "posix" else "tcp")
    km.connection_file = str(scratch / "kernel.json")
    client = NotebookClient(
        nb, km=km, timeout=int(a.cell_timeout), allow_errors=True, startup_timeout=120,
        interrupt_on_timeout=True,  # an endless loop is interrupted and the rest still runs
        error_on_timeout={"ename": "CellTimeout", "evalue": f"the cell ran longer than "
                          f"{a.cell_timeout:g} s and was interrupted", "traceback": []},
        resources={"metadata": {"path": a.cwd}}, on_cell_error=on_error,
        shutdown_kernel="immediate")  # nothing to save: a graceful shutdown only costs time
    deadline = start + a.notebook_timeout
    try:
        with client.setup_kernel():
            prov = getattr(km, "provisioner", None)
            status["kernel_pid"] = getattr(getattr(prov, "process", None), "pid", None)
            save()
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code" or not cell.source.strip():
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    status.update(status="notebook_timeout", message=(
                        f"stopped at cell {index + 1} (`{_first_line(cell.source)}`): the notebook "
                        f"time limit of {a.notebook_timeout:g} s was reached"))
                    break
                client.timeout = max(1, int(min(a.cell_timeout, remaining)))
                t0 = time.monotonic()
                entry: dict[str, Any] = {"index": index, "id": cell.get("id"),
                                         "first_line": _first_line(cell.source)}
                status["current"] = entry    # if this process is killed, the grader knows where
                save()
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    entry.update(seconds=round(time.monotonic() - t0, 2),
                                 error={"ename": "DeadKernel", "evalue": "the kernel died"})
                    status["cells"].append(entry)
                    status.update(status="kernel_died", message=(
                        f"the kernel died in cell {index + 1} (`{entry['first_line']}`); "
                        f"the cells after it did not run"))
                    break
                entry["seconds"] = round(time.monotonic() - t0, 2)
                entry["error"] = errors.get(index)
                status["cells"].append(entry)
                status["current"] = None
                save()
            else:
                status.update(status="completed", message="ran to the end")
            save()
            if a.probe and status["status"] in ("completed", "notebook_timeout"):
                status["probe"] = _run_probe(client, nb, scratch, errors, save, status, a.cell_timeout)
            save()
    except DeadKernelError:
        if status["status"] == "running":
            status.update(status="kernel_died", message="the kernel died while starting")
    except Exception as exc:
        if status["status"] == "running":
            status.update(status="failed_to_start", message=(
                f"the kernel could not run the notebook ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"))
    save()
    try:
        nbformat.write(nb, str(scratch / "executed.ipynb"))
    except Exception:
        pass
    return 0


def _run_probe(client: Any, nb: Any, scratch: Path, errors: dict[int, dict[str, Any]], save: Any,
               status: dict[str, Any], cell_timeout: float) -> dict[str, Any]:
    """The grader's probe, in the same kernel once the notebook's cells are done. The grader writes
    probe.json only when this process says it is waiting, so the notebook's cells never see its seed."""
    import nbformat
    from nbclient.exceptions import DeadKernelError
    status["awaiting_probe"] = True
    save()
    path, deadline = scratch / "probe.json", time.monotonic() + 60
    while not path.is_file():
        if time.monotonic() > deadline:
            return {"error": "the grader sent no probe"}
        time.sleep(0.05)
    try:
        probe = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError) as exc:
        return {"error": f"the probe could not be read ({type(exc).__name__})"}
    cell = nbformat.v4.new_code_cell(probe["source"])
    nb.cells.append(cell)
    index = len(nb.cells) - 1
    client.timeout = max(1, int(min(cell_timeout, 120)))
    try:
        client.execute_cell(cell, index)
    except DeadKernelError:
        return {"error": "the kernel died during the grader's probe"}
    except Exception as exc:    # a timeout: the kernel is busy with something the notebook left running
        return {"error": f"the grader's probe did not finish ({type(exc).__name__})"}
    finally:
        nb.cells.pop()
    if index in errors:
        return {"error": f"the grader's probe raised {errors[index]['ename']}: {errors[index]['evalue']}"}
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    for line in text.splitlines():
        if line.startswith(probe["token"]):
            try:
                return {"answer": json.loads(line[len(probe["token"]):])}
            except (ValueError, RecursionError):     # the kernel's answer is untrusted text
                break
    return {"error": "the kernel's answer to the grader's probe was missing or unreadable"}


if __name__ == "__main__":
    sys.exit(main())
