"""Policy loading, the whole path: files -> YAML with positions -> typed model -> cross-section checks.

Every problem found on the way is collected, pinned to file, line, column and field path, and raised
together as one PolicyError; warnings ride along on the loaded policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import checks, tags
from .errors import FieldPath, Issue, PolicyError
from .model import Policy, UnknownKey
from .positions import SourceMap, merge, read_text

_MISSING = object()
MAX_FILE_BYTES = 16 * 1024 * 1024


def load(paths: Sequence[Path | str], pki_dir: Path | None = None) -> Policy:
    """Load one policy from one or more YAML files (named sections merge, lists concatenate).

    `pki_dir` overrides the policy's own `pki_dir` (default: the first file's directory) as the base
    of relative certificate paths. Raises PolicyError listing every error found.
    """
    if not paths:
        raise ValueError("load() needs at least one policy file")
    issues: list[Issue] = []
    parts: list[tuple[object, SourceMap]] = []
    digest = hashlib.sha256()
    for path in paths:
        file = str(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            issues.append(Issue(file, 1, 1, "", f"cannot read the policy: {exc.strerror or exc}"))
            continue
        if len(raw) > MAX_FILE_BYTES:
            issues.append(Issue(file, 1, 1, "", f"the policy file is larger than {MAX_FILE_BYTES} bytes"))
            continue
        digest.update(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.append(Issue(file, 1, 1, "", f"the policy is not UTF-8 text (byte {exc.start})"))
            continue
        try:
            data, smap, found = read_text(text, file)
        except PolicyError as exc:
            issues.extend(exc.issues)
            continue
        issues.extend(found)
        parts.append((data, smap))
    if not parts:
        raise PolicyError(issues)
    document, smap, found = merge(parts)
    issues.extend(found)
    if any(not isinstance(data, dict) for data, _ in parts):
        raise PolicyError(issues)

    base_dir = Path(paths[0]).resolve().parent
    effective_pki = pki_dir.resolve() if pki_dir is not None else base_dir
    if pki_dir is None and "pki_dir" in document:
        declared = document["pki_dir"]
        if isinstance(declared, str) and declared.strip():
            effective_pki = (base_dir / Path(declared).expanduser()).resolve()
        else:
            issues.append(smap.issue(("pki_dir",), f"expected a directory path, not {declared!r}"))

    issues.extend(checks.reference_issues(document, smap))
    policy: Policy | None = None
    context = {"pki_dir": effective_pki, "base_dir": base_dir}
    try:
        policy = Policy.model_validate(document, context=context)
    except ValidationError as exc:
        issues.extend(pydantic_issue(error, document, smap) for error in exc.errors())
    found_warnings: list[Issue] = []
    if policy is not None:
        issues.extend(checks.model_issues(checks.Sections.of(policy), smap))
        issues.extend(tags.issues(policy, smap))
        found_warnings = checks.warnings(policy, smap) + tags.warnings(policy, smap)
    else:
        issues.extend(checks.model_issues(checks.Sections.salvage(document, context), smap))
    if policy is None or any(issue.severity == "error" for issue in issues):
        raise PolicyError(issues + found_warnings)
    policy._source_hash = digest.hexdigest()
    policy._files = tuple(Path(p) for p in paths)
    policy._warnings = tuple(found_warnings)
    return policy


def _source_path(loc: tuple[Any, ...], document: object) -> FieldPath:
    """A pydantic error location -> the field path in the YAML as written."""
    path: list[str | int] = []
    node: object = document
    for part in loc:
        if part == "[key]":
            break  # the mapping key itself is wrong; it is located at the key anyway
        if isinstance(node, dict):
            path.append(part)
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and isinstance(part, int):
            path.append(part)
            node = node[part] if 0 <= part < len(node) else _MISSING
        elif isinstance(part, int):
            continue  # a single value the model read as a one-item list
        else:
            path.append(part)
            node = _MISSING
    return tuple(path)


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def pydantic_issue(error: Any, document: object, smap: SourceMap) -> Issue:
    """One pydantic error -> an Issue at the YAML position of the field it names."""
    path = _source_path(tuple(error["loc"]), document)
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "zonegate":
        path = path + tuple(ctx.get("subpath") or ())
        message = ctx["message"]
        if ctx.get("suggestion"):
            message += f" (did you mean {ctx['suggestion']!r}?)"
        return smap.issue(path, message)
    if kind == "extra_forbidden":
        message = value.message if isinstance(value, UnknownKey) else "unknown key"
        return smap.issue(path, message)
    if kind == "missing":
        return smap.issue(path, "missing required key")
    if kind == "literal_error":
        message = f"expected {ctx.get('expected')}, not {_describe(value)}"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        message = f"expected a mapping, not {_describe(value)}"
    elif kind in ("list_type", "tuple_type"):
        message = f"expected a list, not {_describe(value)}"
    elif kind == "too_short":
        message = "must not be empty"
    else:
        message = str(error["msg"])
    return smap.issue(path, message)
