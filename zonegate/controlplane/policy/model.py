"""Policy loading, second stage: the typed policy model (pydantic), validated from the plain YAML data.

Every textual form (durations, rates, ranges, functions, CIDRs, endpoints) is parsed here into typed
values with its defaults resolved, so consumers (the engine compiler, the conduits, the nftables
renderer) read attributes and never re-parse. The JSON Schema for editors is generated from these
classes; fields whose YAML form differs from their Python type carry their input schema explicitly.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography import x509
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import cip
from . import functions as fn
from . import tags as tg
from .addresses import TABLES, AddressRange, parse_table
from .errors import FieldError, Issue
from .scalars import (
    RateSpec,
    is_int,
    parse_duration,
    parse_endpoint,
    parse_network,
    parse_networks,
    parse_port,
    parse_rate,
    parse_units,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
NAME_PATTERN = _NAME.pattern

# Transparent mode: diverted connections carry this firewall mark, and a policy-routing rule sends marked
# packets to this routing table (its one route delivers locally). The kernel owns tables 253-255.
DIVERT_MARK = 0x5A47
DIVERT_TABLE = 23111
RESERVED_ROUTING_TABLES = frozenset({253, 254, 255})


class UnknownKey:
    """Stands in for the value of a key the model does not have, carrying the hint for the message."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"UnknownKey({self.message!r})"


def _fail(exc: FieldError) -> PydanticCustomError:
    return PydanticCustomError(
        "zonegate", "{message}",
        {"message": exc.message, "subpath": exc.subpath, "suggestion": exc.suggestion},
    )


def parsed(parser: Callable[[object], Any], schema: dict[str, Any]) -> tuple[PlainValidator, WithJsonSchema]:
    """Annotated metadata: validate with `parser` (raising FieldError), document with `schema`."""

    def validate(value: object) -> Any:
        try:
            return parser(value)
        except FieldError as exc:
            raise _fail(exc) from None

    return PlainValidator(validate), WithJsonSchema(schema)


def _bounded(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if not is_int(value):
            raise FieldError(f"expected a whole number {low}-{high}, not {value!r}")
        if not low <= value <= high:  # type: ignore[operator]
            raise FieldError(f"{value} is out of range {low}-{high}")
        return value  # type: ignore[return-value]

    return check


def Bounded(low: int, high: int) -> Any:
    return Annotated[int, *parsed(_bounded(low, high), {"type": "integer", "minimum": low, "maximum": high})]


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(f"expected non-empty text, not {value!r}")
    return value


def _texts(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("list at least one")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(_text(item))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return tuple(out)


def _name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise FieldError(f"bad name {value!r}: letters, digits, '_', '.', '-', starting with a letter or digit")
    return value


def _names(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise FieldError("name at least one")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(_name(item))
        except FieldError as exc:
            raise FieldError(exc.message, (n,) if isinstance(value, list) else ()) from None
    return tuple(out)


def _interface(value: object) -> str:
    if not isinstance(value, str) or not _IFNAME.match(value):
        raise FieldError(f"bad interface name {value!r}: at most 15 characters, no spaces or '/'")
    return value


def _host(value: object) -> str:
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            if _HOSTNAME.match(value.strip()):
                return value.strip()
    raise FieldError(f"bad host {value!r}: an IP address or a DNS name")


def normalise_subject(value: str) -> tuple[tuple[str, str], ...]:
    """An RFC 4514 subject -> its attributes as sorted (OID, value) pairs, so order does not matter."""
    name = x509.Name.from_rfc4514_string(value)
    return tuple(sorted((attr.oid.dotted_string, str(attr.value)) for attr in name))


def _subjects(value: object) -> tuple[str, ...]:
    out = _texts(value)
    for n, subject in enumerate(out):
        try:
            if not normalise_subject(subject):
                raise ValueError("empty")
        except ValueError:
            raise FieldError(
                f"bad certificate subject {subject!r}: write RFC 4514, e.g. CN=auditor-1,O=Plant",
                (n,) if isinstance(value, list) else (),
            ) from None
    return out


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"expected true or false, not {value!r}")
    return value


def _function_item(value: object) -> frozenset[fn.FunctionKey]:
    return fn.resolve(value)


_SCHEMA_TEXT = {"type": "string", "minLength": 1}
_SCHEMA_TEXTS = {"anyOf": [_SCHEMA_TEXT, {"type": "array", "items": _SCHEMA_TEXT, "minItems": 1}]}
_SCHEMA_NAME = {"type": "string", "pattern": NAME_PATTERN}
_SCHEMA_NAMES = {"anyOf": [_SCHEMA_NAME, {"type": "array", "items": _SCHEMA_NAME, "minItems": 1}]}
_SCHEMA_DURATION = {
    "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|min|h)?\s*$"}],
    "description": "300ms, 5s, 2m, 1h or a number of seconds",
}
_SCHEMA_RATE = {
    "type": "string", "pattern": r"^\s*\d+\s*/\s*(s|sec|second|min|minute|h|hour)\s*$",
    "description": "COUNT/s, COUNT/min or COUNT/h",
}
_SCHEMA_NETWORK = {"type": "string", "description": "an IP address or a CIDR, e.g. 192.168.10.0/24"}
_SCHEMA_NETWORKS = {"anyOf": [_SCHEMA_NETWORK, {"type": "array", "items": _SCHEMA_NETWORK, "minItems": 1}]}
_SCHEMA_ENDPOINT = {"type": "string", "description": "HOST:PORT, e.g. 127.0.0.1:8802"}
_SCHEMA_SPAN = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 65535},
        {"type": "string", "pattern": r"^\s*\d+\s*(-\s*\d+\s*)?$"},
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    ]
}
_SCHEMA_UNITS = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 255},
        {"type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 255},
            {"type": "string", "pattern": r"^\s*\d+\s*(-\s*\d+\s*)?$"},
        ]}},
    ],
    "description": "unit ids: 1, [1, 2] or [1, 5-7]",
}
_SCHEMA_BOUND = {"type": "integer", "minimum": -32768, "maximum": 65535}


