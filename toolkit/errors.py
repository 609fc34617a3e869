"""The one exception type a user is meant to see.

Library functions raise :class:`ToolkitError` for anything the user can fix (a bad
option, a bad file); the CLI prints its message as one line and exits non-zero.
Anything else is a bug and keeps its traceback.
"""


class ToolkitError(Exception):
    """A problem with the user's input, explained in one line with its fix."""
