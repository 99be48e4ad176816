"""OPC UA converter, tag model: names bound to device data, and the register codec between them.

A tag names a value on a device: its table, address and wire type, how the words and bytes of a
multi-register value are ordered, and the scale and offset from raw to engineering value. The codec is
pure: registers (16-bit words, as on the wire) in, a Python value out, and back again for writes.

```
 float32 1.5 = 0x3FC00000        word_order big     word_order little
                                 +------+------+    +------+------+
   byte_order big                | 3FC0 | 0000 |    | 0000 | 3FC0 |
   byte_order little             | C03F | 0000 |    | 0000 | C03F |
                                 +------+------+    +------+------+
                                  addr    addr+1     addr    addr+1
```

A CIP tag (`cip_tag`) names a Logix tag instead of a table and address; its codec is in opcua_cip.py.

`settings_from_mapping` reads the policy's `tags:` and `opcua:` sections in their YAML shape;
`settings_from_policy` takes them from a loaded policy.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from zonegate.controlplane.policy.tags import CIP_TAG_NAME, engineering_limits

Table = Literal["coils", "discrete_inputs", "input_registers", "holding_registers", "cip"]
Order = Literal["big", "little"]

BIT_TABLES: Final = frozenset({"coils", "discrete_inputs"})
WRITABLE_TABLES: Final = frozenset({"coils", "holding_registers"})
TABLE_ALIASES: Final[Mapping[str, Table]] = {
    "coils": "coils",
    "coil": "coils",
    "discrete_inputs": "discrete_inputs",
    "discrete": "discrete_inputs",
    "input_registers": "input_registers",
    "input": "input_registers",
    "holding_registers": "holding_registers",
    "holding": "holding_registers",
}
# Registers each fixed-size type occupies, and its struct format (big-endian).
TYPE_WORDS: Final[Mapping[str, int]] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
    "int64": 4, "uint64": 4, "float64": 4,
}
_STRUCT: Final[Mapping[str, str]] = {
    "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
    "int64": ">q", "uint64": ">Q", "float64": ">d",
}
INTEGER_TYPES: Final = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
TYPES: Final = frozenset(TYPE_WORDS) | {"bool", "string"}
# Logix types of CIP tags (bool and string are shared names); "cip" is their table.
CIP_NUMERIC_TYPES: Final = frozenset({"sint", "int", "dint", "lint", "real", "lreal"})
CIP_TYPES: Final = CIP_NUMERIC_TYPES | {"bool", "string"}
CIP_TABLE: Final = "cip"
DEFAULT_SCAN: Final = 1.0
DEFAULT_SECURITY: Final = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
DEFAULT_MODES: Final = ("SignAndEncrypt",)  # Sign only when the policy asks; None never serves sessions
DEFAULT_APPLICATION_URI: Final = "urn:zonegate:opcua"
MAX_STRING_WORDS: Final = 123  # a string must fit one FC 16 write


class TagError(ValueError):
    """A tag definition that cannot be served; the message names the tag and the field."""


class CodecError(ValueError):
    """A value that does not fit its tag (written value out of the raw type's range, wrong kind)."""


@dataclass(frozen=True, slots=True)
class Tag:
    """One value on one device, as the OPC UA variable `name` serves it."""

    name: str
    device: str
    table: Table
    address: int
    type: str
    length: int = 0  # registers, for type string
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    description: str | None = None
    writable: bool = False
    min: int | float | None = None  # integers stay exact: a uint64 limit of 2**64 - 1 is not a float
    max: int | float | None = None
    scan: float = DEFAULT_SCAN  # seconds between polls
    modbus_unit: int = 1
    cip_tag: str | None = None  # a Logix tag name: read and written over EtherNet/IP, not Modbus

    @property
    def words(self) -> int:
        """Addresses the tag occupies (bits for the bit tables, registers otherwise; 1 for a CIP tag)."""
        if self.type == "bool" or self.cip_tag is not None:
            return 1
        if self.type == "string":
            return self.length
        return TYPE_WORDS[self.type]

    @property
    def end(self) -> int:
        return self.address + self.words - 1

    @property
    def scaled(self) -> bool:
        numeric = self.type in TYPE_WORDS or (self.cip_tag is not None and self.type in CIP_NUMERIC_TYPES)
        return numeric and (self.scale != 1.0 or self.offset != 0.0)

    def check(self) -> None:
        """Raise TagError when the definition cannot work (a type that does not fit its table, ...)."""
        where = f"tag {self.name!r}"
        if self.cip_tag is not None:
            self._check_cip(where)
            return
        if self.type not in TYPES:
            raise TagError(f"{where}: type {self.type!r} is not one of {sorted(TYPES)}")
        if self.table in BIT_TABLES and self.type != "bool":
            raise TagError(f"{where}: table {self.table} holds bits; type must be bool")
        if self.table not in BIT_TABLES and self.type == "bool":
            raise TagError(f"{where}: type bool needs a bit table (coils or discrete_inputs)")
        if self.type == "string" and not 1 <= self.length <= MAX_STRING_WORDS:
            raise TagError(f"{where}: a string needs length 1..{MAX_STRING_WORDS} registers")
        if not 0 <= self.address or self.end > 0xFFFF:
            raise TagError(f"{where}: addresses {self.address}..{self.end} do not fit 0..65535")
        if self.writable and self.table not in WRITABLE_TABLES:
            raise TagError(f"{where}: table {self.table} is read-only; writable must be false")
        if self.scale == 0.0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise TagError(f"{where}: scale must be finite and non-zero, offset finite")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise TagError(f"{where}: min {self.min} is above max {self.max}")
        limits = engineering_limits(self.type, self.scale, self.offset)
        for key, bound in (("min", self.min), ("max", self.max)):
            if bound is not None and limits is not None and not limits[0] <= bound <= limits[1]:
                raise TagError(f"{where}: {key} {bound} is outside what a {self.type} can hold after scale and offset")
        if self.scan <= 0:
            raise TagError(f"{where}: scan must be a positive period")
        if not 0 <= self.modbus_unit <= 255:
            raise TagError(f"{where}: unit must be 0..255")

    def _check_cip(self, where: str) -> None:
        if self.type not in CIP_TYPES:
            raise TagError(f"{where}: type {self.type!r} is not a Logix type ({', '.join(sorted(CIP_TYPES))})")
        if not CIP_TAG_NAME.match(self.cip_tag or ""):
            raise TagError(f"{where}: {self.cip_tag!r} is not a Logix tag name")
        if self.type == "string" and self.writable:
            raise TagError(f"{where}: CIP string tags are read-only")
        if self.scale == 0.0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            raise TagError(f"{where}: scale must be finite and non-zero, offset finite")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise TagError(f"{where}: min {self.min} is above max {self.max}")
        if self.scan <= 0:
            raise TagError(f"{where}: scan must be a positive period")


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None


@dataclass(frozen=True, slots=True)
class OpcuaSettings:
    """The converter's own settings (the policy's `opcua:` section) and the tags it serves."""

    host: str
    port: int
    poll_principal: str
    cert: CertFiles
    tags: tuple[Tag, ...]
    security: tuple[str, ...] = DEFAULT_SECURITY
    modes: tuple[str, ...] = DEFAULT_MODES
    users_file: Path | None = None
    application_uri: str = DEFAULT_APPLICATION_URI
    namespace: str = "urn:zonegate:devices"
    timeout: float = 2.0  # one device round trip
    scan_classes: Mapping[str, float] = field(default_factory=dict)


# -- codec -----------------------------------------------------------------------------------------------


def _to_bytes(registers: Sequence[int], tag: Tag) -> bytes:
    """Registers as the device holds them -> the value's big-endian bytes."""
    words = list(registers)
    if tag.word_order == "little":
        words.reverse()
    out = bytearray()
    for word in words:
        pair = word.to_bytes(2, "big")
        out += pair[::-1] if tag.byte_order == "little" else pair
    return bytes(out)


def _to_registers(data: bytes, tag: Tag) -> list[int]:
    """The value's big-endian bytes -> registers in the device's word and byte order."""
    words = []
    for i in range(0, len(data), 2):
        pair = data[i : i + 2]
        words.append(int.from_bytes(pair[::-1] if tag.byte_order == "little" else pair, "big"))
    if tag.word_order == "little":
        words.reverse()
    return words


def decode(tag: Tag, raw: Sequence[int]) -> bool | int | float | str:
    """Registers (or bits, for bool) read from the device -> the engineering value the variable shows."""
    if len(raw) != tag.words:
        raise CodecError(f"tag {tag.name!r} needs {tag.words} values, got {len(raw)}")
    if tag.type == "bool":
        return bool(raw[0])
    if tag.type == "string":
        # Strings read in address order; byte order swaps the characters within each register.
        data = b"".join(
            (w.to_bytes(2, "big")[::-1] if tag.byte_order == "little" else w.to_bytes(2, "big")) for w in raw
        )
        return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    (value,) = struct.unpack(_STRUCT[tag.type], _to_bytes(raw, tag))
    if tag.scaled:
        return float(value) * tag.scale + tag.offset
    return value  # type: ignore[no-any-return]


def encode(tag: Tag, value: object) -> list[int]:
    """An engineering value written by a client -> the registers (or bit) the device must hold.

    Raises CodecError when the value is the wrong kind or does not fit the raw type.
    """
    if tag.type == "bool":
        if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
            raise CodecError(f"tag {tag.name!r} takes a boolean")
        return [int(bool(value))]
    if tag.type == "string":
        if not isinstance(value, str):
            raise CodecError(f"tag {tag.name!r} takes a string")
        data = value.encode("utf-8")
        if len(data) > 2 * tag.length:
            raise CodecError(f"tag {tag.name!r} holds at most {2 * tag.length} bytes")
        data = data.ljust(2 * tag.length, b"\x00")
        return [
            int.from_bytes(data[i : i + 2][::-1] if tag.byte_order == "little" else data[i : i + 2], "big")
            for i in range(0, len(data), 2)
        ]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"tag {tag.name!r} takes a number")
    if not math.isfinite(value) and (tag.type in INTEGER_TYPES or tag.scaled):
        raise CodecError(f"tag {tag.name!r} takes a finite number")
    raw: int | float = (value - tag.offset) / tag.scale if tag.scaled else value
    if tag.type in INTEGER_TYPES:
        if isinstance(raw, float):
            if not raw.is_integer() and not tag.scaled:
                raise CodecError(f"tag {tag.name!r} takes an integer")
            raw = round(raw)
        bits = TYPE_WORDS[tag.type] * 16
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if not tag.type.startswith("u") else (0, (1 << bits) - 1)
        if not lo <= raw <= hi:
            raise CodecError(f"tag {tag.name!r}: raw value {raw} does not fit {tag.type}")
        data = struct.pack(_STRUCT[tag.type], int(raw))
    else:
        try:
            data = struct.pack(_STRUCT[tag.type], float(raw))
        except OverflowError as exc:
            raise CodecError(f"tag {tag.name!r}: {value} does not fit {tag.type}") from exc
    return _to_registers(data, tag)


