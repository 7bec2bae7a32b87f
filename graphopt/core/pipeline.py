"""Pipeline text: parse, validate, print back.

Grammar (whitespace is free between tokens)::

    pipeline := item ("," item)*
    item     := NAME ["{" option ("," option)* "}"]      a pass, or a preset name
              | "repeat<" INT ">(" pipeline ")"           run until nothing changes, at most N times
    option   := KEY "=" (scalar | "[" [scalar ("," scalar)*] "]")
    scalar   := text up to , } ] or a "double-quoted string"

Presets expand to their text when parsed, and the printed form shows every pass with its
non-default options, so ``parse(str(p)) == p`` and a report's pipeline repeats the run.
Errors point at the offending token with a caret.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Union

from graphopt.core import registry
from graphopt.core.pass_base import GraphoptPass, PassContext
from graphopt.errors import PipelineError

PRESETS: dict[str, str] = {
    "cleanup": (
        "remove-initializer-inputs,repeat<4>(lift-constants,capture-loop-invariants,"
        "fold-constants,eliminate-identity,"
        "fold-batchnorm,fuse-hardswish,eliminate-common-subexpressions,deduplicate-initializers,"
        "eliminate-dead-code,infer-shapes),sort-topologically"
    ),
    # qdq-insert picks types and placement for the CPU it runs on (graphopt.runtime.target), checks
    # what ONNX Runtime fuses, and (guard) keeps float whatever int8 does not make faster.
    # avoid-slow-fusions keeps ORT from fused kernels that are slower on this CPU (timed);
    # fuse-qdq-sibling-matmuls runs the q/k/v projections as one GEMM; fuse-qdq-matmul-bias
    # writes the int8 kernel with the bias ORT leaves as a separate Add; quantize-recurrent
    # runs LSTMs as ORT's int8 kernel where that times faster; quantize-attention runs the
    # fused Attention's packed q/k/v projection as ORT's QAttention where that does.
    # fuse-ort-kernels writes the exporters' attention/LayerNorm/GELU idioms ORT does not
    # fuse as its kernels (proven, timed); before fold-attention-biases, whose folds would
    # hide the biases it packs.
    "cpu-fp32": "cleanup,fuse-ort-kernels,fold-attention-biases,avoid-slow-fusions",
    "cpu-int8": (
        "cleanup,fuse-ort-kernels,fold-attention-biases,move-stride-to-channels,"
        "qdq-insert{target=cpu,guard=true,smooth=0.7},quantize-attention,quantize-recurrent,"
        "fuse-qdq-sibling-matmuls,fuse-qdq-matmul-bias,avoid-slow-fusions,sort-topologically"
    ),
    "cuda-int8": "cleanup,qdq-insert{target=cuda},sort-topologically",
}
PRESET_DOCS: dict[str, str] = {
    "cleanup": "weights out of the inputs and Loop state, lossless cleanups to a fixed point, "
    "then shape inference and a topological sort",
    "cpu-fp32": "cleanup, then ORT's attention/LayerNorm/GELU kernels and the graph form that "
    "time fastest here",
    "cpu-int8": "cleanup, then static int8 QDQ placed for ONNX Runtime's CPU EP on this CPU, "
    "fused attention and LSTMs as its int8 kernels",
    "cuda-int8": "cleanup, then symmetric static int8 QDQ for the CUDA/TensorRT EPs",
}
MAX_REPEAT = 100


@dataclasses.dataclass(frozen=True)
class PassStep:
    """One pass with its validated options."""

    name: str
    options: Any

    @property
    def pass_class(self) -> type[GraphoptPass]:
        return registry.get_pass(self.name)

    def build(self, context: PassContext | None = None) -> GraphoptPass:
        return self.pass_class(self.options, context)

    def __str__(self) -> str:
        parts = []
        for f, _ in registry.option_fields(type(self.options)):
            value = getattr(self.options, f.name)
            if value != registry.default_of(f):
                parts.append(f"{f.name}={registry.format_value(value)}")
        return self.name + ("{" + ",".join(parts) + "}" if parts else "")


@dataclasses.dataclass(frozen=True)
class RepeatGroup:
    """Passes run in turn until a whole round changes nothing, at most ``times`` rounds."""

    times: int
    items: tuple[Item, ...]

    def __str__(self) -> str:
        return f"repeat<{self.times}>(" + ",".join(str(i) for i in self.items) + ")"


Item = Union[PassStep, RepeatGroup]  # noqa: UP007 (a runtime alias on Python 3.10)


@dataclasses.dataclass(frozen=True)
class Pipeline:
    items: tuple[Item, ...]

    def __str__(self) -> str:
        return ",".join(str(i) for i in self.items)

    def steps(self) -> Iterator[PassStep]:
        """Every pass step, groups flattened (for listing, not for running)."""

        def walk(items: tuple[Item, ...]) -> Iterator[PassStep]:
            for item in items:
                if isinstance(item, RepeatGroup):
                    yield from walk(item.items)
                else:
                    yield item

        return walk(self.items)

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        return parse(text)


def _caret(text: str, pos: int, width: int = 1) -> str:
    return f"\n  {text}\n  {' ' * pos}{'^' * max(1, width)}"


class _Parser:
    def __init__(self, text: str, preset_stack: tuple[str, ...] = ()) -> None:
        self.text = text
        self.pos = 0
        self.preset_stack = preset_stack

    def error(self, message: str, pos: int | None = None, width: int = 1) -> PipelineError:
        p = self.pos if pos is None else pos
        where = f" at column {p + 1}" if self.text else ""
        return PipelineError(f"pipeline: {message}{where}:" + _caret(self.text, p, width))

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            found = f"'{self.peek()}'" if self.peek() else "end of text"
            raise self.error(f"expected '{ch}', found {found}")
        self.pos += 1

    def name(self) -> tuple[str, int]:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (
            self.text[self.pos].isalnum() or self.text[self.pos] in "-_"
        ):
            self.pos += 1
        if start == self.pos:
            found = f"'{self.text[self.pos]}'" if self.pos < len(self.text) else "end of text"
            raise self.error(f"expected a pass name, found {found}")
        return self.text[start : self.pos], start

    def pipeline(self, closing: str = "") -> list[Item]:
        items: list[Item] = []
        while True:
            items.extend(self.item())
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                continue
            if ch == closing:
                return items
            if not ch and closing:
                raise self.error(f"expected '{closing}', found end of text")
            raise self.error(f"unexpected '{ch}'" if ch else "unexpected end of text")

    def item(self) -> list[Item]:
        name, start = self.name()
        if name == "repeat":
            return [self.repeat(start)]
        if name in PRESETS:
            if self.peek() == "{":
                raise self.error(f"preset '{name}' takes no options", self.pos)
            if name in self.preset_stack:
                raise self.error(f"preset '{name}' refers to itself", start, len(name))
            inner = _Parser(PRESETS[name], (*self.preset_stack, name))
            try:
                return inner.pipeline()
            except PipelineError as exc:  # a broken preset is a bug, but say where
                raise self.error(
                    f"preset '{name}' is invalid: {exc.message}", start, len(name)
                ) from None
        if not registry.has_pass(name):
            known = sorted(registry.all_passes()) + sorted(PRESETS)
            close = registry.close_names(name, known)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.error(f"unknown pass '{name}'{hint}", start, len(name))
        raw: dict[str, tuple[str | list[str], int, int]] = {}
        if self.peek() == "{":
            self.pos += 1
            raw = self.options(name)
        return [self.build_step(name, raw)]

    def repeat(self, start: int) -> RepeatGroup:
        if self.peek() != "<":
            raise self.error("expected 'repeat<N>(...)'", start, 6)
        self.pos += 1
        self.skip_ws()
        num_start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isdigit():
            self.pos += 1
        digits = self.text[num_start : self.pos]
        if not digits or not 1 <= int(digits) <= MAX_REPEAT:
            raise self.error(f"repeat count must be an integer from 1 to {MAX_REPEAT}", num_start)
        self.expect(">")
        self.expect("(")
        items = self.pipeline(closing=")")
        self.expect(")")
        return RepeatGroup(int(digits), tuple(items))

    def scalar(self, stops: str) -> str:
        self.skip_ws()
        if self.peek() == '"':
            self.pos += 1
            out = []
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                raise self.error("unterminated string")
            self.pos += 1
            return "".join(out)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            self.pos += 1
        value = self.text[start : self.pos].strip()
        if not value:
            raise self.error("expected a value", start)
        return value

    def options(self, pass_name: str) -> dict[str, tuple[str | list[str], int, int]]:
        out: dict[str, tuple[str | list[str], int, int]] = {}
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            key, kstart = self.name()
            if key in out:
                raise self.error(f"{pass_name}: option '{key}' given twice", kstart, len(key))
            self.expect("=")
            self.skip_ws()
            vstart = self.pos
            value: str | list[str]
            if self.peek() == "[":
                self.pos += 1
                value = []
                if self.peek() == "]":
                    self.pos += 1
                else:
                    while True:
                        value.append(self.scalar(",]{}"))
                        if self.peek() == ",":
                            self.pos += 1
                            continue
                        self.expect("]")
                        break
            else:
                value = self.scalar(",{}[]")
            out[key] = (value, kstart, vstart)
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                continue
            if ch == "}":
                self.pos += 1
                return out
            raise self.error("expected ',' or '}' after an option value")

    def build_step(self, name: str, raw: dict[str, tuple[str | list[str], int, int]]) -> PassStep:
        cls = registry.get_pass(name)
        fields = {f.name: (f, tp) for f, tp in registry.option_fields(cls.Options)}
        kwargs = {}
        for key, (value, kstart, vstart) in raw.items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise self.error(
                    f"{name}: unknown option '{key}' (options: {known})", kstart, len(key)
                )
            _, tp = fields[key]
            try:
                kwargs[key] = registry.convert_value(tp, value)
            except ValueError as exc:
                shown = value if isinstance(value, str) else "[...]"
                raise self.error(
                    f"{name}: option '{key}'={shown}: {exc}", vstart, len(shown)
                ) from None
        try:
            options = cls.Options(**kwargs)
        except (ValueError, TypeError) as exc:
            raise self.error(f"{name}: {exc}", self.pos - 1) from None
        return PassStep(name, options)


def parse(text: str) -> Pipeline:
    """Parse pipeline text into validated steps; raises :class:`PipelineError`."""
    if not text or not text.strip():
        raise PipelineError("pipeline: the pipeline is empty")
    parser = _Parser(text)
    items = parser.pipeline()
    return Pipeline(tuple(items))


def describe_presets() -> dict[str, str]:
    return {name: PRESETS[name] for name in sorted(PRESETS)}