def _table_schema(table: str) -> dict[str, Any]:
    if table == "file_records":
        item: dict[str, Any] = {
            "type": "object", "additionalProperties": False, "required": ["file", "records"],
            "properties": {
                "file": {"type": "integer", "minimum": 1, "maximum": 65535},
                "records": _SCHEMA_SPAN, "min": _SCHEMA_BOUND, "max": _SCHEMA_BOUND, "signed": {"type": "boolean"},
            },
        }
        return {"anyOf": [item, {"type": "array", "items": item}]}
    bounded = {
        "type": "object", "additionalProperties": False, "required": ["range"],
        "properties": {"range": _SCHEMA_SPAN, "min": _SCHEMA_BOUND, "max": _SCHEMA_BOUND, "signed": {"type": "boolean"}},
    }
    one = {"anyOf": [*_SCHEMA_SPAN["anyOf"], bounded]}
    return {
        "anyOf": [*one["anyOf"], {"type": "array", "items": one}],
        "description": f"zero-based {table.replace('_', ' ')} addresses: 100-109, 100, [100, 109], "
        "{range: 100-109, min: 0, max: 1500, signed: false}, or a list of these",
    }


def _table(table: str) -> Any:
    return Annotated[tuple[AddressRange, ...], *parsed(lambda v: parse_table(v, table), _table_schema(table))]


_SCHEMA_FUNCTION = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 127},
        {"type": "string", "enum": fn.all_spellings()},
        {"type": "string", "pattern": r"^\s*\d+\s*/\s*\w+\s*$"},
    ],
}

Text = Annotated[str, *parsed(_text, _SCHEMA_TEXT)]
Texts = Annotated[tuple[str, ...], *parsed(_texts, _SCHEMA_TEXTS)]
Name = Annotated[str, *parsed(_name, _SCHEMA_NAME)]
Names = Annotated[tuple[str, ...], *parsed(_names, _SCHEMA_NAMES)]
Duration = Annotated[float, *parsed(parse_duration, _SCHEMA_DURATION)]
Rate = Annotated[RateSpec, *parsed(parse_rate, _SCHEMA_RATE)]
Network = Annotated[str, *parsed(parse_network, _SCHEMA_NETWORK)]
Networks = Annotated[tuple[str, ...], *parsed(lambda v: tuple(parse_networks(v)), _SCHEMA_NETWORKS)]
Units = Annotated[tuple[tuple[int, int], ...], *parsed(lambda v: tuple(parse_units(v)), _SCHEMA_UNITS)]
def _subnets(value: object) -> tuple[str, ...]:
    """One CIDR or a list of them, none repeated or overlapping another (a prefix belongs to one place)."""
    out = parse_networks(value)
    for n, cidr in enumerate(out):
        network = ipaddress.ip_network(cidr)
        for other in out[:n]:
            earlier = ipaddress.ip_network(other)
            if network.version == earlier.version and network.overlaps(earlier):
                raise FieldError(f"{cidr} overlaps {other}, listed before it", (n,))
    return tuple(out)


Subnets = Annotated[tuple[str, ...], *parsed(_subnets, _SCHEMA_NETWORKS)]
Port = Annotated[int, *parsed(parse_port, {"type": "integer", "minimum": 1, "maximum": 65535})]
Host = Annotated[str, *parsed(_host, {"type": "string", "description": "an IP address or a DNS name"})]
Interface = Annotated[str, *parsed(_interface, {"type": "string", "maxLength": 15})]
Bool = Annotated[bool, *parsed(_bool, {"type": "boolean"})]
Subjects = Annotated[tuple[str, ...], *parsed(_subjects, _SCHEMA_TEXTS)]
FunctionItem = Annotated[frozenset[fn.FunctionKey], *parsed(_function_item, _SCHEMA_FUNCTION)]


class Endpoint(BaseModel):
    """An address to bind: `host` is an IP literal."""

    model_config = ConfigDict(frozen=True)
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _endpoint(value: object) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    host, port = parse_endpoint(value)
    return Endpoint(host=host, port=port)


Bind = Annotated[Endpoint, *parsed(_endpoint, _SCHEMA_ENDPOINT)]


