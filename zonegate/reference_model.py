"""Reference model of the engine stage: framing, request parsing and decisions in plain Python.

This is docs/engine.md written out as directly as Python allows, so that a reader can check it against
the page line by line. It is the oracle the Rust engine (`zonegate._engine`) is tested against and the
baseline its benchmark is measured against. It is never on the per-frame path at run time: it is slow on
purpose, preferring the obvious loop to the clever one.

Integer codes are those of docs/engine.md sections 2 and 5 (and of `zonegate.engine`'s name tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

# --- framing (section 1) ---------------------------------------------------------------------------

COMPLETE: Final = 0  # n is the ADU length
INCOMPLETE: Final = 1  # n is the number of bytes still needed
INVALID: Final = 2  # n is the invalid reason

INVALID_PROTOCOL_ID: Final = 1
INVALID_LENGTH: Final = 2

MBAP_HEADER_LEN: Final = 6  # tid, pid, len; the unit byte is counted by len
MIN_MBAP_LENGTH: Final = 2  # unit + function code
MAX_MBAP_LENGTH: Final = 254  # unit + the 253-byte PDU limit


def split(buf: bytes) -> tuple[int, int]:
    """Find the first ADU at the start of `buf`: (COMPLETE, used), (INCOMPLETE, needed) or (INVALID, reason)."""
    if len(buf) < MBAP_HEADER_LEN:
        return INCOMPLETE, MBAP_HEADER_LEN - len(buf)
    protocol_id = _u16(buf, 2)
    if protocol_id != 0:
        return INVALID, INVALID_PROTOCOL_ID
    length = _u16(buf, 4)
    if length < MIN_MBAP_LENGTH or length > MAX_MBAP_LENGTH:
        return INVALID, INVALID_LENGTH
    if len(buf) < MBAP_HEADER_LEN + length:
        return INCOMPLETE, MBAP_HEADER_LEN + length - len(buf)
    return COMPLETE, MBAP_HEADER_LEN + length


# --- request parsing (section 2) -------------------------------------------------------------------

# Malformed kinds, by their binding values.
TRUNCATED: Final = 1
TRAILING_BYTES: Final = 2
BAD_QUANTITY: Final = 3
BAD_BYTE_COUNT: Final = 4
ADDRESS_OVERFLOW: Final = 5
BAD_COIL_VALUE: Final = 6
BAD_SUBFUNCTION: Final = 7
BAD_MEI_TYPE: Final = 8
BAD_REFERENCE_TYPE: Final = 9
BAD_RECORD: Final = 10
BAD_DEVICE_ID_CODE: Final = 11

# Tables.
COILS: Final = 0
DISCRETE_INPUTS: Final = 1
INPUT_REGISTERS: Final = 2
HOLDING_REGISTERS: Final = 3
FILE_RECORDS: Final = 4

TABLE_NAMES: Final = ("coils", "discrete_inputs", "input_registers", "holding_registers", "file_records")

PUBLIC_FUNCTIONS: Final = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43})
DIAGNOSTIC_SUBFUNCTIONS: Final = frozenset({0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20})
MEI_TYPES: Final = frozenset({13, 14})


@dataclass(frozen=True)
class Range:
    """One contiguous run of addresses a request touches, inclusive at both ends."""

    table: int
    start: int
    end: int
    write: bool


@dataclass(frozen=True)
class ParsedRequest:
    """A well-formed request, or a request with a code that is not parsed (`known_function` false)."""

    transaction_id: int
    unit: int
    function: int
    sub: int | None
    known_function: bool
    quantity: int = 0
    ranges: tuple[Range, ...] = ()
    # (table, address, value) for every written value whose value is on the wire
    values: tuple[tuple[int, int, int], ...] = ()
    # (table, address) for every write whose value the request does not carry (FC 22)
    unknown_values: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Malformed:
    """A framed request that breaks its function's structure; `kind` names the first failing check."""

    kind: int
    transaction_id: int = 0
    unit: int = 0
    function: int = 0
    sub: int | None = None


class _Bad(Exception):
    """Carries a malformed kind out of the per-function parsers."""

    def __init__(self, kind: int) -> None:
        super().__init__(kind)
        self.kind = kind


def _u16(buf: bytes, offset: int) -> int:
    return buf[offset] << 8 | buf[offset + 1]


