"""Errors of `slm-server compare`; `command.run` prints the message and returns `exit_code`.

CompareError              exit 1  (anything that stops the run)
├── UsageError            exit 2  (bad option value, unknown model)
│   └── EvalFileError     exit 2  (the eval file is missing or malformed; names file and line)
└── ServerError           exit 1  (the server cannot be reached or refuses to list models)
"""

from __future__ import annotations

from pathlib import Path


class CompareError(Exception):
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CompareError):
    exit_code = 2


class EvalFileError(UsageError):
    def __init__(self, source: str | Path, message: str, *, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else str(source)
        super().__init__(f"{where}: {message}")
        self.source = str(source)
        self.line = line
        self.reason = message


class ServerError(CompareError):
    exit_code = 1
