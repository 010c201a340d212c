"""Learners: their profiles, their copy of the labs, and the header every lab prints first.

A learner lives in ``learners/<name>/``: ``profile.md`` (YAML front matter, then free notes)
and ``labs/`` (their copies of the labs, where they work). A notebook running in
``learners/<name>/labs/`` finds its learner's profile at ``../profile.md``; the environment
variable ``MINIGPT_PROFILE`` (a path; empty means "no profile") overrides that.

    make start LEARNER=ana         ->  python -m course.learner start ana
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from minigpt.paths import ROOT  # noqa: E402
from .labs import render  # noqa: E402
from .links import rewrite_notebook_links  # noqa: E402
PROFILE_ENV = "MINIGPT_PROFILE"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
LANGUAGES = ("en", "es")
HARDWARE = ("cpu", "cuda")


@dataclass(frozen=True)
class Profile:
    name: str
    language: str                 # "en" | "es": which summary a lab prints first
    hardware: str                 # "cpu" | "cuda": what the learner works on at this phase
    gpu_memory_gib: float | None  # GiB = 2**30 bytes; None when hardware is "cpu"
    phase: int
    notes: str
    path: Path


def validate_name(name: str) -> str:
    """Return ``name`` if it can name a learner's folder, else raise ValueError (one sentence)."""
    if not name:
        raise ValueError("Give a learner name, e.g. make start LEARNER=ana.")
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"Learner name {name!r} is not allowed: use 1-32 lowercase letters, digits, "
                         f"'-' or '_', starting with a letter or digit (e.g. ana or jose-luis).")
    return name


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a profile.md; any problem is a ValueError naming the file and the fix."""
    import yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    m = re.match(r"---[ \t]*\n(.*?)\n---[ \t]*(?:\n|$)(.*)", text, re.S)
    if not m:
        raise ValueError(f"{path}: start the file with YAML front matter between two '---' lines "
                         f"(see learners/TEMPLATE/profile.md).")
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: the front matter is not valid YAML ({exc.__class__.__name__}); "
                         f"compare it with learners/TEMPLATE/profile.md.") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the front matter must be 'key: value' lines.")
    name = str(meta.get("name", ""))
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"{path}: name must be the learner's folder name "
                         f"(lowercase letters, digits, '-' or '_'), got {name!r}.")
    language = meta.get("language")
    if language not in LANGUAGES:
        raise ValueError(f"{path}: language must be 'en' or 'es', got {language!r}.")
    hardware = meta.get("hardware")
    if hardware not in HARDWARE:
        raise ValueError(f"{path}: hardware must be 'cpu' or 'cuda', got {hardware!r}.")
    gib = meta.get("gpu_memory_gib")
    if hardware == "cuda":
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or gib <= 0:
            raise ValueError(f"{path}: with hardware: cuda, set gpu_memory_gib to the GPU's memory "
                             f"in GiB (e.g. 24), got {gib!r}.")
        gib = float(gib)
    elif gib not in (None, 0):
        raise ValueError(f"{path}: gpu_memory_gib is for hardware: cuda; with hardware: cpu leave it "
                         f"null, got {gib!r}.")
    else:
        gib = None
    phase = meta.get("phase")
    if isinstance(phase, bool) or not isinstance(phase, int) or phase < 1:
        raise ValueError(f"{path}: phase must be the course phase the learner is on, a whole "
                         f"number such as 28, got {phase!r}.")
    return Profile(name=name, language=language, hardware=hardware, gpu_memory_gib=gib,
                   phase=phase, notes=m.group(2).strip(), path=path)


def profile_path(cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the active profile is: $MINIGPT_PROFILE if set (empty = none), else ../profile.md
    when the working directory is learners/<name>/labs/, else profile.md in it; None if absent."""
    env = os.environ.get(PROFILE_ENV)
    if env is not None:
        return Path(env) if env.strip() else None
    cwd = Path.cwd() if cwd is None else Path(cwd)
    for candidate in (cwd.parent / "profile.md" if cwd.name == "labs" else None, cwd / "profile.md"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def active_profile(cwd: str | os.PathLike[str] | None = None) -> Profile | None:
    """The profile of the learner whose notebook is running, or None (see profile_path)."""
    path = profile_path(cwd)
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"{PROFILE_ENV}={path} does not exist; point it at a learners/<name>/profile.md.")
    return load_profile(path)


def pick(en: str, es: str, profile: Profile | None = None) -> str:
    """The text in the active learner's language (English when there is no profile)."""
    if profile is None:
        try:
            profile = active_profile()
        except ValueError:
            profile = None
    return es if profile is not None and profile.language == "es" else en


