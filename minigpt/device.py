"""Which device the course runs on. Nothing else in the package hard-codes a device.

CUDA is used when present. Apple GPUs (MPS) are deliberately treated as CPU: PyTorch's MPS
allocator has no equivalent of ``torch.cuda.max_memory_allocated`` that the labs could call
a measurement, so on a Mac the labs use the CPU tracker and say so.
"""
from __future__ import annotations

import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def get_device(prefer: str | None = None, verbose: bool = True) -> torch.device:
    """CUDA when present, else CPU; ``prefer="cpu"`` forces the CPU. Prints one line saying which."""
    if prefer not in (None, "cpu", "cuda"):
        raise ValueError(f"prefer must be None, 'cpu' or 'cuda', got {prefer!r}.")
    if prefer == "cuda" and not cuda_available():
        raise RuntimeError("prefer='cuda' but PyTorch sees no CUDA GPU; use prefer=None to fall back to the CPU.")
    use_cuda = cuda_available() and prefer != "cpu"
    device = torch.device("cuda") if use_cuda else torch.device("cpu")
    if verbose:
        print(describe_device(device))
    return device


def describe_device(device: torch.device | str | None = None) -> str:
    """One line: which path runs, e.g. 'Device: CPU (no CUDA GPU found; memory is traced, not measured on a GPU)'."""
    device = torch.device(device) if device is not None else (
        torch.device("cuda") if cuda_available() else torch.device("cpu"))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"Device: CUDA GPU {props.name}, {props.total_memory / 2**30:.1f} GiB "
                f"(memory is measured with torch.cuda.max_memory_allocated)")
    why = "no CUDA GPU found" if not cuda_available() else "CPU chosen"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        why += "; the Apple GPU (MPS) is treated as CPU for measurements"
    return f"Device: CPU ({why}; memory is tracked by minigpt.memory, not measured on a GPU)"


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or one sentence saying why it cannot be used here.

    Without this, a misspelt name or a GPU that is not there surfaces from deep inside the
    model's constructor as a raw RuntimeError/AssertionError about CUDA builds.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:0' or 'meta'.") from None
    if dev.type == "cuda":
        if not cuda_available():
            raise RuntimeError(f"device {device!r} asks for a CUDA GPU but PyTorch sees none; use device='cpu' "
                               f"(or minigpt.device.get_device(), which picks what is there).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} asks for GPU {dev.index} but PyTorch sees "
                               f"{torch.cuda.device_count()}; use an index below that.")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise RuntimeError(f"device {device!r} asks for the Apple GPU but PyTorch sees none; use device='cpu'.")
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(f"device {device!r} is not one the course supports; use 'cpu', 'cuda' or 'meta'.")
    return dev