def _exact_length(data: bytes, n: int) -> None:
    """"len(data) must be N": shorter is truncated, longer has trailing bytes."""
    if len(data) < n:
        raise _Bad(TRUNCATED)
    if len(data) > n:
        raise _Bad(TRAILING_BYTES)


def _at_least(data: bytes, n: int) -> None:
    if len(data) < n:
        raise _Bad(TRUNCATED)


def _quantity(qty: int, limit: int) -> None:
    if not 1 <= qty <= limit:
        raise _Bad(BAD_QUANTITY)


def _no_overflow(start: int, qty: int) -> None:
    if start + qty > 65536:
        raise _Bad(ADDRESS_OVERFLOW)


def _file_record_ok(file_number: int, record: int, length: int) -> bool:
    return 1 <= file_number <= 65535 and 0 <= record <= 9999 and length >= 1 and record + length <= 10000


def _file_range(file_number: int, record: int, length: int, write: bool) -> Range:
    base = file_number << 16
    return Range(FILE_RECORDS, base | record, base | (record + length - 1), write)


@dataclass
class _Parts:
    """What a per-function parser found; the header fields are added by `parse_request`."""

    sub: int | None = None
    ranges: list[Range] = field(default_factory=list)
    values: list[tuple[int, int, int]] = field(default_factory=list)
    unknown_values: list[tuple[int, int]] = field(default_factory=list)


def _parse_read_bits(data: bytes, table: int) -> _Parts:
    _exact_length(data, 4)
    start, qty = _u16(data, 0), _u16(data, 2)
    _quantity(qty, 2000)
    _no_overflow(start, qty)
    return _Parts(ranges=[Range(table, start, start + qty - 1, False)])


def _parse_read_registers(data: bytes, table: int) -> _Parts:
    _exact_length(data, 4)
    start, qty = _u16(data, 0), _u16(data, 2)
    _quantity(qty, 125)
    _no_overflow(start, qty)
    return _Parts(ranges=[Range(table, start, start + qty - 1, False)])


def _parse_write_single_coil(data: bytes) -> _Parts:
    _exact_length(data, 4)
    address, value = _u16(data, 0), _u16(data, 2)
    if value not in (0x0000, 0xFF00):
        raise _Bad(BAD_COIL_VALUE)
    bit = 1 if value == 0xFF00 else 0
    return _Parts(ranges=[Range(COILS, address, address, True)], values=[(COILS, address, bit)])


def _parse_write_single_register(data: bytes) -> _Parts:
    _exact_length(data, 4)
    address, value = _u16(data, 0), _u16(data, 2)
    return _Parts(
        ranges=[Range(HOLDING_REGISTERS, address, address, True)], values=[(HOLDING_REGISTERS, address, value)]
    )


def _parse_nothing(data: bytes) -> _Parts:
    _exact_length(data, 0)
    return _Parts()


def _parse_diagnostics(data: bytes) -> _Parts:
    _at_least(data, 2)
    sub = _u16(data, 0)
    if sub not in DIAGNOSTIC_SUBFUNCTIONS:
        raise _Bad(BAD_SUBFUNCTION)
    if sub == 0:
        if (len(data) - 2) % 2 != 0:
            raise _Bad(TRAILING_BYTES)
    else:
        _exact_length(data, 4)
    return _Parts(sub=sub)


