"""The pass base every graphopt pass derives from.

A graphopt pass is an onnx_ir in-place pass plus what a pipeline of lossy and lossless passes
needs: a registered name, typed options, a declared tolerance the runner verifies against,
counters of what it did, provenance on the nodes it creates, and idempotence (``run`` reports
whether it changed anything, so a second run reports ``modified=False``).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import onnx_ir as ir

from graphopt.accuracy.tolerance import Tolerance
from graphopt.core.findings import Findings

PROVENANCE_KEY = "pkg.graphopt.pass"


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """This pass takes no options."""


@dataclasses.dataclass
class PassContext:
    """What passes may need from outside the model: the target, data, and run settings.

    Passes declare what they need (``needs``); the runner fills it in or fails early.
    """

    target: str = "cpu"
    data: Any = None  # graphopt.inputs.data.Samples when the user gave DATA
    seed: int = 0
    # accuracy budget (graphopt.accuracy.budget) for lossy passes without their own
    budget: str = ""
    # Sizes of the inputs' dynamic dims that the model runs with (graphopt.inputs.probe), by
    # graphopt.inputs.data.dim_key: what a pass uses when it makes random inputs of its own.
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    # A file or folder of calibration statistics (graphopt.calib.cache) shared by the runs of
    # one model on the same DATA (graphopt tune builds many int8 candidates from one model).
    calib_cache: str | None = None
    # The model as it was before the pipeline's first lossy pass (a graphopt.runtime.Snapshot),
    # set by the runner: what ``reconstruct`` fits the changed layers back to.
    reference: Any = None


class GraphoptPass(ir.passes.InPlacePass, abc.ABC):
    """Base of every graphopt pass.

    Subclasses set ``name`` (kebab-case), ``Options`` (a frozen dataclass whose fields each
    carry a one-line doc in ``metadata['doc']``), ``tolerance``, and implement :meth:`run`.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    tolerance: ClassVar[Tolerance] = Tolerance.exact()
    needs: ClassVar[frozenset[str]] = frozenset()  # e.g. {"data"}
    #: the lowest ai.onnx opset the pass can act at; the runner converts older models first
    min_opset: ClassVar[int] = 0
    #: the pass acts on weights that are constant initializers; the runner first turns
    #: Constant-node weights (Paddle) and weights listed as inputs (PyTorch 1.x) into them
    constant_weights: ClassVar[bool] = False
    #: the pass also rewrites inside If/Loop/Scan bodies (its decline reasons then do not
    #: say that nodes there are left alone)
    enters_subgraphs: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def __init__(self, options: Any = None, context: PassContext | None = None) -> None:
        self.options = options if options is not None else self.Options()
        self.context = context if context is not None else PassContext()
        self.stats: collections.Counter[str] = collections.Counter()
        # what the last run found: notes, what it left alone and why, measurements
        self.findings = Findings()
        # why the last run left the model unchanged (console and report), see decline()
        self.declined = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"

    @abc.abstractmethod
    def run(self, model: ir.Model) -> bool:
        """Transform ``model`` in place; return whether anything changed."""

    def required_opset(self, model: ir.Model) -> int:
        """The ai.onnx opset this run needs on ``model`` (``min_opset`` unless the options or
        the model say otherwise, e.g. 0 where there is nothing the pass would act on)."""
        return self.min_opset

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = collections.Counter()
        self.findings = Findings()
        self.declined = ""
        modified = bool(self.run(model))
        for text in self.render_notes():
            self.findings.note(text)
        return ir.passes.PassResult(model, modified)

    @property
    def details(self) -> dict[str, Any]:
        """The run's JSON-able measurements (``findings.data``), written under the pass's
        record in the report file."""
        return self.findings.data

    @details.setter
    def details(self, value: dict[str, Any]) -> None:
        self.findings.data = value

    def render_notes(self) -> list[str]:
        """One-line findings of the last run worth a user's attention, rendered by the pass
        from its own measurements after :meth:`run` (the report prints them as they are)."""
        return []

    def skip_counts(self) -> str:
        """'2 weight_not_constant, 1 excluded': the ``skipped:<why>`` counters, for reasons."""
        items = sorted(
            (k.split(":", 1)[1], n)
            for k, n in self.stats.items()
            if ":" in k and k.startswith("skipped:")
        )
        return ", ".join(f"{n} {why}" for why, n in items)

    def decline_no_target(
        self, what: str, model: ir.Model, ops: Iterable[str], skipped: str | None = None
    ) -> bool:
        """Decline because no node is ``what``, saying what was skipped (the ``skipped:``
        counters unless given), the fix for weights that are not initializers yet, and the
        nodes inside If/Loop bodies the pass does not enter."""
        from graphopt import ir as gir

        skipped = self.skip_counts() if skipped is None else skipped
        reason = f"no {what}" + (f" (skipped: {skipped})" if skipped else "")
        if "weight_is_graph_input" in skipped or "weight_is_constant_node" in skipped:
            reason += f"; {gir.CLEANUP_FIRST}"
        inner = 0 if self.enters_subgraphs else gir.nodes_in_subgraphs(model, frozenset(ops))
        if inner:
            reason += f"; {inner} {'/'.join(sorted(set(ops)))} inside If/Loop bodies left alone"
        return self.decline(reason)

    def count_scope(self, scope: str) -> None:
        """Count one rewrite in ``scope`` (a label of :func:`graphopt.ir.iter_scopes`): those
        inside If/Loop/Scan bodies as ``in_subgraphs`` and per body in ``details["subgraphs"]``,
        so the report shows where in the control flow the pass acted."""
        if scope == "main":
            return
        self.count("in_subgraphs")
        inner = self.details.setdefault("subgraphs", {})
        inner[scope] = inner.get(scope, 0) + 1

    def subgraph_notes(self, what: str) -> list[str]:
        """``["quantized inside If/Loop/Scan bodies: 2 in Loop_0/body"]`` after
        :meth:`count_scope` counted any."""
        inner = self.details.get("subgraphs")
        if not inner:
            return []
        where = ", ".join(f"{n} in {scope}" for scope, n in inner.items())
        return [f"{what} inside If/Loop/Scan bodies: {where}"]

    def leave(self, node: ir.Node, reason: str) -> None:
        """Leave ``node`` as it is because of ``reason``: counted (``skipped:<reason>``) and
        recorded in the findings under the node's name."""
        self.count(f"skipped:{reason}")
        self.findings.leave(node.name or node.op_type, reason)

    def left_alone_notes(self, what: str) -> list[str]:
        """``["left in float: 3 nodes (2 excluded, 1 weight_rank)"]`` after a run that acted;
        nothing after one that declined (its reason says it)."""
        note = self.findings.left_alone_note(what)
        return [note] if note and not self.declined else []

    def decline(self, reason: str) -> bool:
        """Leave the model unchanged because of ``reason``, which the console and the report
        show: a pass that was asked to act never does nothing silently. Returns False, so a
        pass can ``return self.decline("no MatMul with a constant weight")``."""
        self.declined = reason
        return False

    def mark(self, node: ir.Node) -> ir.Node:
        """Record that this pass created ``node`` (provenance in its metadata)."""
        node.metadata_props[PROVENANCE_KEY] = self.name
        return node

    def count(self, key: str, n: int = 1) -> None:
        if n:
            self.stats[key] += n