def accepts(tag: Tag, value: object) -> bool:
    """True when `value` is the kind of value the tag holds (a number, a boolean or a string)."""
    if tag.type == "bool":
        return isinstance(value, bool) or isinstance(value, int) and value in (0, 1)
    if tag.type == "string":
        return isinstance(value, str)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def within_limits(tag: Tag, value: object) -> bool:
    """True when a written value lies within the tag's `min` and `max` (each may be absent: no bound)."""
    if tag.min is None and tag.max is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (tag.min is None or tag.min <= value) and (tag.max is None or value <= tag.max)


def _limit(value: object, where: str) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TagError(f"{where}: expected a number, not {value!r}")
    return value


# -- from the policy -------------------------------------------------------------------------------------


def _duration(value: object, where: str) -> float:
    """Seconds from a number or a string like `100ms`, `1s`, `2.5s`, `1m`."""
    if isinstance(value, bool):
        raise TagError(f"{where}: expected a duration, not {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
            if text.endswith(suffix):
                try:
                    seconds = float(text[: -len(suffix)]) * factor
                except ValueError:
                    raise TagError(f"{where}: expected a duration, not {value!r}") from None
                break
        else:
            raise TagError(f"{where}: expected a duration like 100ms or 1s, not {value!r}")
    else:
        raise TagError(f"{where}: expected a duration, not {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise TagError(f"{where}: a duration must be positive")
    return seconds


def _field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    value = getattr(item, name, default)
    return default if value is None else value


def tags_from_mapping(
    tags: Mapping[str, Iterable[Any]],
    scan_classes: Mapping[str, float] | None = None,
    default_scan: float = DEFAULT_SCAN,
    device_units: Mapping[str, int] | None = None,
) -> tuple[Tag, ...]:
    """The `tags:` section (device -> list of tag entries, mappings or model objects) -> checked tags."""
    classes = dict(scan_classes or {})
    out: list[Tag] = []
    names: set[str] = set()
    for device, entries in tags.items():
        for i, item in enumerate(entries):
            where = f"tags.{device}[{i}]"
            name = _field(item, "name")
            if not isinstance(name, str) or not name:
                raise TagError(f"{where}: a tag needs a name")
            if name in names:
                raise TagError(f"{where}: tag name {name!r} is used twice")
            names.add(name)
            scan_value = _field(item, "scan")
            cip_tag = _field(item, "cip_tag")
            if cip_tag is not None:
                out.append(_cip_tag(item, where, name, str(device), str(cip_tag), _scan(scan_value, classes, default_scan,
                                                                                       where)))
                continue
            table = TABLE_ALIASES.get(str(_field(item, "table", "")))
            if table is None:
                raise TagError(f"{where}: table must be one of {sorted(set(TABLE_ALIASES.values()))}")
            scan = _scan(scan_value, classes, default_scan, where)
            tag = Tag(
                name=name,
                device=str(device),
                table=table,
                address=int(_field(item, "address", -1)),
                type=str(_field(item, "type", "uint16")),
                length=int(_field(item, "length", 0) or 0),
                word_order=_field(item, "word_order", "big"),
                byte_order=_field(item, "byte_order", "big"),
                scale=float(_field(item, "scale", 1.0)),
                offset=float(_field(item, "offset", 0.0)),
                unit=_field(item, "unit"),
                description=_field(item, "description"),
                writable=bool(_field(item, "writable", False)),
                min=_limit(_field(item, "min"), f"{where}.min"),
                max=_limit(_field(item, "max"), f"{where}.max"),
                scan=scan,
                modbus_unit=int(_field(item, "modbus_unit", (device_units or {}).get(str(device), 1))),
            )
            if tag.word_order not in ("big", "little") or tag.byte_order not in ("big", "little"):
                raise TagError(f"{where}: word_order and byte_order are big or little")
            tag.check()
            out.append(tag)
    _check_overlaps(out)
    return tuple(out)


def _scan(value: object, classes: Mapping[str, float], default_scan: float, where: str) -> float:
    if isinstance(value, str) and value in classes:
        return classes[value]
    if value is None:
        return default_scan
    return _duration(value, f"{where}.scan")


def _cip_tag(item: Any, where: str, name: str, device: str, cip_tag: str, scan: float) -> Tag:
    """A `cip_tag:` entry: a Logix tag by name (table and address do not apply)."""
    for key in ("table", "address", "length", "modbus_unit"):
        if _field(item, key) is not None:
            raise TagError(f"{where}: {key} is for Modbus tags, not a cip_tag tag")
    tag = Tag(
        name=name,
        device=device,
        table="cip",
        address=0,
        type=str(_field(item, "type", "dint")),
        scale=float(_field(item, "scale", 1.0)),
        offset=float(_field(item, "offset", 0.0)),
        unit=_field(item, "unit"),
        description=_field(item, "description"),
        writable=bool(_field(item, "writable", False)),
        min=_limit(_field(item, "min"), f"{where}.min"),
        max=_limit(_field(item, "max"), f"{where}.max"),
        scan=scan,
        modbus_unit=0,
        cip_tag=cip_tag,
    )
    tag.check()
    return tag


def _check_overlaps(tags: Sequence[Tag]) -> None:
    by_place: dict[tuple[str, str, int], list[Tag]] = {}
    for tag in tags:
        if tag.cip_tag is not None:
            continue
        by_place.setdefault((tag.device, tag.table, tag.modbus_unit), []).append(tag)
    for group in by_place.values():
        group.sort(key=lambda t: t.address)
        for before, after in zip(group, group[1:]):
            if after.address <= before.end:
                raise TagError(f"tags {before.name!r} and {after.name!r} overlap on {before.device} {before.table}")


def settings_from_mapping(
    opcua: Mapping[str, Any] | Any,
    tags: Mapping[str, Iterable[Any]],
    device_units: Mapping[str, int] | None = None,
) -> OpcuaSettings:
    """The policy's `opcua:` and `tags:` sections (as YAML mappings or model objects) -> settings."""
    bind = _field(opcua, "bind", "127.0.0.1:4840")
    if isinstance(bind, str):
        host, _, port_text = bind.rpartition(":")
        host, port = host.strip("[]") or "127.0.0.1", int(port_text)
    else:
        host, port = str(_field(bind, "host")), int(_field(bind, "port"))
    classes = {str(k): _duration(v, f"opcua.scan_classes.{k}") for k, v in (_field(opcua, "scan_classes") or {}).items()}
    declared_scan = _field(opcua, "default_scan", DEFAULT_SCAN)
    if isinstance(declared_scan, str) and declared_scan in classes:
        default_scan = classes[declared_scan]
    else:
        default_scan = _duration(declared_scan, "opcua.default_scan")
    cert = _field(opcua, "cert")
    if cert is None:
        raise TagError("opcua.cert: the server needs cert, key and ca files")
    crl = _field(cert, "crl")
    security = tuple(str(s) for s in (_field(opcua, "security") or DEFAULT_SECURITY))
    modes = tuple(str(m) for m in (_field(opcua, "modes") or DEFAULT_MODES))
    users = _field(opcua, "users_file") or _field(opcua, "users")
    poll_principal = _field(opcua, "poll_principal")
    if not poll_principal:
        raise TagError("opcua.poll_principal: polls are decided for a declared principal")
    return OpcuaSettings(
        host=host,
        port=port,
        poll_principal=str(poll_principal),
        cert=CertFiles(Path(_field(cert, "cert")), Path(_field(cert, "key")), Path(_field(cert, "ca")),
                       Path(crl) if crl else None),
        tags=tags_from_mapping(tags, classes, default_scan, device_units),
        security=security,
        modes=modes,
        users_file=Path(users) if users else None,
        application_uri=str(_field(opcua, "application_uri", DEFAULT_APPLICATION_URI)),
        timeout=float(_field(opcua, "timeout", 2.0)),
        scan_classes=classes,
    )


def settings_from_policy(policy: Any) -> OpcuaSettings:
    """The converter's settings from a loaded policy's `opcua:` and `tags:` sections.

    A tag with no `modbus_unit` uses its device's first unit (1 when the device lists none); the
    round-trip timeout is `opcua.timeout`, by default the slowest served device's Modbus timeout.
    """
    opcua = getattr(policy, "opcua", None)
    tags = getattr(policy, "tags", None)
    if opcua is None or not tags:
        raise TagError("the policy has no opcua: section (or no tags:) to serve")
    units: dict[str, int] = {}
    for device in policy.ir()["devices"]:
        ranges = device.get("units")
        units[device["name"]] = int(ranges[0][0]) if ranges else 1
    settings = settings_from_mapping(opcua, tags, units)
    if getattr(opcua, "timeout", None) is not None:
        return settings
    timeouts = [
        float(section.timeout)
        for name, device in policy.devices.items()
        if name in tags
        for section in (getattr(device, "modbus", None), getattr(device, "enip", None))
        if section is not None and getattr(section, "timeout", None) is not None
    ]
    if timeouts:
        settings = replace(settings, timeout=max(timeouts))
    return settings