def _pki_path(value: object, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise _fail(FieldError(f"expected a file path, not {value!r}"))
    path = Path(value).expanduser()
    base = Path((info.context or {}).get("pki_dir") or ".")
    return (base / path).resolve() if not path.is_absolute() else path


PkiPath = Annotated[Path, PlainValidator(_pki_path), WithJsonSchema({"type": "string", "description": "a file; relative paths are read from pki_dir"})]


class Section(BaseModel):
    """Common behaviour: unknown keys are errors, with the closest known key as a hint."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, json_schema_extra=lambda s, cls: _schema_aliases(s, cls)
    )

    @model_validator(mode="before")
    @classmethod
    def _mark_unknown_keys(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        known: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            choices = info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else None
            for alias in choices or [info.alias or name]:
                known[str(alias)] = name
        marked = dict(data)
        seen: dict[str, object] = {}
        for key in data:
            if not isinstance(key, str) or key not in known:
                near = get_close_matches(str(key), list(known), n=1, cutoff=0.6)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; expected one of: {', '.join(known)}"
                marked[key] = UnknownKey(f"unknown key {str(key)!r}{hint}")
            elif known[key] in seen:
                marked[key] = UnknownKey(f"{key!r} repeats {seen[known[key]]!r}: write one of them")
            else:
                seen[known[key]] = key
        return marked


def _schema_aliases(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    props = schema.get("properties", {})
    for info in cls.model_fields.values():
        if isinstance(info.validation_alias, AliasChoices):
            choices = [str(c) for c in info.validation_alias.choices]
            first = next((c for c in choices if c in props), None)
            for alias in choices:
                if first and alias not in props:
                    props[alias] = props[first]
            required = schema.get("required", [])
            if len(choices) > 1 and first in required:
                required.remove(first)
                schema.setdefault("allOf", []).append({"oneOf": [{"required": [alias]} for alias in choices]})
        if "required" in schema and not schema["required"]:
            del schema["required"]


class Zone(Section):
    """A cell/area zone: the interface facing it and its subnet."""

    description: Text | None = None
    """Free text for people reading the policy."""
    interface: Interface | None = None
    """The box's network interface facing this zone (nftables matches on it)."""
    subnet: Subnets | None = None
    """The zone's subnet(s): one CIDR, or a list (a dual-stack zone: an IPv4 and an IPv6 prefix)."""


class TlsFiles(Section):
    """Certificate, key, CA bundle and optional CRL, as files; relative paths are read from pki_dir."""

    cert: PkiPath
    """This side's certificate (PEM)."""
    key: PkiPath
    """This side's private key (PEM, file mode 0600)."""
    ca: PkiPath
    """CA bundle the peer's certificate must chain to (PEM)."""
    crl: PkiPath | None = None
    """Certificate revocation list (PEM); optional."""


class ModbusDevice(Section):
    """How zonegate reaches a device over Modbus/TCP (or Modbus/TCP Security when `tls` is set)."""

    host: Host
    """The device's IP address or DNS name."""
    port: Port = 502
    """The device's Modbus/TCP port."""
    units: Units | None = Field(default=None, description="Unit ids the device answers; omitted = any unit.")
    max_connections: Bounded(1, 64) = 1  # type: ignore[valid-type]
    """Connections zonegate may open to the device (PLCs have few slots)."""
    pipelining: Bool = False
    """Send the next request before the previous reply arrives (only if the device supports it)."""
    pipeline_depth: Bounded(1, 256) = 16  # type: ignore[valid-type]
    """With pipelining, requests in flight per connection (the device's own limit, if it has one)."""
    timeout: Duration = 2.0
    """How long to wait for the device's reply."""
    tls: TlsFiles | None = None
    """Connect with Modbus/TCP Security using this client certificate (a level-3 server)."""


class EnipDevice(Section):
    """How zonegate reaches a device over EtherNet/IP (CIP explicit messaging)."""

    host: Host
    """The device's IP address or DNS name."""
    port: Port = 44818
    """The device's EtherNet/IP port."""
    max_connections: Bounded(1, 64) = 1  # type: ignore[valid-type]
    """TCP connections zonegate may open to the device (controllers have few)."""
    timeout: Duration = 2.0
    """How long to wait for the device's reply."""


class Device(Section):
    """A device zonegate relays to: a PLC in a zone, or a level-3 server for the outbound direction."""

    zone: Name
    """The zone the device sits in."""
    description: Text | None = None
    """Free text for people reading the policy."""
    modbus: ModbusDevice | None = None
    """How zonegate reaches the device over Modbus/TCP."""
    enip: EnipDevice | None = None
    """How zonegate reaches the device over EtherNet/IP."""

    @model_validator(mode="after")
    def _reachable(self) -> Device:
        if self.modbus is None and self.enip is None:
            raise _fail(FieldError("a device needs modbus, enip or both: how zonegate reaches it"))
        return self


class Principal(Section):
    """Who is asking: matched by certificate role, certificate subject, OPC UA user or source address."""

    description: Text | None = None
    """Free text for people reading the policy."""
    tls_role: Texts = ()
    """Modbus/TCP Security role(s) (certificate extension 1.3.6.1.4.1.50316.802.1)."""
    tls_subject: Subjects = ()
    """Certificate subject(s), RFC 4514 (CN=auditor-1,O=Plant); attribute order does not matter."""
    opcua_user: Texts = ()
    """OPC UA user name(s)."""
    source: Networks = ()
    """Client address(es) or CIDR(s), for plain zone-side clients; the most specific match wins."""
    gateway: Bool = False
    """zonegate itself (the OPC UA converter's poller): no client can ever be this principal."""

    @model_validator(mode="after")
    def _identified(self) -> Principal:
        identified = bool(self.tls_role or self.tls_subject or self.opcua_user or self.source)
        if self.gateway and identified:
            raise _fail(FieldError(
                "a gateway principal is zonegate itself: it takes no tls_role, tls_subject, opcua_user or source",
                ("gateway",),
            ))
        if not (identified or self.gateway):
            raise _fail(FieldError("a principal needs tls_role, tls_subject, opcua_user or source (or gateway: true)"))
        return self


class AllowEntry(Section):
    """What one allow entry permits: functions, addresses per table, quantity and rate limits."""

    functions: tuple[FunctionItem, ...]
    """Function names, numbers, FC/SUB pairs or presets (read_only, read_write, diagnostics, programming)."""
    coils: _table("coils") = ()  # type: ignore[valid-type]
    """Coil addresses (zero-based) this entry allows."""
    discrete_inputs: _table("discrete_inputs") = ()  # type: ignore[valid-type]
    """Discrete input addresses (zero-based) this entry allows."""
    input_registers: _table("input_registers") = ()  # type: ignore[valid-type]
    """Input register addresses (zero-based) this entry allows."""
    holding_registers: _table("holding_registers") = Field(  # type: ignore[valid-type]
        default=(), validation_alias=AliasChoices("holding", "holding_registers")
    )
    """Holding register addresses (zero-based) this entry allows, with optional write-value bounds."""
    file_records: _table("file_records") = ()  # type: ignore[valid-type]
    """File records (FC 20/21) this entry allows: {file: N, records: 0-99}."""
    max_quantity: Bounded(1, 2000) | None = None  # type: ignore[valid-type]
    """The most addresses one request may touch in one range."""
    rate: Rate | None = None
    """Requests allowed per second, minute or hour (5/s, 30/min, 100/h), per principal."""
    burst: Bounded(1, 1_000_000) | None = None  # type: ignore[valid-type]
    """Requests allowed at once; default: the rate's count."""

    @model_validator(mode="before")
    @classmethod
    def _functions_as_list(cls, data: object) -> object:
        if isinstance(data, dict) and "functions" in data and not isinstance(data["functions"], list):
            return {**data, "functions": [data["functions"]]}
        return data

    @model_validator(mode="after")
    def _entry_is_complete(self) -> AllowEntry:
        if not self.functions:
            raise _fail(FieldError("must not be empty", ("functions",)))
        if self.burst is not None and self.rate is None:
            raise _fail(FieldError("burst needs a rate", ("burst",)))
        return self

    @property
    def function_keys(self) -> list[fn.FunctionKey]:
        """Every (fc, sub) this entry allows, sorted."""
        keys: set[fn.FunctionKey] = set().union(*self.functions)
        return sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1]))

    def table(self, name: str) -> tuple[AddressRange, ...]:
        return getattr(self, name)  # type: ignore[no-any-return]

    @property
    def effective_burst(self) -> int | None:
        """The bucket size: `burst`, or the rate's count when not given."""
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else self.rate.count


