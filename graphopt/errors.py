"""graphopt's error types.

Every failure a user can cause is a :class:`GraphoptError` with one clear message and an exit
code, so the CLI can print one line and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations

# Exit codes, documented in README: scripts in deployment pipelines branch on them.
EXIT_OK = 0
EXIT_ERROR = 1  # anything else graphopt reports
EXIT_USAGE = 2  # bad pipeline text, unknown pass or option, bad command-line value
EXIT_INPUT = 3  # model or data file missing, unreadable, corrupt or unsupported
EXIT_VERIFY = 4  # a pass broke the model's outputs beyond its tolerance
EXIT_INTERNAL = 70  # a bug in graphopt itself


class GraphoptError(Exception):
    """Base class of every error a user can cause; ``exit_code`` is what the CLI returns."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(GraphoptError):
    """A bad command-line value."""

    exit_code = EXIT_USAGE


class PipelineError(GraphoptError):
    """Bad pipeline text: syntax, unknown pass, unknown or ill-typed option."""

    exit_code = EXIT_USAGE


class ModelError(GraphoptError):
    """The model file is missing, unreadable, corrupt, truncated or not ONNX."""

    exit_code = EXIT_INPUT


class UnsupportedModelError(ModelError):
    """The model is valid ONNX but uses something the runtime cannot run (e.g. its opset)."""


class ExternalDataError(ModelError):
    """External tensor data is missing or points outside the model's folder."""


class DataError(GraphoptError):
    """The DATA given for inputs does not fit the model (missing input, wrong dtype or rank)."""

    exit_code = EXIT_INPUT


class RuntimeFailure(GraphoptError):
    """ONNX Runtime could not build a session or run the model."""


class VerificationError(GraphoptError):
    """A pass changed the model's outputs beyond its declared tolerance."""

    exit_code = EXIT_VERIFY

    def __init__(
        self,
        message: str,
        *,
        pass_name: str,
        reproducer: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.pass_name = pass_name
        self.reproducer = reproducer


class PassFailure(GraphoptError):
    """A pass raised while transforming the model; the message names the pass.

    A user cannot cause this (bad input is refused before, with its own error): it is a
    graphopt bug, so it exits like one (70), with a reproducer to report.
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, pass_name: str, reproducer: str | None = None) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.reproducer = reproducer
