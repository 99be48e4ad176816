"""Policy loading, last stage: the typed policy -> the compiled-policy IR of docs/engine.md section 3
(and, for CIP, docs/cip-engine.md section 2).

The IR carries no optional semantics: every default is resolved here, principals and devices are
referred to by index, ranges are sorted, and function keys are explicit `(fc, sub)` pairs. The Rust
engine (`Engine(ir_json)`) and the reference model (`ReferenceModel(ir_dict)`) both read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .addresses import TABLES, AddressRange, ir_address
from .cip import TagPattern

if TYPE_CHECKING:
    from .model import AllowEntry, CipEntry, Device, Policy

IR_VERSION = 1


def _units(units: tuple[tuple[int, int], ...] | None) -> list[list[int]] | None:
    return None if units is None else [[lo, hi] for lo, hi in units]


def _range(r: AddressRange) -> dict[str, Any]:
    return {"start": ir_address(r, True), "end": ir_address(r, False), "min": r.min, "max": r.max, "signed": r.signed}


def _entry(entry: AllowEntry) -> dict[str, Any]:
    ranges = {
        table: [_range(r) for r in sorted(entry.table(table), key=lambda r: ir_address(r, True))]
        for table in TABLES
    }
    rate = None
    if entry.rate is not None:
        rate = {"count": entry.rate.count, "period_ns": entry.rate.period_ns, "burst": entry.effective_burst}
    return {
        "functions": [[fc, sub] for fc, sub in entry.function_keys],
        "ranges": ranges,
        "max_quantity": entry.max_quantity,
        "rate": rate,
    }


def _ranges(spans: tuple[tuple[int, int], ...] | None) -> list[list[int]] | None:
    return None if spans is None else [[lo, hi] for lo, hi in spans]


def _pattern(pattern: TagPattern) -> dict[str, Any]:
    return {"parts": [
        {"name": part.name, "elements": None if part.elements is None else [[lo, hi] for lo, hi in part.elements]}
        for part in pattern.parts
    ]}


def _cip_entry(entry: CipEntry) -> dict[str, Any]:
    rate = None
    if entry.rate is not None:
        rate = {"count": entry.rate.count, "period_ns": entry.rate.period_ns, "burst": entry.effective_burst}
    return {
        "services": sorted(entry.services.names),
        "service_codes": sorted(entry.services.codes),
        "tags": None if entry.tags is None else [_pattern(p) for p in entry.tags],
        "classes": _ranges(entry.class_),
        "instances": _ranges(entry.instance),
        "attributes": _ranges(entry.attribute),
        "routes": None if entry.routes is None else [[[port, list(link)] for port, link in r] for r in entry.routes],
        "rate": rate,
    }


def _device(name: str, d: Device) -> dict[str, Any]:
    # host and port are the Modbus section's; a device reached only over EtherNet/IP gives its enip
    # address there (the engine reads neither) and no units.
    first = d.modbus or d.enip
    assert first is not None
    return {
        "name": name,
        "zone": d.zone,
        "host": first.host,
        "port": first.port,
        "units": _units(d.modbus.units) if d.modbus is not None else None,
        "enip": None if d.enip is None else {"host": d.enip.host, "port": d.enip.port},
    }


def compile_ir(policy: Policy) -> dict[str, Any]:
    principal_index = {name: n for n, name in enumerate(policy.principals)}
    device_index = {name: n for n, name in enumerate(policy.devices)}
    return {
        "version": IR_VERSION,
        "mode": policy.mode,
        "principals": [
            {
                "name": name,
                "tls_roles": list(p.tls_role),
                "subjects": list(p.tls_subject),
                "opcua_users": list(p.opcua_user),
                "sources": list(p.source),
            }
            for name, p in policy.principals.items()
        ],
        "devices": [_device(name, d) for name, d in policy.devices.items()],
        "rules": [
            {
                "id": rule.id,
                "principals": [principal_index[p] for p in rule.principals],
                "devices": [device_index[d] for d in rule.devices],
                "units": _units(rule.units),
                "allow": [_entry(entry) for entry in rule.allow],
                "cip": [_cip_entry(entry) for entry in rule.cip],
            }
            for rule in policy.rules
        ],
    }
