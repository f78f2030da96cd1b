"""Errors users can act on.

Every error that reaches a person names the thing that is wrong (a file, a spec field) and the fix,
so the CLI can print it on one line and exit 2 instead of showing a traceback.
"""

from __future__ import annotations


class LoraflowError(Exception):
    """Base class: a failure with a message written for the user."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None, where: str | None = None) -> None:
        self.message = message
        self.fix = fix
        self.where = where
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class UserInputError(LoraflowError):
    """Bad input (spec, dataset, arguments): exit code 2 on the CLI, HTTP 4xx on the API."""

    exit_code = 2


class SpecError(UserInputError):
    """A spec that does not validate; carries one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the spec:\n{lines}", where=source)


class IllegalTransition(LoraflowError):
    """A job state change the state machine does not allow: a bug or a race, never silently ignored."""


class NotFound(UserInputError):
    """A job, checkpoint or artifact that does not exist."""


class Refused(UserInputError):
    """A submission the service's rules refuse: `status` is its HTTP answer, `title` its short name."""

    def __init__(self, status: int, title: str, message: str, *, fix: str | None = None, **extra: object) -> None:
        self.status, self.title, self.extra = status, title, extra
        super().__init__(message, fix=fix)
