"""The course's machinery, apart from the ML package ``minigpt``: exercise checks, learner profiles
and the lab header, grading, notebook execution, generating the labs from the solutions, timing
them, the theory figures (``course.docs``), lab 05's runs, the cloud-GPU path, the environment
check and the pretraining script. It imports ``minigpt``; ``minigpt`` never imports it (only the
compatibility aliases ``minigpt.checks``, ``minigpt.learner`` and ``minigpt.puzzle`` do).
See docs/ARCHITECTURE.md.

Nothing is imported here: ``python3 -m course.envcheck`` must run before torch is installed.
"""