_SCHEMA_CIP_SERVICE = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 127},
        {"type": "string", "enum": cip.all_service_spellings()},
        {"type": "string", "pattern": r"^\s*(0[xX][0-9A-Fa-f]+|\d+)\s*$"},
    ],
}
_SCHEMA_LOGICAL_ONE = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": cip.U32_MAX},
        {"type": "string", "pattern": r"^\s*(0[xX][0-9A-Fa-f]+|\d+)\s*(-\s*(0[xX][0-9A-Fa-f]+|\d+)\s*)?$"},
    ],
}
_SCHEMA_LOGICAL = {
    "anyOf": [*_SCHEMA_LOGICAL_ONE["anyOf"], {"type": "array", "items": _SCHEMA_LOGICAL_ONE, "minItems": 1}],
    "description": "one value (1, 0x6B), a range (\"1-7\"), or a list of both",
}
_SCHEMA_TAG_PATTERN = {"type": "string", "pattern": r"^[A-Za-z0-9_:*\[\].,\s]+$"}
_SCHEMA_ROUTE = {"type": "string", "description": "PORT,LINK hops joined by '/', e.g. \"1,0\"; \"\" is the device itself"}

CipServices = Annotated[cip.ServiceSet, *parsed(cip.parse_services, {
    "anyOf": [_SCHEMA_CIP_SERVICE, {"type": "array", "items": _SCHEMA_CIP_SERVICE, "minItems": 1}],
})]


def _logical(what: str) -> Any:
    return Annotated[tuple[tuple[int, int], ...], *parsed(lambda v: cip.parse_logical(v, what), _SCHEMA_LOGICAL)]


TagPatterns = Annotated[tuple[cip.TagPattern, ...], *parsed(cip.parse_tag_patterns, {
    "anyOf": [_SCHEMA_TAG_PATTERN, {"type": "array", "items": _SCHEMA_TAG_PATTERN, "minItems": 1}],
    "description": "tag-name patterns: Line1.*, Press_SP[0..9], Program:Main.Speed",
})]
Routes = Annotated[tuple[cip.Route, ...], *parsed(cip.parse_routes, {
    "anyOf": [_SCHEMA_ROUTE, {"type": "array", "items": _SCHEMA_ROUTE, "minItems": 1}],
})]


class CipEntry(Section):
    """What one cip entry permits: services, on tags or logical addresses, by which routes, how often."""

    services: CipServices
    """Service names, presets (read_only, read_write, programming) or codes 0x00-0x7f."""
    tags: TagPatterns | None = None
    """Tag-name patterns the services may reach (not with class/instance/attribute)."""
    class_: _logical("class") | None = Field(default=None, validation_alias=AliasChoices("class"))  # type: ignore[valid-type]
    """Object classes the services may reach: 0x01, \"0x01-0x07\", or a list."""
    instance: _logical("instance") | None = None  # type: ignore[valid-type]
    """Instances the services may reach (a request without an instance does not match)."""
    attribute: _logical("attribute") | None = None  # type: ignore[valid-type]
    """Attributes the services may reach (a request without an attribute does not match)."""
    routes: Routes | None = None
    """Routes a request may take beyond the device (\"1,0\": backplane slot 0); default: any."""
    rate: Rate | None = None
    """Requests allowed per second, minute or hour (5/s, 30/min, 100/h), per principal."""
    burst: Bounded(1, 1_000_000) | None = None  # type: ignore[valid-type]
    """Requests allowed at once; default: the rate's count."""

    @model_validator(mode="after")
    def _entry_is_complete(self) -> CipEntry:
        logical = self.class_ is not None or self.instance is not None or self.attribute is not None
        if self.tags is not None and logical:
            key = "class" if self.class_ is not None else "instance" if self.instance is not None else "attribute"
            raise _fail(FieldError(
                "an entry names tags or a class/instance/attribute, not both: split it in two", (key,),
            ))
        if self.tags is None and not logical:
            targeted = sorted(self.services.names - cip.NO_TARGET_SERVICES)
            codes = sorted(self.services.codes)
            if targeted or codes:
                named = targeted + [f"{c:#04x}" for c in codes]
                raise _fail(FieldError(
                    f"name the tags or the class the entry allows: {', '.join(named)} "
                    f"{'reaches' if len(named) == 1 else 'reach'} a target", ("services",),
                ))
        if self.burst is not None and self.rate is None:
            raise _fail(FieldError("burst needs a rate", ("burst",)))
        return self

    @property
    def effective_burst(self) -> int | None:
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else self.rate.count


