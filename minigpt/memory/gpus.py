"""The GPUs the course talks about: what each one reports, and what a process costs before any tensor.

Every figure here comes from a cited public source (its ``sources``); none is measured by this package.
Units: MiB = 2**20 bytes, GiB = 2**30 bytes. A "16 GB" T4 shows 15360 MiB total in nvidia-smi (15.0 GiB),
and torch, which reads ``cudaDeviceProp.totalGlobalMem``, reports less in its out-of-memory message:
14.56 to 14.75 GiB in the cited reports (``torch_total_gib``).

Three things a process holds that no tensor accounts for:

- the CUDA context: driver state plus the kernels loaded so far, seen by NVML (nvidia-smi) but not by
  ``torch.cuda.memory_allocated``. Since CUDA 11.7 kernels load on first use (``CUDA_MODULE_LOADING=LAZY``,
  which torch sets when unset since 1.13, pytorch/pytorch#86509), so the context is smaller and grows as
  new kernels run. ``CONTEXT_MEASUREMENTS`` lists measured values; no cited measurement exists yet for
  several (card, torch, CUDA) combinations, and ``context_range`` then returns None.
- the cuBLAS workspace: allocated through the caching allocator on the first matmul of each
  (handle, stream), so it *is* counted by ``memory_allocated``; its size is ``cublas_workspace_bytes``.
- cuDNN handles (convolutions; the course's transformers run none): no cited size is recorded here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

MiB = 2 ** 20

# Totals as nvidia-smi prints them ("Memory-Usage" column, MiB) on each card, one PR listing six of them.
_MODAL = ("github.com/modal-labs/modal-client/pull/2797 (nvidia-smi totals on Modal's cards: H100 81559MiB, "
          "A100 80GB 81920MiB, A100 40GB 40960MiB, A10 23028MiB, L4 23034MiB, T4 15360MiB)")


@dataclass(frozen=True)
class GpuSpec:
    """One card: its name, compute capability and memory as the driver reports it."""
    name: str
    aliases: tuple[str, ...]           # lower-case names ``gpu()`` accepts
    sm: tuple[int, int]                # compute capability (major, minor)
    smi_total_mib: int                 # nvidia-smi's total, MiB (NVML's FB memory total)
    smi_sources: tuple[str, ...]
    # torch's "total capacity" in its OOM message (cudaDeviceProp.totalGlobalMem, GiB), (low, high) over the
    # cited reports (they disagree); None where no report was found
    torch_total_gib: Optional[tuple[float, float]] = None
    torch_total_sources: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        """nvidia-smi's total in bytes (MiB * 2**20)."""
        return self.smi_total_mib * MiB

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic: sm_80 (Ampere) and newer (see gpu_check.amp_precision)."""
        return self.sm >= (8, 0)

    @property
    def sm_name(self) -> str:
        return f"sm_{self.sm[0]}{self.sm[1]}"


GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("Tesla T4", ("t4", "tesla-t4"), (7, 5), 15360,
            (_MODAL, "github.com/robbyant-research/MagicQuill/issues/57 (nvidia-smi: 3MiB / 15360MiB, Tesla T4)"),
            (14.56, 14.75),
            ("github.com/Zheng-Chong/CatVTON/issues/133 (OOM: 'total capacity of 14.56 GiB', Tesla T4, GCP)",
             "github.com/AlphaGPU/leetgpu-challenges/issues/52 (OOM: 'total capacity of 14.56 GiB', Tesla T4)",
             "github.com/hpcaitech/Open-Sora/issues/697 (OOM: 'total capacity of 14.75 GiB', Colab T4)")),
    GpuSpec("Tesla V100-SXM2-16GB", ("v100", "v100-16gb", "tesla-v100"), (7, 0), 16160,
            ("huggingface/transformers docs/source/en/model_memory_anatomy.md @249ef816 (nvidia-smi: "
             "2631MiB / 16160MiB, Tesla V100-SXM2)",
             "github.com/huggingface/text-generation-inference/issues/533 (nvidia-smi: 0MiB / 16160MiB)")),
    GpuSpec("NVIDIA A10G", ("a10g",), (8, 6), 23028,
            ("github.com/NVIDIA/DCGM/issues/232 (nvidia-smi: 8722MiB / 23028MiB, NVIDIA A10G)",
             _MODAL + " (the A10 row; the A10G shows the same total)")),
    GpuSpec("NVIDIA L4", ("l4",), (8, 9), 23034,
            (_MODAL, "github.com/NVIDIA/TensorRT-LLM/issues/2398 (nvidia-smi: 7086MiB / 23034MiB, NVIDIA L4)")),
    GpuSpec("NVIDIA A100-SXM4-40GB", ("a100", "a100-40gb", "a100-40"), (8, 0), 40960,
            (_MODAL,),
            (39.50, 39.50),
            ("github.com/TianheWu/CoSeR/issues/10 (OOM on 'one A100': 'total capacity of 39.50 GiB')",)),
    GpuSpec("NVIDIA A100-SXM4-80GB", ("a100-80gb", "a100-80"), (8, 0), 81920, (_MODAL,),
            (79.14, 79.25),
            ("github.com/lianqi1008/Control-GIC/issues/6 (OOM on 'a single NVIDIA A100 ... 80GB': "
             "'total capacity of 79.14 GiB')",
             "github.com/levihsu/OOTDiffusion/issues/235 (OOM on an A100: '79.25 GiB total capacity'; "
             "SXM or PCIe not stated)")),
    GpuSpec("NVIDIA H100 80GB HBM3", ("h100", "h100-80gb", "h100-sxm"), (9, 0), 81559,
            (_MODAL, "github.com/NVIDIA/nccl/issues/1264 (nvidia-smi: 0MiB / 81559MiB, NVIDIA H100 80GB HBM3)")),
)


def gpu(name: str) -> GpuSpec:
    """The card called ``name`` (case and spaces/underscores ignored: "T4", "a100-80gb", "H100")."""
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    for spec in GPUS:
        if key in spec.aliases or key == spec.name.lower().replace(" ", "-"):
            return spec
    known = ", ".join(s.aliases[0] for s in GPUS)
    raise ValueError(f"Unknown GPU {name!r}: pass one of {known} (e.g. gpu('t4')).")


# --- cuBLAS workspace -----------------------------------------------------------------------------

# aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize (the version at the torch 2.13-era
# API: setChosenWorkspaceSize exists, as in the installed torch's CUDAContextLight.h): default
# ":4096:2:16:8" = 4096 KiB x 2 + 16 KiB x 8 = 8519680 bytes; 32 MiB (4096 KiB x 8) on Hopper
# (major 9). PR #175344 (2026-02) extended 32 MiB to majors 10 and 12, PR #182669 proposed reverting
# that; for the cards above only major 9 matters. CUBLAS_WORKSPACE_CONFIG=":SIZE:COUNT[:SIZE:COUNT]"
# overrides it: the sum of SIZE KiB x COUNT. In that version the workspace comes from the caching
# allocator (setWorkspaceForHandle), so memory_allocated counts it; a later version (not torch 2.13, whose
# headers declare no isCUDABlasWorkspaceCachingEnabled) leaves it to cuBLAS unless
# TORCH_CUBLAS_WORKSPACE_CACHE=1. The cuBLASLt workspace (1024 KiB default) shares this
# allocation when TORCH_CUBLASLT_UNIFIED_WORKSPACE is on (the open-source default, torch/backends/cuda
# blas_workspace_size docstring).
CUBLAS_SOURCES = (
    "pytorch/pytorch aten/src/ATen/cuda/CublasHandlePool.cpp parseChosenWorkspaceSize "
    "(':4096:2:16:8 default, 32MiB for Hopper')",
    "github.com/pytorch/pytorch/issues/95668 (measured: torch.cuda.memory_allocated() = 8519680 after one "
    "nn.Linear forward, NVIDIA A10G, torch 2.0.0.dev20230227+cu118)",
)


def cublas_workspace_bytes(spec: GpuSpec, config: Optional[str] = None) -> int:
    """Bytes of one cuBLAS workspace (per handle and stream) on ``spec`` with torch's default, or with
    ``config`` written as CUBLAS_WORKSPACE_CONFIG (":4096:8", ":16:8", ...)."""
    if config is None:
        return 4096 * 8 * 1024 if spec.sm[0] == 9 else 4096 * 1024 * 2 + 16 * 1024 * 8
    parts = config.strip(":").split(":")
    if len(parts) % 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"config must look like ':4096:8' or ':4096:2:16:8' (KiB:count pairs), got {config!r}.")
    return sum(int(size) * 1024 * int(count) for size, count in zip(parts[::2], parts[1::2]))


# --- CUDA context ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContextMeasurement:
    """What one public source measured a process holding after its first CUDA call."""
    card: str
    sm: Optional[tuple[int, int]]
    torch: str                  # torch version as stated ("?" where the source does not say)
    cuda: str
    loading: str                # "eager" (CUDA < 11.7 or CUDA_MODULE_LOADING=EAGER), "lazy"
    low_mib: float
    high_mib: float
    kind: str                   # "nvml" (nvidia-smi / memory.used) or "cudaMemGetInfo" (total - free)
    what: str                   # the call that created the context, and what the number includes
    sources: tuple[str, ...]


CONTEXT_MEASUREMENTS: tuple[ContextMeasurement, ...] = (
    ContextMeasurement("Tesla V100-SXM2-16GB", (7, 0), "?", "driver 460.91.03, CUDA 11.2", "eager", 1343, 1343,
                       "nvml", "torch.ones((1, 1)).to('cuda'); GPU memory used before: 0 MB",
                       ("huggingface/transformers docs/source/en/model_memory_anatomy.md @249ef816 "
                        "(print_gpu_utilization: nvmlDeviceGetMemoryInfo().used // 1024**2)",)),
    ContextMeasurement("Titan V", (7, 0), "1.3", "10.x", "eager", 1007.25, 1007.25, "nvml",
                       "a 2x3 float tensor .to('cuda'): 1008.1875 MB after - 0.9375 MB before (includes one "
                       "2 MiB caching-allocator block)", ("github.com/pytorch/pytorch/issues/28394",)),
    ContextMeasurement("GeForce RTX 2080 Ti", (7, 5), "?", "?", "eager", 730, 730, "nvml",
                       "torch.Tensor([1, 2]).to('cuda') then nvidia-smi (2020, before lazy loading existed)",
                       ("github.com/pytorch/pytorch/issues/37664",)),
    ContextMeasurement("GeForce RTX 3090", (8, 6), "?", "driver 455.23.04, CUDA 11.1", "eager", 1001, 1001,
                       "nvml", "torch.rand(100, 100).cuda()", ("github.com/pytorch/pytorch/issues/54564",)),
    ContextMeasurement("2x GeForce RTX 3090", (8, 6), "2.7.1+cu128", "12.8", "lazy", 256, 256, "nvml",
                       "an idle server process holding a context, no model loaded",
                       ("github.com/invoke-ai/InvokeAI/issues/9413",)),
    ContextMeasurement("RTX 6000 Ada", (8, 9), "2.10.0+cu130", "13.0", "lazy", 426, 426, "nvml",
                       "torch.cuda.mem_get_info(0) only (creates the context, loads no torch kernel)",
                       ("github.com/unslothai/unsloth-zoo/pull/1053",)),
    ContextMeasurement("(not stated)", None, "1.13 release branch", "11.7", "lazy", 287047680 / MiB,
                       666632192 / MiB, "cudaMemGetInfo",
                       "torch.randn(20, 16, 50, 100).cuda(): 287,047,680 B lazy vs 666,632,192 B with "
                       "CUDA_MODULE_LOADING=DEFAULT (eager then); includes the 6.4 MB tensor",
                       ("github.com/pytorch/pytorch/pull/86509",)),
)


def context_range(spec: GpuSpec, loading: str = "lazy") -> Optional[tuple[int, int]]:
    """(low, high) bytes of the CUDA context measured on cards of ``spec``'s compute capability with
    that ``loading`` ("lazy" or "eager"); None when no cited measurement exists (then say so, never guess)."""
    if loading not in ("lazy", "eager"):
        raise ValueError(f"loading must be 'lazy' or 'eager', got {loading!r}.")
    rows = [m for m in CONTEXT_MEASUREMENTS if m.sm == spec.sm and m.loading == loading]
    if not rows:
        return None
    return int(min(m.low_mib for m in rows) * MiB), int(max(m.high_mib for m in rows) * MiB)


# --- which attention kernel -----------------------------------------------------------------------

SDPA_SOURCE = ("pytorch/pytorch aten/src/ATen/native/transformers/cuda/sdp_utils.cpp @001f694a "
               "(select_sdp_backend, can_use_flash_attention, can_use_mem_efficient_attention)")
_HALF = (torch.float16, torch.bfloat16)


def _gemm_alignment(sm: tuple[int, int], dtype: torch.dtype) -> int:
    # sdp_utils.cpp minimum_gemm_alignment: tensor cores on sm_80+, or sm_70+ in half precision
    half = dtype in _HALF
    use_tc = sm[0] >= 8 or (sm[0] >= 7 and half)
    align = 4 if sm[0] >= 8 else 1
    return max(align, 128 // (16 if half else 32)) if use_tc else align


def sdpa_backend(spec: GpuSpec, dtype: torch.dtype, head_dim: int, has_mask: bool = False,
                 dropout: float = 0.0, cudnn_version: Optional[int] = None) -> str:
    """The kernel F.scaled_dot_product_attention runs in training on ``spec``: "flash", "efficient",
    "math" (or "cudnn", only when ``cudnn_version`` (e.g. 91501) says cuDNN attention is preferred).

    Follows sdp_utils.cpp (SDPA_SOURCE): the default order is flash, memory-efficient, math (the installed
    torch 2.13 reports the same: torch._C._get_sdp_priority_order() starts FLASH, EFFICIENT, MATH); cuDNN
    goes first only when check_prefer_cudnn_attention holds (cuDNN > 9.15.0 on sm_90 / sm_10x). Inputs are
    dense 4-D (B, H, T, hd) tensors with q, k, v of one head_dim; nested tensors are not modelled.
    On an H100 this matters: cuDNN attention is on by default for sm_90 since torch 2.9
    (pytorch/pytorch#162073) once the runtime cuDNN is new enough, so with a wheel that ships cuDNN
    > 9.15.0 an H100 runs "cudnn", not "flash"; pass the runtime's torch.backends.cudnn.version().
    The CPU simulation follows this choice inside ``cuda_rules.on_card(spec)``, the estimator with ``gpu=``."""
    if head_dim <= 0:
        raise ValueError(f"head_dim must be a positive integer, got {head_dim}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    sm = spec.sm
    # check_prefer_cudnn_attention + check_cudnn_tensor_shapes/dropout (the common cases only)
    if (cudnn_version is not None and cudnn_version > 91500 and sm[0] in (9, 10) and dtype in _HALF
            and head_dim % 8 == 0 and head_dim <= 128 and dropout * 16 == int(dropout * 16)):
        return "cudnn"
    # can_use_flash_attention: check_for_attn_mask, check_head_dim_size_flash (<= 256),
    # check_flash_attention_hardware_support [sm80, sm121], check_dtypes_low_precision (fp16/bf16),
    # check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89_or_120 (training)
    flash = (not has_mask and head_dim <= 256 and (8, 0) <= sm <= (12, 1) and dtype in _HALF)
    if flash and ((8, 6) <= sm <= (8, 9) or (12, 0) <= sm <= (12, 1)):
        flash = head_dim <= 192 or (dropout == 0.0 and head_dim > 224)
    if flash:
        return "flash"
    # can_use_mem_efficient_attention: hardware [sm50, sm121], last dim divisible by the gemm alignment,
    # dtypes {fp16, fp32} below sm_80 and {fp16, fp32, bf16} from sm_80; masks and dropout supported
    ok_dtypes = (torch.float16, torch.float32, torch.bfloat16) if sm[0] >= 8 else (torch.float16, torch.float32)
    if (5, 0) <= sm <= (12, 1) and head_dim % _gemm_alignment(sm, dtype) == 0 and dtype in ok_dtypes:
        return "efficient"
    return "math"  # select_sdp_backend: math is enabled by default (it saves the T x T matrix)