def _parse_write_multiple_coils(data: bytes) -> _Parts:
    _at_least(data, 5)
    start, qty, byte_count = _u16(data, 0), _u16(data, 2), data[4]
    _quantity(qty, 1968)
    _no_overflow(start, qty)
    if byte_count != (qty + 7) // 8:
        raise _Bad(BAD_BYTE_COUNT)
    _exact_length(data, 5 + byte_count)
    packed = data[5:]
    values = [(COILS, start + i, (packed[i // 8] >> (i % 8)) & 1) for i in range(qty)]
    return _Parts(ranges=[Range(COILS, start, start + qty - 1, True)], values=values)


def _parse_write_multiple_registers(data: bytes) -> _Parts:
    _at_least(data, 5)
    start, qty, byte_count = _u16(data, 0), _u16(data, 2), data[4]
    _quantity(qty, 123)
    _no_overflow(start, qty)
    if byte_count != 2 * qty:
        raise _Bad(BAD_BYTE_COUNT)
    _exact_length(data, 5 + byte_count)
    values = [(HOLDING_REGISTERS, start + i, _u16(data, 5 + 2 * i)) for i in range(qty)]
    return _Parts(ranges=[Range(HOLDING_REGISTERS, start, start + qty - 1, True)], values=values)


def _parse_read_file_record(data: bytes) -> _Parts:
    _at_least(data, 1)
    byte_count = data[0]
    if not (7 <= byte_count <= 245 and byte_count % 7 == 0):
        raise _Bad(BAD_BYTE_COUNT)
    _exact_length(data, 1 + byte_count)
    parts = _Parts()
    for offset in range(1, 1 + byte_count, 7):
        ref_type = data[offset]
        file_number, record, length = _u16(data, offset + 1), _u16(data, offset + 3), _u16(data, offset + 5)
        if ref_type != 6:
            raise _Bad(BAD_REFERENCE_TYPE)
        if not _file_record_ok(file_number, record, length):
            raise _Bad(BAD_RECORD)
        parts.ranges.append(_file_range(file_number, record, length, False))
    return parts


def _parse_write_file_record(data: bytes) -> _Parts:
    _at_least(data, 1)
    byte_count = data[0]
    if not 9 <= byte_count <= 251:
        raise _Bad(BAD_BYTE_COUNT)
    _exact_length(data, 1 + byte_count)
    parts = _Parts()
    offset = 1
    end = 1 + byte_count
    while offset < end:
        if end - offset < 7:
            raise _Bad(BAD_BYTE_COUNT)
        ref_type = data[offset]
        file_number, record, length = _u16(data, offset + 1), _u16(data, offset + 3), _u16(data, offset + 5)
        if ref_type != 6:
            raise _Bad(BAD_REFERENCE_TYPE)
        if not _file_record_ok(file_number, record, length):
            raise _Bad(BAD_RECORD)
        offset += 7
        if 2 * length > end - offset:
            raise _Bad(BAD_BYTE_COUNT)
        file_range = _file_range(file_number, record, length, True)
        parts.ranges.append(file_range)
        for i in range(length):
            parts.values.append((FILE_RECORDS, file_range.start + i, _u16(data, offset + 2 * i)))
        offset += 2 * length
    return parts


def _parse_mask_write_register(data: bytes) -> _Parts:
    _exact_length(data, 6)
    address = _u16(data, 0)
    return _Parts(
        ranges=[Range(HOLDING_REGISTERS, address, address, True)], unknown_values=[(HOLDING_REGISTERS, address)]
    )


def _parse_read_write_multiple_registers(data: bytes) -> _Parts:
    _at_least(data, 9)
    read_start, read_qty = _u16(data, 0), _u16(data, 2)
    write_start, write_qty, byte_count = _u16(data, 4), _u16(data, 6), data[8]
    _quantity(read_qty, 125)
    _no_overflow(read_start, read_qty)
    _quantity(write_qty, 121)
    _no_overflow(write_start, write_qty)
    if byte_count != 2 * write_qty:
        raise _Bad(BAD_BYTE_COUNT)
    _exact_length(data, 9 + byte_count)
    values = [(HOLDING_REGISTERS, write_start + i, _u16(data, 9 + 2 * i)) for i in range(write_qty)]
    return _Parts(
        ranges=[
            Range(HOLDING_REGISTERS, read_start, read_start + read_qty - 1, False),
            Range(HOLDING_REGISTERS, write_start, write_start + write_qty - 1, True),
        ],
        values=values,
    )


def _parse_read_fifo_queue(data: bytes) -> _Parts:
    _exact_length(data, 2)
    address = _u16(data, 0)
    return _Parts(ranges=[Range(HOLDING_REGISTERS, address, address, False)])


def _parse_encapsulated_interface(data: bytes) -> _Parts:
    _at_least(data, 1)
    mei = data[0]
    if mei not in MEI_TYPES:
        raise _Bad(BAD_MEI_TYPE)
    if mei == 14:
        _exact_length(data, 3)
        if not 1 <= data[1] <= 4:
            raise _Bad(BAD_DEVICE_ID_CODE)
    return _Parts(sub=mei)


def _parse_pdu(fc: int, data: bytes) -> _Parts:
    if fc in (1, 2):
        return _parse_read_bits(data, COILS if fc == 1 else DISCRETE_INPUTS)
    if fc in (3, 4):
        return _parse_read_registers(data, HOLDING_REGISTERS if fc == 3 else INPUT_REGISTERS)
    if fc == 5:
        return _parse_write_single_coil(data)
    if fc == 6:
        return _parse_write_single_register(data)
    if fc in (7, 11, 12, 17):
        return _parse_nothing(data)
    if fc == 8:
        return _parse_diagnostics(data)
    if fc == 15:
        return _parse_write_multiple_coils(data)
    if fc == 16:
        return _parse_write_multiple_registers(data)
    if fc == 20:
        return _parse_read_file_record(data)
    if fc == 21:
        return _parse_write_file_record(data)
    if fc == 22:
        return _parse_mask_write_register(data)
    if fc == 23:
        return _parse_read_write_multiple_registers(data)
    if fc == 24:
        return _parse_read_fifo_queue(data)
    if fc == 43:
        return _parse_encapsulated_interface(data)
    raise AssertionError(f"function {fc} is not public")  # callers check PUBLIC_FUNCTIONS first


def _header_sub(fc: int, data: bytes) -> int | None:
    """The function key's second half as far as the bytes allow, for reporting a malformed request."""
    if fc == 8 and len(data) >= 2:
        return _u16(data, 0)
    if fc == 43 and len(data) >= 1:
        return data[0]
    return None


def _framing_fault(adu: bytes) -> int | None:
    """A frame is parsed only when it is exactly one complete ADU; anything else is malformed.

    The splitter never hands on such a frame, but `decide` may be called directly. The rule compares
    the frame with what its header declares (6 + length): no function code, a protocol id other than 0,
    or fewer bytes than declared is truncated; more bytes than declared, or a declaration beyond the
    largest ADU (260 bytes), is trailing bytes. None of them is ever forwarded.
    """
    if len(adu) < MBAP_HEADER_LEN + MIN_MBAP_LENGTH or _u16(adu, 2) != 0:
        return TRUNCATED
    declared = MBAP_HEADER_LEN + _u16(adu, 4)
    if declared > len(adu):
        return TRUNCATED
    if declared < len(adu) or declared > MBAP_HEADER_LEN + MAX_MBAP_LENGTH:
        return TRAILING_BYTES
    return None


def parse_request(adu: bytes) -> ParsedRequest | Malformed:
    """Parse one complete request ADU into the plain data a policy matches on, or name why it is malformed."""
    transaction_id = _u16(adu, 0) if len(adu) >= 2 else 0
    unit = adu[6] if len(adu) >= 7 else 0
    fc = adu[7] if len(adu) >= 8 else 0
    data = bytes(adu[8:])
    fault = _framing_fault(adu)
    if fault is not None:
        return Malformed(fault, transaction_id, unit, fc, None)  # nothing past the header was read
    if fc not in PUBLIC_FUNCTIONS:
        return ParsedRequest(transaction_id, unit, fc, None, known_function=False)
    try:
        parts = _parse_pdu(fc, data)
    except _Bad as bad:
        return Malformed(bad.kind, transaction_id, unit, fc, _header_sub(fc, data))
    # the largest range touched; for FC 20/21 that is the largest record length
    quantity = max((r.end - r.start + 1 for r in parts.ranges), default=0)
    return ParsedRequest(
        transaction_id,
        unit,
        fc,
        parts.sub,
        known_function=True,
        quantity=quantity,
        ranges=tuple(parts.ranges),
        values=tuple(parts.values),
        unknown_values=tuple(parts.unknown_values),
    )


# --- decisions (sections 4 and 5) ------------------------------------------------------------------

ALLOW: Final = 0
DENY: Final = 1
WOULD_DENY: Final = 2

ALLOWED: Final = 0
UNKNOWN_PRINCIPAL: Final = 1
MALFORMED: Final = 2
NO_MATCHING_RULE: Final = 3
UNIT_NOT_ALLOWED: Final = 4
FUNCTION_NOT_ALLOWED: Final = 5
ADDRESS_OUT_OF_RANGE: Final = 6
QUANTITY_EXCEEDED: Final = 7
VALUE_OUT_OF_BOUNDS: Final = 8
RATE_EXCEEDED: Final = 9

ILLEGAL_FUNCTION: Final = 0x01
ILLEGAL_DATA_VALUE: Final = 0x03
SERVER_DEVICE_BUSY: Final = 0x06


@dataclass(frozen=True)
class Decision:
    """What the engine decided for one request, and why (docs/engine.md section 5)."""

    verdict: int
    reason: int
    malformed: int  # 0 unless reason is MALFORMED
    rule_id: str
    exception_code: int | None
    function: int
    sub: int | None
    unit: int

    @property
    def forward(self) -> bool:
        return self.verdict != DENY


@dataclass(frozen=True)
class _ValueRange:
    start: int
    end: int
    min: int | None
    max: int | None
    signed: bool


@dataclass(frozen=True)
class _Rate:
    count: int
    period_ns: int
    burst: int


@dataclass(frozen=True)
class _Entry:
    functions: frozenset[tuple[int, int | None]]
    ranges: tuple[tuple[_ValueRange, ...], ...]  # indexed by table
    max_quantity: int | None
    rate: _Rate | None


@dataclass(frozen=True)
class _Rule:
    rule_id: str
    principals: frozenset[int]
    devices: frozenset[int]
    units: tuple[tuple[int, int], ...] | None
    allow: tuple[_Entry, ...]


@dataclass
class _Bucket:
    level: int
    last: int


def charge(buckets: dict[tuple[int, int, int], _Bucket], key: tuple[int, int, int], rate: _Rate,
           now_ns: int) -> bool:
    """Take one token from the bucket at `key` (docs/engine.md section 4: integers only, as in Rust)."""
    capacity = rate.burst * rate.period_ns
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = _Bucket(level=capacity, last=now_ns)
    elapsed = max(0, now_ns - bucket.last)
    bucket.level = min(capacity, bucket.level + elapsed * rate.count)
    bucket.last = max(bucket.last, now_ns)
    if bucket.level >= rate.period_ns:
        bucket.level -= rate.period_ns
        return True
    return False


def _units(raw: Any) -> tuple[tuple[int, int], ...] | None:
    if raw is None:
        return None
    return tuple((int(lo), int(hi)) for lo, hi in raw)


def _entry(raw: dict[str, Any]) -> _Entry:
    functions = frozenset((int(fc), None if sub is None else int(sub)) for fc, sub in raw["functions"])
    tables = []
    for name in TABLE_NAMES:
        tables.append(
            tuple(
                _ValueRange(int(r["start"]), int(r["end"]), r["min"], r["max"], bool(r["signed"]))
                for r in raw["ranges"].get(name, [])
            )
        )
    rate = raw.get("rate")
    return _Entry(
        functions=functions,
        ranges=tuple(tables),
        max_quantity=raw["max_quantity"],
        rate=None if rate is None else _Rate(int(rate["count"]), int(rate["period_ns"]), int(rate["burst"])),
    )


def _as_signed(value: int) -> int:
    return value - 0x10000 if value >= 0x8000 else value


class ReferenceModel:
    """The policy of one IR document, deciding requests the way docs/engine.md section 4 says."""

    def __init__(self, ir: dict[str, Any]) -> None:
        self.mode: str = ir["mode"]
        self.principal_names: tuple[str, ...] = tuple(p["name"] for p in ir["principals"])
        self.device_names: tuple[str, ...] = tuple(d["name"] for d in ir["devices"])
        self._device_units = tuple(_units(d["units"]) for d in ir["devices"])
        self._rules = tuple(
            _Rule(
                rule_id=r["id"],
                principals=frozenset(r["principals"]),
                devices=frozenset(r["devices"]),
                units=_units(r["units"]),
                allow=tuple(_entry(e) for e in r["allow"]),
            )
            for r in ir["rules"]
        )
        # rate buckets per (rule, entry, principal)
        self._buckets: dict[tuple[int, int, int], _Bucket] = {}

    def decide(self, principal: int, device: int, adu: bytes, now_ns: int) -> Decision:
        unit = adu[6] if len(adu) >= 7 else 0
        fc = adu[7] if len(adu) >= 8 else 0
        if not 0 <= principal < len(self.principal_names):
            # refused before parsing: the raw function and unit are reported, no sub-function
            return self._deny(UNKNOWN_PRINCIPAL, "", fc, None, unit)
        request = parse_request(adu)
        if isinstance(request, Malformed):
            # malformed is denied in both modes and never forwarded
            return Decision(DENY, MALFORMED, request.kind, "", ILLEGAL_DATA_VALUE, fc, request.sub, unit)
        if not request.known_function:
            return self._deny(FUNCTION_NOT_ALLOWED, "", fc, None, unit)
        candidates = [
            (index, rule)
            for index, rule in enumerate(self._rules)
            if principal in rule.principals and device in rule.devices
        ]
        if not candidates:
            return self._deny(NO_MATCHING_RULE, "", fc, request.sub, unit)
        deepest: tuple[int, int, str] | None = None  # (depth, reason, rule id)
        for rule_index, rule in candidates:
            for entry_index, entry in enumerate(rule.allow):
                failure = self._first_failure(rule, entry, device, request)
                if failure is None:
                    if entry.rate is not None and not self._charge(
                        (rule_index, entry_index, principal), entry.rate, now_ns
                    ):
                        return self._deny(RATE_EXCEEDED, rule.rule_id, fc, request.sub, unit)
                    return Decision(ALLOW, ALLOWED, 0, rule.rule_id, None, fc, request.sub, unit)
                depth, reason = failure
                if deepest is None or depth > deepest[0]:
                    deepest = (depth, reason, rule.rule_id)
        if deepest is None:
            # candidate rules with no allow entries at all: nothing matched, nothing came close
            return self._deny(NO_MATCHING_RULE, "", fc, request.sub, unit)
        return self._deny(deepest[1], deepest[2], fc, request.sub, unit)

    def _deny(self, reason: int, rule_id: str, fc: int, sub: int | None, unit: int) -> Decision:
        if self.mode == "monitor" and reason != UNKNOWN_PRINCIPAL:
            return Decision(WOULD_DENY, reason, 0, rule_id, None, fc, sub, unit)
        code = SERVER_DEVICE_BUSY if reason == RATE_EXCEEDED else ILLEGAL_FUNCTION
        return Decision(DENY, reason, 0, rule_id, code, fc, sub, unit)

    def _first_failure(self, rule: _Rule, entry: _Entry, device: int, request: ParsedRequest) -> tuple[int, int] | None:
        """(depth, reason) of the first check this entry fails, or None when it passes all of them."""
        units = rule.units if rule.units is not None else self._device_units[device]
        if units is not None and not any(lo <= request.unit <= hi for lo, hi in units):
            return 1, UNIT_NOT_ALLOWED
        if (request.function, request.sub) not in entry.functions:
            return 2, FUNCTION_NOT_ALLOWED
        for touched in request.ranges:
            if not _covered(entry.ranges[touched.table], touched.start, touched.end):
                return 3, ADDRESS_OUT_OF_RANGE
        if entry.max_quantity is not None and request.quantity > entry.max_quantity:
            return 4, QUANTITY_EXCEEDED
        for table, address, value in request.values:
            holder = _holder(entry.ranges[table], address)
            if holder is None or holder.min is None or holder.max is None:
                continue
            read = _as_signed(value) if holder.signed else value
            if not holder.min <= read <= holder.max:
                return 5, VALUE_OUT_OF_BOUNDS
        for table, address in request.unknown_values:
            holder = _holder(entry.ranges[table], address)
            if holder is not None and holder.min is not None:
                return 5, VALUE_OUT_OF_BOUNDS
        return None

    def _charge(self, key: tuple[int, int, int], rate: _Rate, now_ns: int) -> bool:
        return charge(self._buckets, key, rate, now_ns)


def _holder(ranges: tuple[_ValueRange, ...], address: int) -> _ValueRange | None:
    for candidate in ranges:
        if candidate.start <= address <= candidate.end:
            return candidate
    return None


def _covered(ranges: tuple[_ValueRange, ...], start: int, end: int) -> bool:
    """Every address in [start, end] lies in some range (the union: adjacent ranges join)."""
    position = start
    while position <= end:
        holder = _holder(ranges, position)
        if holder is None:
            return False
        position = holder.end + 1
    return True
