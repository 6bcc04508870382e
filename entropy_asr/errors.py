"""User errors: bad input (a file, a config key, a value) ends in one line naming it and the fix, exit code 2.

Code that validates what a user gave raises `UserError` (a ValueError) or `UserFileNotFound` (also a
FileNotFoundError), with a message that names the file, line, key or value and says what to do.
Entry points run their `main` through `run_main`, which prints such an error as one line on
stderr and exits with code 2; the traceback appears only with `--debug` (or ENTROPY_ASR_DEBUG=1).
Any other exception is a bug or a fault of the machine and keeps its full traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ENTROPY_ASR_DEBUG"


class UserError(ValueError):
    """Bad input from the user; the message names the file, line, key or value and the fix."""


class UserFileNotFound(UserError, FileNotFoundError):
    """A path the user gave (or a file a stage needs from an earlier one) does not exist."""


def user_error_of(exc: BaseException) -> UserError | None:
    """The UserError behind `exc`: itself, or one in its chain of causes (jsonargparse and Lightning
    wrap errors raised while a config is instantiated in their own)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        # causes only (`raise ... from err`, as the config parsers wrap): an error raised while handling a
        # UserError without `from` (a bug in the handler) is not that UserError and keeps its traceback
        todo.append(e.__cause__)
    return None


def one_line(err: BaseException) -> str:
    """The error's message on one line (a multi-line message keeps its first line and says how many follow).

    An error raised in a DataLoader worker arrives as "Caught <Type> in DataLoader worker process N.
    Original Traceback ..."; its own message is the traceback's last "<module>.<Type>: ..." line.
    """
    lines = [ln for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    if lines[0].startswith(f"Caught {type(err).__name__} "):
        own = [m.group(1) for ln in lines if (m := re.match(rf"(?:[\w.]+\.)?{type(err).__name__}: (.*)", ln))]
        if own:
            return own[-1]
    return lines[0] if len(lines) == 1 else f"{lines[0]} (+{len(lines) - 1} more lines: {DEBUG_FLAG} shows them)"


def run_main(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> Any:
    """Run an entry point's `main(argv)`; a UserError becomes `error: <message>` on stderr and exit code 2.

    `--debug` anywhere in argv (removed before `main` sees it) or ENTROPY_ASR_DEBUG=1 re-raises it with its
    traceback instead. Exit codes: 0 done, 1 a bug or fault (traceback), 2 bad input (one line).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return main(argv)
    except Exception as e:
        err = user_error_of(e)
        if err is None or debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
