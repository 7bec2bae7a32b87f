"""Pipeline text: parsing, printing, presets, repeat groups, and errors that point at tokens."""

from __future__ import annotations

import dataclasses
from typing import Literal

import onnx_ir as ir
import pytest

from graphopt.core import registry
from graphopt.core.pass_base import GraphoptPass
from graphopt.core.pipeline import PRESETS, PassStep, RepeatGroup, parse
from graphopt.errors import PipelineError


def test_round_trip_of_presets_options_and_groups() -> None:
    text = (
        "cleanup, fold-constants{ input_size_limit = 4096 , shape_inference=false },"
        "repeat<3>(eliminate-identity,repeat<2>(eliminate-dead-code))"
    )
    p = parse(text)
    printed = str(p)
    assert "cleanup" not in printed  # presets expand
    assert printed.startswith(PRESETS["cleanup"])
    assert "fold-constants{input_size_limit=4096,shape_inference=false}" in printed
    assert printed.endswith("repeat<3>(eliminate-identity,repeat<2>(eliminate-dead-code))")
    again = parse(printed)
    assert again == p
    assert str(again) == printed


def test_options_are_typed_and_defaults_are_not_printed() -> None:
    p = parse("fold-constants{input_size_limit=0x10,output_size_limit=1048576}")
    (step,) = p.items
    assert isinstance(step, PassStep)
    assert step.options.input_size_limit == 16
    assert step.options.shape_inference is True
    # output_size_limit equals a non-default value, input_size_limit printed in decimal
    assert str(step) == "fold-constants{input_size_limit=16,output_size_limit=1048576}"
    assert str(parse("fold-constants{shape_inference=true}")) == "fold-constants"


def test_repeat_group_structure() -> None:
    p = parse("repeat<5>(eliminate-identity,eliminate-dead-code)")
    (group,) = p.items
    assert isinstance(group, RepeatGroup)
    assert group.times == 5
    assert [s.name for s in p.steps()] == ["eliminate-identity", "eliminate-dead-code"]


@pytest.mark.parametrize(
    ("text", "words", "column"),
    [
        ("fold-constant", ["unknown pass 'fold-constant'", "did you mean fold-constants"], 1),
        ("cleanup,nope", ["unknown pass 'nope'"], 9),
        ("fold-constants{bogus=1}", ["fold-constants: unknown option 'bogus'", "options:"], 16),
        ("fold-constants{input_size_limit=abc}", ["expected an integer"], 33),
        ("infer-shapes{strict=maybe}", ["expected true or false"], 21),
        ("fold-constants{input_size_limit=-1}", ["size limits must be >= 0"], None),
        ("fold-constants{input_size_limit=1,input_size_limit=2}", ["given twice"], 35),
        ("cleanup,", ["expected a pass name, found end of text"], 9),
        ("cleanup{x=1}", ["preset 'cleanup' takes no options"], 8),
        ("repeat<0>(cleanup)", ["repeat count must be an integer from 1 to"], 8),
        ("repeat<2>(cleanup", ["expected ')'"], None),
        ("repeat(cleanup)", ["expected 'repeat<N>(...)'"], 1),
        ("fold-constants{input_size_limit=}", ["expected a value"], 33),
        ('fold-constants{input_size_limit="1', ["unterminated string"], None),
        ("cleanup)", ["unexpected ')'"], 8),
    ],
)
def test_errors_point_at_the_offending_token(
    text: str, words: list[str], column: int | None
) -> None:
    with pytest.raises(PipelineError) as info:
        parse(text)
    msg = str(info.value)
    for w in words:
        assert w in msg
    assert text in msg and "^" in msg
    if column is not None:
        assert f"at column {column}:" in msg
        caret_line = msg.splitlines()[-1]
        assert caret_line.index("^") - 2 == column - 1


def test_empty_pipeline_is_an_error() -> None:
    with pytest.raises(PipelineError, match="empty"):
        parse("  ")


# ------------------------------------------------------------------ registry contracts


@dataclasses.dataclass(frozen=True)
class _ToyOptions:
    mode: Literal["a", "b"] = registry.option("a", "which mode")
    names: list[str] = registry.option([], "node names")
    budget: str = registry.option("cosine>=0.99", "an accuracy budget")
    limit: float | None = registry.option(None, "optional limit")

    def __post_init__(self) -> None:
        if self.mode == "b" and not self.names:
            raise ValueError("mode=b needs names")


class _ToyPass(GraphoptPass):
    name = "toy-test-pass"
    Options = _ToyOptions

    def run(self, model: ir.Model) -> bool:
        return False


@pytest.fixture
def toy_registered():
    registry.register_pass(_ToyPass)
    yield _ToyPass
    registry._REGISTRY.pop("toy-test-pass", None)


def test_lists_literals_strings_and_conflicts(toy_registered: type) -> None:
    p = parse('toy-test-pass{mode=b,names=[conv_1, "a,b"],budget="cosine>=0.999",limit=0.5}')
    (step,) = p.items
    assert step.options == _ToyOptions("b", ["conv_1", "a,b"], "cosine>=0.999", 0.5)
    assert parse(str(p)) == p  # quoting round-trips
    assert str(parse("toy-test-pass{limit=none}")) == "toy-test-pass"
    with pytest.raises(PipelineError, match="mode=b needs names"):
        parse("toy-test-pass{mode=b}")
    with pytest.raises(PipelineError, match=r"expected one of a\|b"):
        parse("toy-test-pass{mode=c}")
    with pytest.raises(PipelineError, match=r"expected float \| none"):
        parse("toy-test-pass{limit=x}")


def test_duplicate_names_and_undocumented_options_are_refused(toy_registered: type) -> None:
    class _Other(GraphoptPass):
        name = "toy-test-pass"

        def run(self, model: ir.Model) -> bool:
            return False

    _Other.__name__ = "OtherPass"
    with pytest.raises(registry.RegistryError, match="already registered"):
        registry.register_pass(_Other)

    @dataclasses.dataclass(frozen=True)
    class _Undocumented:
        x: int = 1

    class UndocumentedPass(GraphoptPass):
        name = "undocumented-test"
        Options = _Undocumented

        def run(self, model: ir.Model) -> bool:
            return False

    with pytest.raises(registry.RegistryError, match="has no doc"):
        registry.register_pass(UndocumentedPass)

    class BadName(GraphoptPass):
        name = "Bad_Name"

        def run(self, model: ir.Model) -> bool:
            return False

    with pytest.raises(registry.RegistryError):
        registry.register_pass(BadName)


def test_presets_and_pass_names_do_not_collide() -> None:
    assert not set(PRESETS) & set(registry.all_passes())
    for text in PRESETS.values():
        parse(text)


def test_an_option_minimum_is_checked_however_the_options_are_made() -> None:
    """``option(..., minimum=0)`` is enforced by CheckedOptions: in pipeline text (with the
    pass name) and in a direct Python call alike."""
    with pytest.raises(PipelineError, match="lift-constants: size_limit must be >= 0, got -1"):
        parse("lift-constants{size_limit=-1}")
    options = registry.get_pass("eliminate-common-subexpressions").Options
    with pytest.raises(ValueError, match="size_limit must be >= 0, got -3"):
        options(size_limit=-3)
    assert options(size_limit=0).size_limit == 0
