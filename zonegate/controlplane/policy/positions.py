"""Policy loading, first stage: YAML text -> plain data plus the file, line and column of every node.

PyYAML's composer gives nodes with marks; this module builds the plain data from them itself so that
every value and every mapping key keeps its position, keyed by field path. Later stages (pydantic
validation, reference checks) report a field path and look its position up here. Several files load as
one policy: their named sections merge and their lists concatenate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import yaml

from .errors import FieldPath, Issue, PolicyError, format_path

# Sections whose entries are named mappings; several files may each contribute entries.
NAMED_SECTIONS = frozenset({"zones", "devices", "principals", "tags"})
# Bounds on what one file may expand to: YAML aliases can make a small file enormous or recursive.
MAX_NODES = 200_000
MAX_DEPTH = 32
_INT_TAG = "tag:yaml.org,2002:int"
_OCTAL = re.compile(r"^[-+]?0[0-7_]+$")
_SEXAGESIMAL = re.compile(r"^[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+$")


class Mark(NamedTuple):
    """A position in a policy file; line and column are 1-based."""

    file: str
    line: int
    column: int


@dataclass
class SourceMap:
    """Where each node of the loaded data came from, by field path."""

    values: dict[FieldPath, Mark] = field(default_factory=dict)
    keys: dict[FieldPath, Mark] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def locate(self, path: FieldPath, *, key: bool = True) -> Mark:
        """Where `path` is written: a mapping entry at its key (unless `key` is false), a list item at
        the item; a path that is not in the file (a missing key) at its nearest written ancestor."""
        probe = path
        while probe:
            if key and probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Mark(self.files[0] if self.files else "<policy>", 1, 1))

    def issue(self, path: FieldPath, message: str, *, severity: str = "error") -> Issue:
        mark = self.locate(path)
        return Issue(
            mark.file, mark.line, mark.column, format_path(path), message,
            "warning" if severity == "warning" else "error",
        )


def _mark(file: str, node: yaml.Node) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.map = SourceMap(files=[file])
        self.issues: list[Issue] = []
        self.nodes = 0

    def build(self, node: yaml.Node, path: FieldPath) -> object:
        self.nodes += 1
        if self.nodes > MAX_NODES or len(path) > MAX_DEPTH:
            m = _mark(self.file, node)
            what = f"more than {MAX_NODES} values" if self.nodes > MAX_NODES else f"deeper than {MAX_DEPTH} levels"
            raise PolicyError([Issue(self.file, m.line, m.column, format_path(path), f"the policy expands to {what} (YAML aliases?)")])
        self.map.values[path] = _mark(self.file, node)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves `<<` merge keys
            out: dict[object, object] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    m = _mark(self.file, key_node)
                    self.issues.append(Issue(self.file, m.line, m.column, format_path(path), "a key must be a plain value"))
                    continue
                key = self.loader.construct_object(key_node)
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    key = str(key_node.value)
                child: FieldPath = (*path, key)
                if key in out:
                    m = _mark(self.file, key_node)
                    first = self.map.keys[child]
                    self.issues.append(
                        Issue(self.file, m.line, m.column, format_path(child),
                              f"duplicate key (first at line {first.line})")
                    )
                    continue
                self.map.keys[child] = _mark(self.file, key_node)
                out[key] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, n)) for n, item in enumerate(node.value)]
        if node.tag == _INT_TAG:
            self._check_number_spelling(node, path)
        return self.loader.construct_object(node)

    def _check_number_spelling(self, node: yaml.Node, path: FieldPath) -> None:
        """YAML 1.1 reads `0100` as octal 64 and `1:30` as base-60 90: a padded register number or a
        port written with a leading zero would silently mean another number."""
        text = str(node.value)
        if _OCTAL.match(text):
            reading = f"octal, i.e. {self.loader.construct_object(node)}"
        elif _SEXAGESIMAL.match(text):
            reading = f"a base-60 number, i.e. {self.loader.construct_object(node)}"
        else:
            return
        m = _mark(self.file, node)
        self.issues.append(Issue(
            self.file, m.line, m.column, format_path(path),
            f"{text} reads as {reading}; write it without leading zeros, or quote it if it is text",
        ))


# libyaml when PyYAML was built with it: about ten times faster on large policies, same nodes and marks.
_FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def read_text(text: str, file: str) -> tuple[object, SourceMap, list[Issue]]:
    """Parse one YAML document. Syntax errors raise PolicyError; structural issues are returned."""
    if _FAST_LOADER is not None:
        try:
            return _compose(_FAST_LOADER, text, file)
        except (yaml.YAMLError, ValueError):
            pass  # report it as the pure-Python parser words and locates it, with or without libyaml
    return _compose(yaml.SafeLoader, text, file)


def _compose(loader_class: type[yaml.SafeLoader], text: str, file: str) -> tuple[object, SourceMap, list[Issue]]:
    try:
        loader = loader_class(text)
    except yaml.reader.ReaderError as exc:
        if loader_class is not yaml.SafeLoader:
            raise
        raise PolicyError([_reader_issue(file, text, exc)]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError([Issue(file, 1, 1, "", "the policy file is empty")])
        builder = _Builder(file, loader)
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        if loader_class is not yaml.SafeLoader:
            raise
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError([Issue(file, line, column, "", f"YAML: {problem}")]) from None
    except yaml.reader.ReaderError as exc:
        if loader_class is not yaml.SafeLoader:
            raise
        raise PolicyError([_reader_issue(file, text, exc)]) from None
    except yaml.YAMLError as exc:
        if loader_class is not yaml.SafeLoader:
            raise
        raise PolicyError([Issue(file, 1, 1, "", f"YAML: {exc}")]) from None
    finally:
        loader.dispose()
    return data, builder.map, builder.issues


def _reader_issue(file: str, text: str, exc: yaml.reader.ReaderError) -> Issue:
    """A character YAML does not allow, located by its offset."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
    return Issue(file, line, column, "", f"YAML: character {char} is not allowed in a policy")


