"""Policy loading, third stage: checks across sections (names that must exist, ids that must be unique,
devices sharing a listener) and warnings about rules that cannot do what they seem to say.

The reference checks read the plain YAML data, so they run even when some other field failed type
validation and every problem is reported in one pass. The remaining checks need the typed model.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import functions as fn
from .errors import FieldPath, Issue, format_path
from .model import (
    NAME_PATTERN,
    Device,
    Listener,
    Metrics,
    Opcua,
    Policy,
    Principal,
    Rule,
    normalise_subject,
)
from .positions import SourceMap

M = TypeVar("M", bound=BaseModel)

_NAME = re.compile(NAME_PATTERN)


def _names_at(value: object, path: FieldPath) -> Iterator[tuple[str, FieldPath]]:
    """The names written in a field that holds one name or a list of names."""
    if isinstance(value, str):
        yield value, path
    elif isinstance(value, list):
        for n, item in enumerate(value):
            if isinstance(item, str):
                yield item, (*path, n)


def _unknown(kind: str, name: str, known: dict[object, object]) -> str:
    near = get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {kind} {name!r}{hint}"


def _section(data: dict[object, object], key: str) -> dict[object, object]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _items(data: dict[object, object], key: str) -> list[tuple[int, dict[object, object]]]:
    value = data.get(key)
    if not isinstance(value, list):
        return []
    return [(n, item) for n, item in enumerate(value) if isinstance(item, dict)]


def reference_issues(data: dict[object, object], smap: SourceMap) -> list[Issue]:
    """Names that must exist and ids that must be unique, checked on the plain data."""
    issues: list[Issue] = []
    zones, devices, principals = (_section(data, k) for k in ("zones", "devices", "principals"))
    for section, entries in (("zones", zones), ("devices", devices), ("principals", principals)):
        for name in entries:
            if not isinstance(name, str) or not _NAME.match(name):
                issues.append(smap.issue((section, name if isinstance(name, (str, int)) else str(name)), f"bad name {name!r}: letters, digits, '_', '.', '-'"))
    for name, device in devices.items():
        if isinstance(device, dict) and isinstance(device.get("zone"), str) and device["zone"] not in zones:
            issues.append(smap.issue(("devices", name, "zone"), _unknown("zone", device["zone"], zones)))  # type: ignore[arg-type]
    for n, rule in _items(data, "rules"):
        for key, kind, known in (("principal", "principal", principals), ("principals", "principal", principals),
                                 ("device", "device", devices), ("devices", "device", devices)):
            for name, path in _names_at(rule.get(key), ("rules", n, key)):
                if name not in known:
                    issues.append(smap.issue(path, _unknown(kind, name, known)))
    for n, listener in _items(data, "listeners"):
        for name, path in _names_at(listener.get("devices"), ("listeners", n, "devices")):
            if name not in devices:
                issues.append(smap.issue(path, _unknown("device", name, devices)))
    for name in _section(data, "tags"):
        if isinstance(name, str) and name not in devices:
            issues.append(smap.issue(("tags", name), _unknown("device", name, devices)))
    poller = _section(data, "opcua").get("poll_principal")
    if isinstance(poller, str) and poller not in principals:
        issues.append(smap.issue(("opcua", "poll_principal"), _unknown("principal", poller, principals)))
    for section, key, kind in (("rules", "id", "rule id"), ("listeners", "name", "listener name"), ("flows", "id", "flow id")):
        seen: dict[str, int] = {}
        for n, item in _items(data, section):
            value = item.get(key)
            if not isinstance(value, str):
                continue
            if value in seen:
                first = smap.locate((section, seen[value], key))
                issues.append(smap.issue((section, n, key), f"duplicate {kind} {value!r} (first at line {first.line})"))
            else:
                seen[value] = n
    return issues


@dataclass
class Sections:
    """The typed sections the cross-section checks need; from a valid policy or salvaged entry by entry."""

    devices: dict[str, Device]
    principals: dict[str, Principal]
    listeners: list[tuple[int, Listener]]
    metrics: Metrics | None
    opcua: Opcua | None = None
    rules: list[tuple[int, Rule]] = field(default_factory=list)

    @classmethod
    def of(cls, policy: Policy) -> Sections:
        return cls(dict(policy.devices), dict(policy.principals), list(enumerate(policy.listeners)), policy.metrics,
                   policy.opcua, list(enumerate(policy.rules)))

    @classmethod
    def salvage(cls, document: dict[object, object], context: dict[str, Any]) -> Sections:
        """The entries that validate on their own, so their checks still run when others have errors."""

        def valid(model: type[M], raw: object) -> M | None:
            try:
                return model.model_validate(raw, context=context)
            except ValidationError:
                return None

        devices = {str(k): d for k, v in _section(document, "devices").items() if (d := valid(Device, v))}
        principals = {str(k): p for k, v in _section(document, "principals").items() if (p := valid(Principal, v))}
        listeners = [(n, item) for n, raw in _items(document, "listeners") if (item := valid(Listener, raw))]
        metrics = valid(Metrics, document.get("metrics") or {})
        opcua = valid(Opcua, document["opcua"]) if "opcua" in document else None
        rules = [(n, rule) for n, raw in _items(document, "rules") if (rule := valid(Rule, raw))]
        return cls(devices, principals, listeners, metrics, opcua, rules)


def model_issues(sections: Sections, smap: SourceMap) -> list[Issue]:
    """Checks that need typed values: unit overlaps, ambiguous identities, bind clashes."""
    issues: list[Issue] = []
    for n, listener in sections.listeners:
        claimed: list[tuple[str, tuple[tuple[int, int], ...] | None]] = []
        for j, name in enumerate(listener.devices):
            device = sections.devices.get(name)
            if device is None:
                continue
            if listener.speaks == "enip":
                if device.enip is None:
                    issues.append(smap.issue(
                        ("listeners", n, "devices", j),
                        f"device {name!r} has no enip section: an {listener.protocol} listener relays EtherNet/IP",
                    ))
                continue
            if device.modbus is None:
                issues.append(smap.issue(
                    ("listeners", n, "devices", j),
                    f"device {name!r} has no modbus section: a {listener.protocol} listener relays Modbus/TCP",
                ))
                continue
            units = device.modbus.units
            for other, other_units in claimed:
                if _overlap(units, other_units):
                    issues.append(smap.issue(
                        ("listeners", n, "devices", j),
                        f"devices {other!r} and {name!r} share unit ids: a request's unit id must pick one device",
                    ))
            claimed.append((name, units))
            if listener.transparent and not _is_address(device.modbus.host):
                issues.append(smap.issue(
                    ("listeners", n, "devices", j),
                    f"a transparent listener takes over connections to its devices' addresses: "
                    f"device {name!r} needs an IP address as host, not {device.modbus.host!r}",
                ))
    seen: dict[tuple[str, object], str] = {}
    for name, principal in sections.principals.items():
        identities: list[tuple[str, object, str]] = [("tls_role", r, r) for r in principal.tls_role]
        identities += [("tls_subject", normalise_subject(s), s) for s in principal.tls_subject]
        identities += [("opcua_user", u, u) for u in principal.opcua_user]
        identities += [("source", c, c) for c in principal.source]
        for kind, identity, text in identities:
            owner = seen.get((kind, identity))
            if owner is not None and owner != name:
                issues.append(smap.issue(("principals", name, kind), f"{kind} {text!r} already identifies principal {owner!r}"))
            seen[(kind, identity)] = name
    issues += _protocol_issues(sections, smap)
    binds: dict[tuple[str, int], FieldPath] = {}
    if sections.metrics is not None:
        binds[(sections.metrics.bind.host, sections.metrics.bind.port)] = ("metrics", "bind")
    if sections.opcua is not None:
        key = (sections.opcua.bind.host, sections.opcua.bind.port)
        if key in binds:
            issues.append(smap.issue(("opcua", "bind"), f"{sections.opcua.bind} is already bound by {format_path(binds[key])}"))
        else:
            binds[key] = ("opcua", "bind")
    for n, listener in sections.listeners:
        key = (listener.host, listener.port)
        if key in binds:
            issues.append(smap.issue(("listeners", n, "bind"), f"{listener.bind} is already bound by {format_path(binds[key])}"))
        else:
            binds[key] = ("listeners", n, "bind")
    return issues


def _protocol_issues(sections: Sections, smap: SourceMap) -> list[Issue]:
    """A rule's Modbus entries need a device with a modbus section, its CIP entries one with enip (a rule
    for several devices may mix them: each protocol's entries apply to the devices that speak it)."""
    issues: list[Issue] = []
    for n, rule in sections.rules:
        known = [sections.devices[name] for name in rule.devices if name in sections.devices]
        if len(known) != len(rule.devices):
            continue  # an unknown device is an error of its own
        for key, entries, section in (("allow", rule.allow, "modbus"), ("cip", rule.cip, "enip")):
            if entries and not any(getattr(device, section) is not None for device in known):
                names = ", ".join(repr(name) for name in rule.devices)
                article = "an" if section == "enip" else "a"
                issues.append(smap.issue(
                    ("rules", n, key),
                    f"no device of the rule has {article} {section} section ({names}): these entries reach nothing",
                ))
    return issues


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _overlap(a: tuple[tuple[int, int], ...] | None, b: tuple[tuple[int, int], ...] | None) -> bool:
    if a is None or b is None:
        return True
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def warnings(policy: Policy, smap: SourceMap) -> list[Issue]:
    """Rules that load but cannot do what they seem to say."""
    out: list[Issue] = []
    for name, declared in policy.devices.items():
        for key, section in (("modbus", declared.modbus), ("enip", declared.enip)):
            if section is not None and not _is_address(section.host):
                out.append(smap.issue(
                    ("devices", name, key, "host"),
                    f"the nftables table needs an address: {section.host!r} is not an IP address",
                    severity="warning",
                ))
    for n, rule in enumerate(policy.rules):
        for e, entry in enumerate(rule.allow):
            path: FieldPath = ("rules", n, "allow", e)
            keys = entry.function_keys
            write_tables = {fn.WRITE_TABLES[fc] for fc, _ in keys if fc in fn.WRITE_TABLES}
            if write_tables and not any(entry.table(t) for t in write_tables):
                writes = sorted({fn.function_label(k) for k in keys if k[0] in fn.WRITE_TABLES})
                out.append(smap.issue(
                    (*path, "functions"),
                    f"allows {', '.join(writes)} but names no range of {_either(sorted(write_tables))}: "
                    "those writes are always denied",
                    severity="warning",
                ))
            if (22, None) in keys and any(r.bounded for r in entry.holding_registers):
                out.append(smap.issue(
                    (*path, "functions"),
                    "mask_write_register is always denied on holding ranges with min/max (its value is not known)",
                    severity="warning",
                ))
        if rule.units is not None:
            for name in rule.devices:
                device = policy.devices.get(name)
                if device is None or device.modbus is None or device.modbus.units is None:
                    continue
                if not _overlap(rule.units, device.modbus.units):
                    out.append(smap.issue(
                        ("rules", n, "units"), f"none of these units is a unit of device {name!r}", severity="warning",
                    ))
    return out
