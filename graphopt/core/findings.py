"""What a pass found, as data: the notes it renders, what it left alone and why, measurements.

Every pass fills one :class:`Findings` per run (``pass_.findings``). The runner copies it into
the pass's report record (``notes``, ``left_alone``, ``details``); the console report prints
the notes and never interprets a pass's measurements, so a pass owns how its findings read.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass
class Findings:
    """One pass run's findings.

    ``notes``: one-line findings worth a user's attention, written by the pass
    ("ONNX Runtime fuses 12 quantized nodes").
    ``left_alone``: the nodes, layers or groups the pass was asked to act on but did not,
    each with its reason (node name -> "kept float: unfused").
    ``data``: JSON-able measurements for the report file (fusion counts, budget, guard).
    """

    notes: list[str] = dataclasses.field(default_factory=list)
    left_alone: dict[str, str] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def note(self, text: str) -> None:
        if text and text not in self.notes:
            self.notes.append(text)

    def leave(self, subject: str, reason: str) -> None:
        """Record that ``subject`` was left alone because of ``reason``."""
        self.left_alone[subject] = reason

    def left_alone_note(self, what: str, unit: str = "nodes") -> str:
        """'kept in float: 3 nodes (2 unfused, 1 sensitivity)', or '' when nothing was."""
        if not self.left_alone:
            return ""
        reasons = collections.Counter(self.left_alone.values())
        listed = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        return f"{what}: {len(self.left_alone)} {unit} ({listed})"

    def __bool__(self) -> bool:
        return bool(self.notes or self.left_alone or self.data)
