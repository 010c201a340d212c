"""Where training memory goes, bucket by bucket: measured (CUDA), tracked (CPU), traced
(fake tensors) and estimated (closed form). See buckets.py for the bucket definitions."""
from .buckets import BUCKETS, GB, GiB, MiB, MODEL_STATE_BUCKETS, empty_buckets, fmt_bytes, fmt_error
from .measure import MemoryReport, measure_step
from .tracker import TensorTracker
from .timeline import Timeline, memory_timeline, plot_timeline
from .estimate import Estimate, EstimateError, RunSpec  # the function: from minigpt.memory.estimate import estimate

__all__ = ["BUCKETS", "GB", "GiB", "MiB", "MODEL_STATE_BUCKETS", "empty_buckets", "fmt_bytes", "fmt_error",
           "MemoryReport", "measure_step", "TensorTracker",
           "Timeline", "memory_timeline", "plot_timeline", "Estimate", "EstimateError", "RunSpec"]
