"""``python -m minigpt.memory estimate|measure|compare ...`` (see cli.py, or run with --help)."""
import sys

from .cli import main

sys.exit(main())
