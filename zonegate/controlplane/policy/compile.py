"""Policy loading, last stage: the typed policy -> the compiled-policy IR of docs/engine.md section 3.

The IR carries no optional semantics: every default is resolved here, principals and devices are
referred to by index, ranges are sorted, and function keys are explicit `(fc, sub)` pairs. The Rust
engine (`Engine(ir_json)`) and the reference model (`ReferenceModel(ir_dict)`) both read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .addresses import TABLES, AddressRange, ir_address

if TYPE_CHECKING:
    from .model import AllowEntry, Policy

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
        "devices": [
            {
                "name": name,
                "zone": d.zone,
                "host": d.modbus.host,
                "port": d.modbus.port,
                "units": _units(d.modbus.units),
            }
            for name, d in policy.devices.items()
        ],
        "rules": [
            {
                "id": rule.id,
                "principals": [principal_index[p] for p in rule.principals],
                "devices": [device_index[d] for d in rule.devices],
                "units": _units(rule.units),
                "allow": [_entry(entry) for entry in rule.allow],
            }
            for rule in policy.rules
        ],
    }