class Rule(Section):
    """An allow rule: which principals may do what on which devices. Everything else is denied."""

    id: Name
    """Stable id: audit records and metrics name the rule by it."""
    description: Text | None = None
    """Free text for people reading the policy."""
    principals: Names = Field(validation_alias=AliasChoices("principal", "principals"))
    """The principal(s) this rule is for."""
    devices: Names = Field(validation_alias=AliasChoices("device", "devices"))
    """The device(s) this rule is for."""
    units: Units | None = Field(default=None, description="Unit ids; omitted = the units of the device.")
    allow: Annotated[list[AllowEntry], Field(min_length=1)] = []
    """Modbus: what is allowed, tried in order; the first entry that admits a request decides."""
    cip: Annotated[list[CipEntry], Field(min_length=1)] = []
    """EtherNet/IP: what is allowed, tried in order; the first entry that admits a request decides."""

    @model_validator(mode="after")
    def _allows_something(self) -> Rule:
        if not self.allow and not self.cip:
            raise _fail(FieldError("a rule needs allow (Modbus) or cip (EtherNet/IP) entries, or both"))
        return self


class Listener(Section):
    """A server socket zonegate accepts clients on, and the devices its requests go to."""

    name: Name
    """Names the listener in metrics and audit records."""
    protocol: Literal["modbus", "modbus_tls", "enip", "enip_tls"]
    """modbus_tls: Modbus/TCP Security server (principals from certificates); modbus: plain, by source address;
    enip_tls: EtherNet/IP over TLS (principals from certificates); enip: plain EtherNet/IP, by source address."""
    bind: Bind
    """IP:PORT to listen on."""
    devices: Names
    """Devices requests go to: Modbus, the one whose units hold the request's unit id; EtherNet/IP, its one device."""
    tls: TlsFiles | None = None
    """Server certificate, key, CA bundle and optional CRL (modbus_tls and enip_tls only)."""
    max_outstanding: Bounded(1, 1000) = 10  # type: ignore[valid-type]
    """Requests one connection may have in flight."""
    idle_timeout: Duration = 300.0
    """Close a connection that sends nothing for this long."""
    request_timeout: Duration = 5.0
    """Answer exception 0x0B when a request gets no reply within this time."""
    allow_from: Networks | None = Field(default=None, description="Client CIDRs; omitted = derived from the zones.")
    transparent: Bool = False
    """Take over the clients' connections to the devices' own addresses (nftables tproxy); modbus only."""

    @model_validator(mode="after")
    def _tls_matches_protocol(self) -> Listener:
        if self.protocol.endswith("_tls") and self.tls is None:
            article = "an" if self.protocol.startswith("enip") else "a"
            raise _fail(FieldError(f"{article} {self.protocol} listener needs tls: {{cert, key, ca}}"))
        if not self.protocol.endswith("_tls") and self.tls is not None:
            raise _fail(FieldError(f"tls is only for {self.protocol}_tls listeners", ("tls",)))
        if self.protocol.startswith("enip") and len(self.devices) != 1:
            raise _fail(FieldError(
                "an EtherNet/IP listener relays to one device (a CIP request names no unit id to pick one by)",
                ("devices",),
            ))
        if self.transparent and self.protocol != "modbus":
            raise _fail(FieldError(
                "transparent is only for plain modbus listeners (a diverted client speaks plain Modbus/TCP)",
                ("transparent",),
            ))
        return self

    @property
    def host(self) -> str:
        return self.bind.host

    @property
    def speaks(self) -> Literal["modbus", "enip"]:
        """The protocol its devices are reached by."""
        return "enip" if self.protocol.startswith("enip") else "modbus"

    @property
    def port(self) -> int:
        return self.bind.port


class Metrics(Section):
    """The Prometheus endpoint."""

    bind: Bind = Field(default_factory=lambda: _endpoint("127.0.0.1:9802"))
    """IP:PORT of the Prometheus endpoint."""
    allow_from: Networks = ("127.0.0.1/32",)
    """Addresses allowed to scrape it."""