_CPU_GENERIC = {
    "en": "No CUDA GPU in this kernel: memory figures come from minigpt.memory's tensor tracker "
          "(and fake-tensor traces), labelled as such; cells that need torch.cuda counters say "
          "so and skip.",
    "es": "Este kernel no tiene GPU CUDA: las cifras de memoria salen del rastreador de tensores "
          "de minigpt.memory (y de trazas con tensores falsos), con su etiqueta; las celdas que "
          "necesitan los contadores de torch.cuda lo dicen y se saltan.",
}


# The packages whose version moves the memory figures a lab prints (allocator, autocast, peft's casts).
_FIGURE_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")


def environment_note(root: str | os.PathLike[str] = ROOT) -> str | None:
    """One line when this kernel's torch/transformers/peft/bitsandbytes differ from requirements.txt
    (another Jupyter, VS Code's default interpreter, a cloud host's own torch); None when they match."""
    import importlib.metadata

    from .envcheck import pinned

    req = Path(root) / "requirements.txt"
    if not req.is_file():
        return None
    pins, off = pinned(req), []
    for name in _FIGURE_PACKAGES:
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = "not installed"
        if name in pins and have.split("+")[0] != pins[name]:
            off.append(f"{name} {have} (pinned {pins[name]})")
    if not off:
        return None
    return (f"Environment: this kernel has {', '.join(off)}; memory figures can differ from the stored ones. "
            f"Use the course's kernel 'Phase 28 (minigpt)' (.venv/bin/python, made by `make lab`).")


def quiet_libraries() -> None:
    """Keep the libraries' one-time notices out of a lab's outputs, where they would depend on which
    optional packages a machine has: tqdm's IProgress notice (no ipywidgets), transformers' notice when
    peft reads is_gradient_checkpointing, bitsandbytes' notice about an optional CPU kernel package.
    lab_header calls it; call lab_header before importing those libraries."""
    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def lab_header(lab_id: str, *, title: str | None = None, summary_en: str | None = None,
               summary_es: str | None = None, cpu_note_en: str | None = None,
               cpu_note_es: str | None = None) -> Profile | None:
    """Call first in a lab's setup cell: ``profile = lab_header("03")``. Prints the title, the learner
    and the device line, the summary in the learner's language first (English first without a
    profile), and — when the kernel has no CUDA GPU — which cells fall back to the tracker and why.
    The texts come from course/lab_texts.py unless given (learners' older copies pass them).
    Registers the lab id for ``course.checks`` and quiets the libraries' notices (quiet_libraries).
    Never raises for a broken profile: it is reported in one line."""
    from . import checks

    if title is None:
        from .lab_texts import LABS
        if lab_id not in LABS:
            raise ValueError(f"lab_header({lab_id!r}): no such lab in course/lab_texts.py; use one of "
                             f"{', '.join(LABS)}, or pass title=, summary_en= and summary_es=.")
        t = LABS[lab_id]
        title, summary_en, summary_es = t.title, t.summary_en, t.summary_es
        cpu_note_en, cpu_note_es = cpu_note_en or t.cpu_note_en, cpu_note_es or t.cpu_note_es
    if summary_en is None or summary_es is None:
        raise ValueError("lab_header: pass both summary_en= and summary_es= with title=, or neither.")
    quiet_libraries()
    try:
        profile = active_profile()
        problem = None
    except (ValueError, OSError) as exc:
        profile, problem = None, str(exc)
    lang = profile.language if profile else "en"
    checks.start_lab(lab_id, language=lang)   # hints in the learner's language
    try:
        import torch
        from minigpt.device import describe_device
        cuda, device_line = torch.cuda.is_available(), describe_device()
    except Exception as exc:  # a lab must still open when torch is broken; envcheck says why
        cuda, device_line = False, f"Device: unknown (torch could not be imported: {exc})"

    print(f"Lab {lab_id} — {title}")
    if profile:
        gpu = f", {profile.gpu_memory_gib:g} GiB GPU" if profile.gpu_memory_gib else ""
        print(f"Learner: {profile.name} ({profile.language}, {profile.hardware}{gpu}, phase {profile.phase})")
    elif problem:
        print(f"Learner profile not used: {problem}")
    else:
        print("Learner: none (run `make start LEARNER=<name>` and work in learners/<name>/labs/)")
    print(device_line)
    try:
        note = environment_note()
    except Exception as exc:  # never let the header fail: say what could not be read
        note = f"Environment: could not compare the installed versions with requirements.txt ({exc})."
    if note:
        print(note)
    summaries = {"en": summary_en, "es": summary_es}
    for code in (lang, "es" if lang == "en" else "en"):
        print(f"\n[{code}] {summaries[code].strip()}")
    if profile and profile.hardware == "cuda" and not cuda:
        print("\n" + pick("Your profile says hardware: cuda, but this kernel sees no CUDA GPU: "
                          "this run takes the CPU path.",
                          "Tu perfil dice hardware: cuda, pero este kernel no ve ninguna GPU CUDA: "
                          "esta ejecución sigue el camino de CPU.", profile))
    if profile and profile.hardware == "cpu" and cuda:
        print("\n" + pick("This kernel sees a CUDA GPU although your profile says hardware: cpu; "
                          "the lab uses the GPU (update your profile if that is right).",
                          "Este kernel ve una GPU CUDA aunque tu perfil dice hardware: cpu; el lab "
                          "usa la GPU (actualiza tu perfil si es correcto).", profile))
    if not cuda:
        notes = {"en": cpu_note_en or _CPU_GENERIC["en"], "es": cpu_note_es or _CPU_GENERIC["es"]}
        label = {"en": "CPU path", "es": "Camino de CPU"}
        print(f"\n{label[lang]}: {notes[lang].strip()}")
    return profile


