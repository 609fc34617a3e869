"""The one exception type a user is meant to see.

Library functions raise :class:`ToolkitError` for anything the user can fix (a bad
option, a bad file); the CLI prints its message as one line and exits non-zero.
Anything else is a bug and keeps its traceback.
"""


class ToolkitError(Exception):
    """A problem with the user's input, explained in one line with its fix."""


class OptionError(ToolkitError):
    """A bad value of one parameter. The library's message names the parameter
    (`epochs=0: must be at least 1`); the command line's names its flag (`--epochs 0: ...`)."""

    def __init__(self, parameter: str, value: object, problem: str):
        self.parameter, self.value, self.problem = parameter, value, problem
        super().__init__(f"{parameter}={value!r}: {problem}")

    def for_command_line(self) -> str:
        value = " ".join(map(str, self.value)) if isinstance(self.value, (list, tuple)) else self.value
        return f"--{self.parameter.replace('_', '-')} {value}: {self.problem}"


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message cut to one line (its type's name if it has none), for
    messages that must stay one line."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]
