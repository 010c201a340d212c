"""Compatibility: learner profiles and the lab header live in ``course/learner.py``.

Learners' copies of the labs (``learners/*/labs/``, which ``make start`` never overwrites) import
``minigpt.learner``; this module *is* ``course.learner`` (one module object, so its state is shared).
"""
import sys

from course import learner as _learner

sys.modules[__name__] = _learner