def _audit_path(value: object, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(FieldError(f"expected '-' (stdout) or a file path, not {value!r}"))
    if value == "-":
        return value
    path = Path(value).expanduser()
    base = Path((info.context or {}).get("base_dir") or ".")
    return str(path if path.is_absolute() else (base / path).resolve())


class Audit(Section):
    """Audit records (JSON lines): `-` is stdout; relative file paths are read from the policy's directory."""

    path: Annotated[str, PlainValidator(_audit_path), WithJsonSchema({"type": "string"})] = "-"
    """'-' for stdout, else a file (JSON lines)."""
    max_per_second: Bounded(1, 1_000_000) = 100  # type: ignore[valid-type]
    """Records written per second at most; the rest are counted as suppressed."""


class Firewall(Section):
    """What the nftables ruleset logs and limits."""

    log_group: Bounded(0, 65535) = 1  # type: ignore[valid-type]
    """nflog group of dropped-packet log entries."""
    log_rate: Rate = Field(default_factory=lambda: parse_rate("10/s"))
    """Dropped packets logged at most this often."""
    connection_rate: Rate = Field(default_factory=lambda: parse_rate("20/s"))
    """New connections accepted per source at most this often."""
    divert_mark: Bounded(1, 0xFFFFFFFF) = DIVERT_MARK  # type: ignore[valid-type]
    """Firewall mark of connections diverted to a transparent listener (1..0xffffffff)."""
    divert_table: DivertTable = DIVERT_TABLE
    """Routing table that delivers marked packets locally (1..2147483647, not 253-255)."""


def _divert_table(value: object) -> int:
    number = _bounded(1, 0x7FFFFFFF)(value)
    if number in RESERVED_ROUTING_TABLES:
        raise FieldError(f"routing table {number} is reserved (253 default, 254 main, 255 local): pick another")
    return number


DivertTable = Annotated[int, *parsed(_divert_table, {
    "type": "integer", "minimum": 1, "maximum": 0x7FFFFFFF, "not": {"enum": sorted(RESERVED_ROUTING_TABLES)},
})]


class Flow(Section):
    """A direct flow allowed through the box without a conduit (declared for the firewall)."""

    id: Name
    """Stable id of the flow."""
    source: Network = Field(validation_alias=AliasChoices("from"))
    """Source address or CIDR (YAML key `from`)."""
    to: Network
    """Destination address or CIDR."""
    proto: Literal["tcp", "udp"]
    port: Port
    """Destination port."""

    @property
    def from_(self) -> str:
        """The `from` CIDR as written in YAML (`source` is the same value)."""
        return self.source


_TAG_NAME = re.compile(r"^(?=.{1,128}$)[A-Za-z0-9][A-Za-z0-9_.-]*(?:[ /][A-Za-z0-9_.-]+)*$")


def _tag_name(value: object) -> str:
    if not isinstance(value, str) or not _TAG_NAME.match(value):
        raise FieldError(
            f"bad tag name {value!r}: letters, digits, '_', '.', '-', single spaces or '/' between words, "
            "at most 128 characters"
        )
    return value


TagName = Annotated[str, *parsed(_tag_name, {"type": "string", "pattern": _TAG_NAME.pattern})]
TagTable = Annotated[str, *parsed(tg.parse_table, {"type": "string", "enum": [*tg.TAG_TABLES, "holding"]})]
TagType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "int64", "uint64", "string",
                  "sint", "int", "dint", "lint", "real", "lreal"]
CipTagName = Annotated[str, *parsed(tg.parse_cip_tag, {"type": "string", "pattern": tg.CIP_TAG_NAME.pattern})]
Number = Annotated[float, *parsed(tg.finite_number, {"type": "number"})]
Limit = Annotated[int | float, *parsed(tg.exact_number, {"type": "number"})]


class Tag(Section):
    """One value of a device's table (or one Logix tag), served as an OPC UA variable. Limits are in
    engineering units."""

    name: TagName
    """The variable's name under its device's folder ('/' between words makes sub-folders)."""
    cip_tag: CipTagName | None = None
    """A Logix tag of a device with an enip section (Line1.Speed, Recipe[3], Program:Main.Count): the tag is
    read with Read Tag and written with Write Tag instead of table and address."""
    table: TagTable | None = None
    """coils, discrete_inputs, input_registers or holding (holding_registers); Modbus tags only."""
    address: Bounded(0, 65535) | None = None  # type: ignore[valid-type]
    """The first address (zero-based) the value occupies; Modbus tags only."""
    type: TagType
    """Modbus: bool (coils, discrete inputs); int16, uint16, int32, uint32, float32, float64, int64, uint64,
    string (registers). CIP: bool, sint, int, dint, lint, real, lreal, string (Logix types)."""
    length: Bounded(1, tg.MAX_STRING_REGISTERS) | None = None  # type: ignore[valid-type]
    """Registers a string spans (two characters each); string tags only."""
    word_order: Literal["big", "little"] = "big"
    """Order of the registers of a 32- or 64-bit value: big = most significant register first."""
    byte_order: Literal["big", "little"] = "big"
    """Order of the two bytes in each register: big = as Modbus sends them."""
    scale: Number = 1.0
    """Engineering value = raw value * scale + offset."""
    offset: Number = 0.0
    """Engineering value = raw value * scale + offset."""
    unit: Text | None = None
    """Engineering unit (OPC UA EngineeringUnits), e.g. degC, rpm, m3/h."""
    description: Text | None = None
    """Free text; also the variable's OPC UA description."""
    writable: Bool = False
    """OPC UA clients may write it (each write is still decided by the rules)."""
    min: Limit | None = None
    """Lowest value a write may set, in engineering units; either limit may be given alone."""
    max: Limit | None = None
    """Highest value a write may set, in engineering units; either limit may be given alone."""
    scan: Name | None = None
    """Scan class (polling period); default: opcua.default_scan."""
    modbus_unit: Bounded(0, 255) | None = None  # type: ignore[valid-type]
    """Unit id the value is read from and written to; default: the device's first unit (1 if it lists none)."""

    _scan_defaulted: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _consistent(self) -> Tag:
        if self.cip_tag is not None:
            return self._consistent_cip()
        if self.table is None or self.address is None:
            key = "table" if self.table is None else "address"
            raise _fail(FieldError(
                f"a tag needs table and address (a Modbus value) or cip_tag (a Logix tag); {key} is missing", (key,)))
        if self.type in tg.CIP_ONLY_TYPES:
            raise _fail(FieldError(f"{self.type} is a Logix type, for cip_tag tags; Modbus tags are int16, uint16, "
                                   "int32, uint32, int64, uint64, float32, float64, bool or string", ("type",)))
        problem = tg.fit_problem(self.table, self.type)
        if problem is not None:
            raise _fail(FieldError(problem, ("type",)))
        if self.type == "string" and self.length is None:
            raise _fail(FieldError("a string tag needs length: the registers it spans"))
        if self.type != "string" and self.length is not None:
            raise _fail(FieldError(f"length is for string tags; a {self.type} spans {self.registers}", ("length",)))
        if self.end > 65535:
            raise _fail(FieldError(
                f"{self.type} at {self.address} spans {self.registers} addresses and runs past 65535", ("address",)
            ))
        if self.writable and self.table not in tg.WRITABLE_TABLES:
            raise _fail(FieldError(f"{self.table} are read-only in Modbus: the tag cannot be writable", ("writable",)))
        return self._limits_consistent()

    def _consistent_cip(self) -> Tag:
        for key in tg.MODBUS_ONLY_KEYS:
            if key in self.model_fields_set:
                raise _fail(FieldError(f"{key} is for Modbus tags; a cip_tag tag is read and written by name", (key,)))
        if self.type not in tg.CIP_TAG_TYPES:
            raise _fail(FieldError(
                f"{self.type} is a Modbus type; a CIP tag is {', '.join(tg.CIP_TAG_TYPES)}", ("type",)))
        if self.type == "string" and self.writable:
            raise _fail(FieldError("CIP string tags are read-only: writable must be false", ("writable",)))
        return self._limits_consistent()

    def _limits_consistent(self) -> Tag:
        if self.type in ("bool", "string"):
            for key in ("scale", "offset", "min", "max"):
                if key in self.model_fields_set:
                    raise _fail(FieldError(f"{key} is for numeric tags, not {self.type}", (key,)))
        if self.scale == 0:
            raise _fail(FieldError("scale must not be 0", ("scale",)))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _fail(FieldError(f"min {self.min:g} is above max {self.max:g}", ("min",)))
        limits = tg.engineering_limits(self.type, self.scale, self.offset)
        for key, bound in (("min", self.min), ("max", self.max)):
            if limits is not None and bound is not None and not limits[0] <= bound <= limits[1]:
                raise _fail(FieldError(
                    f"{key} {bound:g} is outside what a {self.type} with scale {self.scale:g} and offset "
                    f"{self.offset:g} can hold ({limits[0]:g} to {limits[1]:g})", (key,),
                ))
        return self

    @property
    def registers(self) -> int:
        """Addresses the value spans in its table: 1 for bool and 16-bit types, 2 for 32-bit, 4 for 64-bit,
        `length` for a string; 1 for a CIP tag (one element)."""
        if self.cip_tag is not None:
            return 1
        return self.length if self.type == "string" and self.length else tg.TYPE_WIDTH[self.type]

    @property
    def end(self) -> int:
        """The last address the value occupies (a CIP tag has none: 0)."""
        return (self.address or 0) + self.registers - 1

    @property
    def scan_defaulted(self) -> bool:
        """True when `scan` was not written and holds opcua.default_scan."""
        return self._scan_defaulted


