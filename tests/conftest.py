"""The tests mirror the layout: tests/core (minigpt's model, LoRA, NF4, training, data), tests/memory
(minigpt.memory), tests/course (the course machinery, the notebooks and the theory files).

Every test imports the repository's root as ``from minigpt.paths import ROOT``.
"""
import matplotlib

matplotlib.use("Agg")  # no windows in unit tests (the notebooks keep the inline backend)