# --- make start ---------------------------------------------------------------------------------
@dataclass
class StartResult:
    learner_dir: Path
    created_profile: bool
    added: list[str]
    kept: list[str]


def _copy_for_learner(lab: Path, labs: Path) -> str:
    """The lab's text with its relative links (../theory/...) pointing at the same files from the
    learner's folder; byte-identical to the lab when it has none."""
    text = lab.read_text(encoding="utf-8")
    nb = json.loads(text)
    if not rewrite_notebook_links(nb, lab.parent.resolve(), labs.resolve()):
        return text
    return render(nb)


def start(name: str, root: str | os.PathLike[str] = ROOT) -> StartResult:
    """Create learners/<name>/profile.md from the template if missing and copy every lab in labs/
    that the learner does not have yet into learners/<name>/labs/. Never overwrites a file."""
    validate_name(name)
    root = Path(root)
    home = root / "learners" / name
    template = root / "learners" / "TEMPLATE" / "profile.md"
    created = False
    profile = home / "profile.md"
    if not profile.exists():
        if not template.is_file():
            raise FileNotFoundError(f"{template} is missing; restore it from git before running make start.")
        text = template.read_text(encoding="utf-8")
        text, n = re.subn(r"(?m)^name:.*$", f"name: {name}", text, count=1)
        if n != 1:
            raise ValueError(f"{template} has no 'name:' line in its front matter; restore it from git.")
        home.mkdir(parents=True, exist_ok=True)
        with open(profile, "x", encoding="utf-8") as f:  # "x": fail rather than overwrite
            f.write(text)
        created = True
    labs = home / "labs"
    labs.mkdir(parents=True, exist_ok=True)
    added, kept = [], []
    for lab in sorted((root / "labs").glob("*.ipynb")):
        target = labs / lab.name
        if target.exists():
            kept.append(lab.name)
            continue
        try:
            with open(target, "x", encoding="utf-8") as dst:
                dst.write(_copy_for_learner(lab, labs))
        except FileExistsError:  # appeared meanwhile: still never overwrite
            kept.append(lab.name)
            continue
        added.append(lab.name)
    return StartResult(home, created, added, kept)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "start":
        print("Usage: python -m course.learner start <name>   (or: make start LEARNER=<name>)")
        return 2
    try:
        result = start(argv[1].strip())
    except (ValueError, FileNotFoundError) as exc:
        print(exc)
        return 2
    rel = result.learner_dir.relative_to(ROOT) if result.learner_dir.is_relative_to(ROOT) else result.learner_dir
    if result.created_profile:
        print(f"Created {rel}/profile.md: set your language (en/es) and hardware (cpu/cuda) there.")
    else:
        print(f"Profile {rel}/profile.md already exists; left as it is.")
    try:
        load_profile(result.learner_dir / "profile.md")
    except ValueError as exc:
        print(f"Note: {exc}")
    if result.added:
        print(f"Copied {len(result.added)} lab(s) into {rel}/labs/: {', '.join(result.added)}")
    if result.kept:
        print(f"Kept your existing {len(result.kept)} lab(s) untouched: {', '.join(result.kept)}")
    if not result.added and not result.kept:
        print("There are no labs in labs/ yet; run make start again when they exist.")
    print(f"Work in {rel}/labs/ (make lab opens JupyterLab).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