SECURITY_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
SECURITY_MODES = ("SignAndEncrypt", "Sign")


def _choices(allowed: tuple[str, ...], what: str) -> Callable[[object], tuple[str, ...]]:
    def parse(value: object) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise FieldError(f"list at least one {what}")
        out: list[str] = []
        for n, item in enumerate(items):
            where = (n,) if isinstance(value, list) else ()
            if item == "None" or item is None:
                raise FieldError(f"{what} None is never offered: sessions are always signed", where)
            if not isinstance(item, str) or item not in allowed:
                near = get_close_matches(str(item), list(allowed), n=1, cutoff=0.6)
                raise FieldError(f"unknown {what} {item!r}; expected one of: {', '.join(allowed)}", where,
                                 near[0] if near else None)
            if item in out:
                raise FieldError(f"{item} is listed twice", where)
            out.append(item)
        return tuple(out)

    return parse


def _choices_schema(allowed: tuple[str, ...]) -> dict[str, Any]:
    one = {"type": "string", "enum": list(allowed)}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1, "uniqueItems": True}]}


SecurityPolicies = Annotated[tuple[str, ...], *parsed(_choices(SECURITY_POLICIES, "security policy"),
                                                       _choices_schema(SECURITY_POLICIES))]
SecurityModes = Annotated[tuple[str, ...], *parsed(_choices(SECURITY_MODES, "security mode"),
                                                    _choices_schema(SECURITY_MODES))]


class Opcua(Section):
    """The OPC UA converter: a server toward level 3 serving the tags, polling their devices as a principal."""

    bind: Bind = Field(default_factory=lambda: _endpoint("127.0.0.1:4840"))
    """IP:PORT the OPC UA server listens on."""
    poll_principal: Name
    """The principal (declared with gateway: true) the converter's polls are decided for."""
    scan_classes: Annotated[dict[Name, Duration], Field(min_length=1)] = {"fast": 0.5, "slow": 5.0}
    """Polling periods by name, e.g. {fast: 500ms, slow: 5s}."""
    default_scan: Name | None = None
    """Scan class of tags that name none; default: the first scan class."""
    security: SecurityPolicies = SECURITY_POLICIES
    """Security policies offered, in order of preference (None is never offered)."""
    modes: SecurityModes = ("SignAndEncrypt",)
    """Message security modes offered: SignAndEncrypt; Sign only if listed here."""
    cert: TlsFiles = Field(validation_alias=AliasChoices("tls", "cert"))
    """The server's application certificate and key, and the CA bundle (trust list) and CRL client
    application certificates are checked against; relative paths are read from pki_dir. YAML key
    `tls` (or `cert`)."""
    users: PkiPath | None = None
    """File of OPC UA user names and salted password hashes (never in the policy); read from pki_dir."""
    application_uri: Text = "urn:zonegate:opcua"
    """The server's application URI; its certificate must carry it as a URI subject alternative name."""
    timeout: Duration | None = None
    """Longest wait for a device's answer to a poll or write; default: the slowest served device's timeout."""

    @model_validator(mode="after")
    def _resolve_default_scan(self) -> Opcua:
        if self.default_scan is None:
            self.default_scan = next(iter(self.scan_classes))
        return self

    @property
    def tls(self) -> TlsFiles:
        """The same files as `cert`, under the name listeners use."""
        return self.cert

    def scan_period(self, scan: str | None) -> float:
        """Seconds between polls of a scan class (the default scan class for None)."""
        return self.scan_classes[scan or self.default_scan or next(iter(self.scan_classes))]