def merge(parts: Sequence[tuple[object, SourceMap]]) -> tuple[dict[object, object], SourceMap, list[Issue]]:
    """Several loaded files -> one document: named sections merge, lists concatenate."""
    issues: list[Issue] = []
    for data, smap in parts:
        if not isinstance(data, dict):
            issues.append(smap.issue((), "a policy file is a mapping of sections (version, zones, devices, ...)"))
    if issues:
        return {}, SourceMap(files=[f for _, smap in parts for f in smap.files]), issues
    if len(parts) == 1:
        data, smap = parts[0]
        return data, smap, issues  # type: ignore[return-value]
    merged: dict[object, object] = {}
    source = SourceMap()
    for data, smap in parts:
        source.files.extend(smap.files)
        source.values.setdefault((), smap.values[()])
        moves: dict[object, _Move] = {}
        for key, value in data.items():  # type: ignore[attr-defined]
            moves[key] = _merge_section(merged, source, smap, key, value, issues)
        for table, target in ((smap.values, source.values), (smap.keys, source.keys)):
            for path, mark in table.items():
                if path and (new := moves[path[0]].apply(path)) is not None:
                    target.setdefault(new, mark)  # a section's own key stays where it was first written
    return merged, source, issues


class _Move:
    """Where one file's marks under one top-level key go in the merged document."""

    def __init__(self, *, offset: int = 0, skip: frozenset[object] = frozenset(), drop: bool = False) -> None:
        self.offset, self.skip, self.drop = offset, skip, drop

    def apply(self, path: FieldPath) -> FieldPath | None:
        if self.drop:
            return None
        if len(path) < 2:
            return path
        if path[1] in self.skip:
            return None
        if self.offset and isinstance(path[1], int):
            return (path[0], path[1] + self.offset, *path[2:])
        return path


def _merge_section(
    merged: dict[object, object], source: SourceMap, smap: SourceMap, key: object, value: object,
    issues: list[Issue],
) -> _Move:
    if key not in merged:
        merged[key] = value
        return _Move()
    current = merged[key]
    if key in NAMED_SECTIONS and isinstance(current, dict) and isinstance(value, dict):
        skip = []
        for name, entry in value.items():
            path: FieldPath = (key, name)
            if name in current:
                first = source.locate(path)
                issues.append(smap.issue(path, f"already defined at {first.file}:{first.line}"))
                skip.append(name)
                continue
            current[name] = entry
        return _Move(skip=frozenset(skip))
    if isinstance(current, list) and isinstance(value, list):
        offset = len(current)
        current.extend(value)
        return _Move(offset=offset)
    if not (current == value and not isinstance(value, (dict, list))):  # `version: 1` may repeat
        first = source.locate((key,))  # type: ignore[arg-type]
        issues.append(smap.issue((key,), f"already set at {first.file}:{first.line}"))  # type: ignore[arg-type]
    return _Move(drop=True)
