"""What many test files need: run the CLI as a user would, and check its one-line errors."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from toolkit.cli import cli


def run_cli(*args, **kwargs) -> Result:
    """`toolkit ARGS...` in-process; every argument is turned into a string."""
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def tree(folder: Path) -> dict[str, int]:
    """Every file below folder (relative path -> size): compare before and after a command."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error_line(result: Result, message: str) -> None:
    """A non-zero exit, no traceback, and exactly one `Error:` line that contains message."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
