"""A small Dockerfile reader: stages, instructions, ARG/ENV values, exec-form commands.

Enough for the checks in test_dockerfiles.py (no heredocs, no parser directives other than
`# syntax=`); anything it cannot read raises rather than guesses.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # the rest of the logical line, continuations joined
    line: int


@dataclass
class Stage:
    base: str  # FROM image, global ARGs substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV values in this stage (later ones win); `$PATH`-style references left as written."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_assignments(instruction.value))
        return values

    def args(self) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for instruction in self.all("ARG"):
            values.update(parse_arg(instruction.value))
        return values

    def exposed_ports(self) -> set[int]:
        ports = set()
        for instruction in self.all("EXPOSE"):
            for item in instruction.value.split():
                ports.add(int(item.split("/")[0]))
        return ports

    def exec_form(self, keyword: str) -> list[str] | None:
        """ENTRYPOINT/CMD as a list; shell form is refused (signals would go to /bin/sh)."""
        instruction = self.last(keyword)
        if instruction is None:
            return None
        value = json.loads(instruction.value)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {instruction.line}: {keyword} is not a JSON list of strings")
        return value


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) with `\\` continuations joined and comments dropped."""
    result: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        result.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    if buffer:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return result


def parse_assignments(value: str) -> dict[str, str]:
    """`ENV A=1 B="two words"` (or the legacy `ENV A 1`)."""
    words = shlex.split(value, posix=True)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    pairs = {}
    for word in words:
        key, sep, item = word.partition("=")
        if not sep:
            raise ValueError(f"cannot read ENV/ARG item {word!r}")
        pairs[key] = item
    return pairs


def parse_arg(value: str) -> dict[str, str | None]:
    words = shlex.split(value, posix=True)
    values: dict[str, str | None] = {}
    for word in words:
        key, sep, item = word.partition("=")
        values[key] = item if sep else None
    return values


def substitute(value: str, variables: dict[str, str | None]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        found = variables.get(name)
        if found is None:
            raise ValueError(f"${name} has no default")
        return found

    return _VARIABLE.sub(replace, value)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, value = text.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            words = value.split()
            if words[0].startswith("--"):
                raise ValueError(f"{path}:{line}: FROM flags are not supported here")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=substitute(words[0], global_args), name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}:{line}: only ARG may come before the first FROM")
            global_args.update(parse_arg(value))
        else:
            stages[-1].instructions.append(Instruction(keyword, value, line))
    if not stages:
        raise ValueError(f"{path}: no FROM")
    return Dockerfile(path, global_args, stages)
