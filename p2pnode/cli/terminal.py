"""What a job wrote, made safe to print on a person's terminal.

A job's output and errors are bytes a member chose; on a terminal, escape sequences in them could
move the cursor, rewrite what is shown, set the window title or, on some terminals, answer back
as if typed. So on a TTY every control character but newline and tab is shown as a visible
`\\xNN` escape; into a pipe or a file the text passes through unchanged (like `docker logs`), so
redirected output is exactly what the job wrote.
"""

from __future__ import annotations

import sys

import click

_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]
    if chr(code) not in "\n\t"
}
"""C0 controls (ESC among them), DEL and the C1 controls (0x9b is an 8-bit CSI)."""


def for_terminal(text: str, *, err: bool = False) -> str:
    """`text` as it should go to stdout (or stderr with `err`)."""
    return text.translate(_CONTROLS) if (sys.stderr if err else sys.stdout).isatty() else text


def echo_output(text: str, *, err: bool = False, nl: bool = True) -> None:
    """`click.echo` of text a job or a member wrote (`color=True`: click would otherwise strip
    what looks like a colour sequence from piped text, which then is not what the job wrote)."""
    click.echo(for_terminal(text, err=err), err=err, nl=nl, color=True)