def _version(value: object) -> int:
    if value != 1 or not is_int(value):
        raise FieldError(f"unsupported policy version {value!r}: this zonegate reads version 1")
    return 1


class Policy(Section):
    """A whole zonegate policy. Build it with `zonegate.controlplane.policy.load`."""

    version: Annotated[int, *parsed(_version, {"const": 1})]
    """The policy language version: 1."""
    mode: Literal["enforce", "monitor"] = "enforce"
    """enforce: refuse what the rules do not allow; monitor: forward it and record what would be refused."""
    pki_dir: Annotated[Path | None, WithJsonSchema({"type": "string", "description": "base of relative TLS paths; default: the policy file's directory"})] = None
    """Base of relative certificate paths (relative to the policy file); `zonegate run --pki` overrides it."""
    zones: dict[str, Zone] = {}
    """Cell/area zones, by name."""
    devices: dict[str, Device] = {}
    """Devices zonegate relays to, by name."""
    principals: dict[str, Principal] = {}
    """Who may ask, by name."""
    rules: list[Rule] = []
    """Allow rules; everything they do not allow is denied."""
    listeners: list[Listener] = []
    """Sockets zonegate serves."""
    flows: list[Flow] = []
    """Direct flows the firewall lets through between zones without a conduit."""
    metrics: Metrics = Field(default_factory=Metrics)
    """The Prometheus endpoint."""
    audit: Audit = Field(default_factory=Audit)
    """Audit records of denials and allowed writes."""
    firewall: Firewall = Field(default_factory=Firewall)
    """What the nftables ruleset logs and limits."""
    tags: dict[str, list[Tag]] = {}
    """The OPC UA address space: per device name, the values served as variables."""
    opcua: Opcua | None = None
    """The OPC UA converter; absent: no OPC UA server."""

    _source_hash: str = PrivateAttr(default="")
    _files: tuple[Path, ...] = PrivateAttr(default=())
    _warnings: tuple[Issue, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _pki_dir_from_context(cls, data: object, info: ValidationInfo) -> object:
        if isinstance(data, dict) and info.context and info.context.get("pki_dir"):
            return {**data, "pki_dir": info.context["pki_dir"]}
        return data

    @model_validator(mode="after")
    def _resolve_tag_scans(self) -> Policy:
        if self.opcua is not None:
            for tags in self.tags.values():
                for tag in tags:
                    if tag.scan is None:
                        tag.scan = self.opcua.default_scan
                        tag._scan_defaulted = True
        return self

    @property
    def source_hash(self) -> str:
        """sha256 (hex) of the policy files' bytes, in load order."""
        return self._source_hash

    @property
    def files(self) -> tuple[Path, ...]:
        return self._files

    @property
    def warnings(self) -> tuple[Issue, ...]:
        return self._warnings

    def ir(self) -> dict[str, Any]:
        """The compiled policy of docs/engine.md section 3."""
        from .compile import compile_ir

        return compile_ir(self)

    def ir_json(self) -> str:
        return json.dumps(self.ir(), separators=(",", ":"))

    def principal_for_certificate(self, role: str | None, subject: str) -> str | None:
        """The principal a client certificate maps to: by role first, then by RFC 4514 subject."""
        if role is not None:
            for name, principal in self.principals.items():
                if role in principal.tls_role:
                    return name
        try:
            wanted = normalise_subject(subject)
        except ValueError:
            return None
        for name, principal in self.principals.items():
            if any(normalise_subject(s) == wanted for s in principal.tls_subject):
                return name
        return None

    def principal_for_source(self, address: str) -> str | None:
        """The principal of a plain client by its address: the most specific matching CIDR wins."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        best: tuple[int, str] | None = None
        for name, principal in self.principals.items():
            for cidr in principal.source:
                network = ipaddress.ip_network(cidr)
                if ip.version == network.version and ip in network and (best is None or network.prefixlen > best[0]):
                    best = (network.prefixlen, name)
        return best[1] if best else None

    def device_for_unit(self, listener: Listener, unit: int) -> str | None:
        """The device of `listener` whose units hold `unit` (a device without units takes any)."""
        for name in listener.devices:
            modbus = self.devices[name].modbus
            if modbus is None:
                continue
            units = modbus.units
            if units is None or any(lo <= unit <= hi for lo, hi in units):
                return name
        return None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors and CI."""
    schema = Policy.model_json_schema(mode="validation", by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://zonegate.invalid/schema/policy-v1.json"
    schema["title"] = "zonegate policy"
    for name, keys in (("Rule", ("allow", "cip")), ("Device", ("modbus", "enip"))):
        schema["$defs"][name].setdefault("allOf", []).append({"anyOf": [{"required": [key]} for key in keys]})
    return schema


__all__ = [
    "TABLES", "AddressRange", "AllowEntry", "Audit", "CipEntry", "Device", "EnipDevice", "Endpoint", "Firewall", "Flow", "Listener",
    "Metrics", "ModbusDevice", "Opcua", "Policy", "Principal", "Rule", "Tag", "TlsFiles", "Zone", "json_schema",
]
