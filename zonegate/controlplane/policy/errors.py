"""Policy loading: the issues a policy can have, each pinned to file, line, column and field path."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

PathPart = str | int
FieldPath = tuple[PathPart, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(path: Sequence[PathPart]) -> str:
    """`("rules", 2, "allow", 0, "holding")` -> `rules[2].allow[0].holding`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True)
class Issue:
    """One finding. `line` and `column` are 1-based; `path` is the dotted field path."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        field = f" {self.path}:" if self.path else ""
        kind = " warning:" if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}:{field}{kind} {self.message}"


class PolicyError(Exception):
    """A policy that cannot be loaded. `issues` holds every error found (and any warnings)."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues = sort_issues(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]


def sort_issues(issues: Iterable[Issue]) -> list[Issue]:
    """Files in the order they were given, then by position; duplicates reported once."""
    unique = list(dict.fromkeys(issues))
    file_order = {name: n for n, name in enumerate(dict.fromkeys(i.file for i in unique))}
    return sorted(unique, key=lambda i: (file_order[i.file], i.line, i.column, i.path, i.message))


class FieldError(ValueError):
    """A bad value found while parsing one field.

    `subpath` locates the problem inside the field's value (an index into a list, say) so the issue
    points at the exact node; `suggestion` is the closest valid spelling, for "did you mean".
    """

    def __init__(self, message: str, subpath: FieldPath = (), suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.subpath = subpath
        self.suggestion = suggestion
