"""``python -m graphopt.cli``."""

from graphopt.cli import entry

entry()
