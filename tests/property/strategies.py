"""Hypothesis strategies for the engine stage: compiled-policy IR documents and request frames.

Policies and frames are drawn over the same small address neighbourhood so that random requests land in,
across and beside random ranges often enough to reach every decision depth. Frames start well formed for
every public function code and are then cut, extended, bit-flipped or re-coded; pure noise is drawn too.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from zonegate.reference_model import DIAGNOSTIC_SUBFUNCTIONS, PUBLIC_FUNCTIONS, TABLE_NAMES

SECOND = 1_000_000_000
HOT = 300  # most addresses fall in [0, HOT)

# Function keys a policy may list: every public code with its sub-functions and MEI types, plus a few
# keys no frame parses to (they must never match).
FUNCTION_KEYS: list[tuple[int, int | None]] = sorted(
    [(fc, None) for fc in PUBLIC_FUNCTIONS if fc not in (8, 43)]
    + [(8, sub) for sub in sorted(DIAGNOSTIC_SUBFUNCTIONS)]
    + [(43, 13), (43, 14), (90, None), (8, None), (43, None)],
    key=lambda k: (k[0], -1 if k[1] is None else k[1]),
)

COMMON_KEYS: list[tuple[int, int | None]] = [(1, None), (3, None), (5, None), (6, None), (15, None), (16, None), (23, None)]

U64_MAX = 2**64 - 1
U64_POSITIVE = st.sampled_from([1, 2, SECOND, 2**32, 2**63, U64_MAX]) | st.integers(1, U64_MAX)

u16 = st.integers(0, 0xFFFF)
u8 = st.integers(0, 0xFF)


def addresses() -> st.SearchStrategy[int]:
    hot = st.integers(0, HOT)
    return st.one_of(hot, hot, hot, st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFE, 0xFFFF]))


# --- policies ---------------------------------------------------------------------------------------


@st.composite
def unit_ranges(draw: st.DrawFn) -> list[list[int]] | None:
    if draw(st.booleans()):
        return None
    pairs = []
    for _ in range(draw(st.integers(0, 3))):
        lo = draw(st.integers(0, 12) | u8)
        hi = draw(st.integers(lo, min(255, lo + draw(st.sampled_from([0, 1, 3, 255])))))
        pairs.append([lo, hi])
    return pairs


@st.composite
def value_ranges(draw: st.DrawFn, table: str) -> list[dict[str, Any]]:
    """Sorted, non-overlapping inclusive ranges (adjacent ones allowed), as the loader guarantees."""
    top = 0xFFFF_FFFF if table == "file_records" else 0xFFFF
    if draw(st.integers(0, 5)) == 0:
        # one wide range, so that requests pass the address check often enough to reach deeper checks
        return [{"start": 0, "end": draw(st.sampled_from([HOT, top])), "min": None, "max": None, "signed": False}]
    count = draw(st.integers(0, 3 if table in ("coils", "holding_registers") else 1))
    if table == "file_records":
        points = draw(
            st.lists(
                st.builds(lambda f, r: f << 16 | r, st.integers(0, 4) | st.just(0xFFFF), st.integers(0, 10_010)),
                min_size=2 * count,
                max_size=2 * count,
            )
        )
    else:
        points = draw(st.lists(addresses(), min_size=2 * count, max_size=2 * count))
    points.sort()
    ranges: list[dict[str, Any]] = []
    previous_end = -1
    for i in range(count):
        start, end = points[2 * i], points[2 * i + 1]
        if draw(st.booleans()) and previous_end >= 0 and previous_end + 1 <= top:
            start = max(start, previous_end + 1)
            if draw(st.booleans()):
                start = previous_end + 1  # adjacent to the previous range
        start = max(start, previous_end + 1)
        end = max(end, start)
        if start > top or end > top:
            break
        signed = draw(st.booleans())
        if draw(st.booleans()):
            lo_bound, hi_bound = (-0x8000, 0x7FFF) if signed else (0, 0xFFFF)
            if table in ("coils", "discrete_inputs"):
                lo_bound, hi_bound = 0, 1
            a = draw(st.integers(lo_bound, hi_bound))
            b = draw(st.integers(lo_bound, hi_bound))
            lo: int | None = min(a, b)
            hi: int | None = max(a, b)
        else:
            lo = hi = None
        ranges.append({"start": start, "end": end, "min": lo, "max": hi, "signed": signed})
        previous_end = end
    return ranges


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        functions = [k for k in FUNCTION_KEYS if draw(st.integers(0, 4))]  # most of them
    elif choice == 1:
        functions = draw(st.lists(st.sampled_from(COMMON_KEYS), min_size=1, max_size=4, unique=True))
    else:
        functions = draw(st.lists(st.sampled_from(FUNCTION_KEYS), min_size=0, max_size=6, unique=True))
    rate = None
    if draw(st.integers(0, 3)) == 0:
        if draw(st.integers(0, 7)):
            rate = {
                "count": draw(st.integers(1, 5)),
                "period_ns": draw(st.sampled_from([1, 1000, SECOND, 3 * SECOND])),
                "burst": draw(st.integers(1, 4)),
            }
        else:  # values whose products leave 64 bits behind: integer arithmetic must not wrap
            rate = {"count": draw(U64_POSITIVE), "period_ns": draw(U64_POSITIVE), "burst": draw(U64_POSITIVE)}
    return {
        "functions": [list(k) for k in functions],
        "ranges": {table: draw(value_ranges(table)) for table in TABLE_NAMES},
        "max_quantity": draw(st.none() | st.integers(1, 130) | st.sampled_from([1, 2000])),
        "rate": rate,
    }


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    n_principals = draw(st.integers(1, 4))
    n_devices = draw(st.integers(1, 3))
    rules = []
    for i in range(draw(st.integers(0, 4))):
        rules.append(
            {
                "id": f"rule-{i}",
                "principals": draw(st.lists(st.integers(0, n_principals - 1), min_size=1, max_size=3, unique=True))
                if draw(st.integers(0, 2))
                else list(range(n_principals)),
                "devices": draw(st.lists(st.integers(0, n_devices - 1), min_size=1, max_size=2, unique=True)),
                "units": draw(unit_ranges()),
                "allow": draw(st.lists(entries(), min_size=0, max_size=2) | st.lists(entries(), min_size=1, max_size=1)),
            }
        )
    return {
        "version": 1,
        "mode": draw(st.sampled_from(["enforce", "monitor"])),
        "principals": [
            {"name": f"principal-{i}", "tls_roles": [f"Role{i}"], "subjects": [], "opcua_users": [], "sources": []}
            for i in range(n_principals)
        ],
        "devices": [
            {
                "name": f"device-{i}",
                "zone": "cell-a",
                "host": f"192.168.10.{11 + i}",
                "port": 502,
                "units": draw(unit_ranges()),
            }
            for i in range(n_devices)
        ],
        "rules": rules,
    }


# Indices no policy here holds (at most 4 principals, 3 devices): past the end, negative, beyond u32.
UNKNOWN = st.sampled_from([4, 5, -1, 2**32, 2**32 + 1, 2**40])


# --- frames -----------------------------------------------------------------------------------------


def mbap(pdu: bytes, unit: int, tid: int = 1) -> bytes:
    return tid.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


def _w(value: int) -> bytes:
    return (value & 0xFFFF).to_bytes(2, "big")


@st.composite
def quantities(draw: st.DrawFn, limit: int) -> int:
    if draw(st.integers(0, 3)):
        return draw(st.integers(1, 10))
    return draw(st.integers(0, limit + 1) | st.sampled_from([0, 1, limit, limit + 1]))


@st.composite
def register_values(draw: st.DrawFn) -> int:
    return draw(u16 | st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xFFFF]) | st.integers(0, 2000))


@st.composite
def file_subrequest(draw: st.DrawFn, file_start: int | None = None) -> tuple[bytes, int]:
    ref_type = 6 if draw(st.integers(0, 7)) else draw(u8)
    if file_start is not None and draw(st.integers(0, 3)):
        file_number, record = file_start >> 16, (file_start & 0xFFFF) + draw(st.integers(0, 3))
    else:
        file_number = draw(st.integers(0, 4) | st.sampled_from([0xFFFF]))
        record = draw(st.integers(0, 20) | st.integers(9990, 10_001) | u16)
    length = draw(st.integers(1, 4)) if draw(st.integers(0, 5)) else draw(st.integers(0, 6))
    return bytes([ref_type]) + _w(file_number) + _w(record) + _w(length), length


@st.composite
def public_pdus(
    draw: st.DrawFn, fc: int | None = None, sub: int | None = None, start: int | None = None, file_start: int | None = None
) -> bytes:
    """A PDU for a public function code, mostly well formed and often at its limits.

    `fc`, `sub` and `start` pin the function key and first address (a request aimed at a policy entry);
    `file_start` pins the first file record as `file << 16 | record`.
    """
    if fc is None:
        fc = draw(st.sampled_from(sorted(PUBLIC_FUNCTIONS)))
    if start is None:
        start = draw(addresses())
    if fc in (1, 2):
        return bytes([fc]) + _w(start) + _w(draw(quantities(2000)))
    if fc in (3, 4):
        return bytes([fc]) + _w(start) + _w(draw(quantities(125)))
    if fc == 5:
        return bytes([fc]) + _w(start) + _w(draw(st.sampled_from([0, 0xFF00])) if draw(st.integers(0, 5)) else draw(u16))
    if fc == 6:
        return bytes([fc]) + _w(start) + _w(draw(register_values()))
    if fc in (7, 11, 12, 17):
        return bytes([fc])
    if fc == 8:
        if sub is None:
            sub = draw(st.sampled_from(sorted(DIAGNOSTIC_SUBFUNCTIONS))) if draw(st.integers(0, 5)) else draw(u16)
        words = draw(st.integers(0, 3)) if sub == 0 else 1
        return bytes([fc]) + _w(sub) + b"".join(_w(draw(u16)) for _ in range(words))
    if fc == 15:
        qty = draw(quantities(1968))
        count = (qty + 7) // 8 if draw(st.integers(0, 9)) else draw(u8)
        body = draw(st.binary(min_size=min(count, 246), max_size=min(count, 246)))
        return bytes([fc]) + _w(start) + _w(qty) + bytes([count & 0xFF]) + body
    if fc == 16:
        qty = draw(quantities(123))
        values = [draw(register_values()) for _ in range(min(qty, 123))]
        count = 2 * qty if draw(st.integers(0, 9)) else draw(u8)
        return bytes([fc]) + _w(start) + _w(qty) + bytes([count & 0xFF]) + b"".join(_w(v) for v in values)
    if fc == 20:
        subs = [draw(file_subrequest(file_start))[0] for _ in range(draw(st.integers(1, 4)))]
        body = b"".join(subs)
        count = len(body) if draw(st.integers(0, 9)) else draw(u8)
        return bytes([fc, count]) + body
    if fc == 21:
        body = b""
        for _ in range(draw(st.integers(1, 3))):
            header, length = draw(file_subrequest(file_start))
            body += header + b"".join(_w(draw(register_values())) for _ in range(length))
        count = len(body) if draw(st.integers(0, 9)) else draw(u8)
        return bytes([fc, count & 0xFF]) + body[:250]
    if fc == 22:
        return bytes([fc]) + _w(start) + _w(draw(u16)) + _w(draw(u16))
    if fc == 23:
        read_qty = draw(quantities(125))
        write_qty = draw(quantities(121))
        written = b"".join(_w(draw(register_values())) for _ in range(min(write_qty, 121)))
        count = 2 * write_qty if draw(st.integers(0, 9)) else draw(u8)
        return (
            bytes([fc]) + _w(start) + _w(read_qty) + _w(draw(addresses())) + _w(write_qty) + bytes([count & 0xFF]) + written
        )
    if fc == 24:
        return bytes([fc]) + _w(start)
    assert fc == 43
    mei = sub if sub is not None else draw(st.sampled_from([13, 14])) if draw(st.integers(0, 5)) else draw(u8)
    if mei == 14:
        return bytes([fc, mei, draw(st.integers(0, 5)), draw(u8)])
    return bytes([fc, mei]) + draw(st.binary(max_size=6))


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    pdu = draw(public_pdus())[:253]
    return mbap(pdu, draw(st.integers(0, 12) | u8), draw(u16))


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A frame from `valid_frames`, then one structural mutation, keeping or breaking the MBAP length."""
    frame = bytearray(draw(valid_frames()))
    how = draw(st.sampled_from(["truncate", "extend", "flip", "recode", "none"]))
    if how == "truncate" and len(frame) > 8:
        frame = frame[: draw(st.integers(8, len(frame) - 1))]
    elif how == "extend":
        frame += draw(st.binary(min_size=1, max_size=6))
    elif how == "flip":
        for _ in range(draw(st.integers(1, 3))):
            bit = draw(st.integers(7 * 8, len(frame) * 8 - 1)) if len(frame) > 7 else 0
            frame[bit // 8] ^= 1 << (bit % 8)
    elif how == "recode":
        frame[7] = draw(u8)
    if draw(st.integers(0, 3)) and 8 <= len(frame) <= 260:
        frame[4:6] = (len(frame) - 6).to_bytes(2, "big")  # keep the frame well framed
    return bytes(frame)


@st.composite
def any_code_frames(draw: st.DrawFn) -> bytes:
    """Every function code 0-255 with a short random body."""
    return mbap(bytes([draw(u8)]) + draw(st.binary(max_size=12)), draw(u8), draw(u16))


def frames() -> st.SearchStrategy[bytes]:
    return st.one_of(
        valid_frames(),
        valid_frames(),
        valid_frames(),
        mutated_frames(),
        any_code_frames(),
        st.binary(max_size=20),
    )


TABLE_OF_FUNCTION = {1: "coils", 2: "discrete_inputs", 3: "holding_registers", 4: "input_registers",
                     5: "coils", 6: "holding_registers", 15: "coils", 16: "holding_registers",
                     20: "file_records", 21: "file_records", 22: "holding_registers",
                     23: "holding_registers", 24: "holding_registers"}


@st.composite
def aimed_requests(draw: st.DrawFn, ir: dict[str, Any]) -> tuple[int, int, bytes]:
    """(principal, device, frame) aimed at one entry of one rule: its function key, addresses and units.

    Random frames rarely get past the function and address checks of a random policy; these do, so the
    quantity, value and rate checks (and allowing) are exercised as often as the shallow ones.
    """
    rule = draw(st.sampled_from(ir["rules"]))
    principal = draw(st.sampled_from(rule["principals"]))
    device = draw(st.sampled_from(rule["devices"]))
    units = rule["units"] if rule["units"] is not None else ir["devices"][device]["units"]
    unit = draw(st.integers(units[0][0], units[0][1])) if units else draw(st.integers(0, 3))
    if not rule["allow"]:
        return principal, device, mbap(draw(public_pdus()), unit)
    entry = draw(st.sampled_from(rule["allow"]))
    keys = [tuple(k) for k in entry["functions"] if k[0] in PUBLIC_FUNCTIONS]
    if not keys:
        return principal, device, mbap(draw(public_pdus()), unit)
    fc, sub = draw(st.sampled_from(keys))
    table = TABLE_OF_FUNCTION.get(fc)
    targets = entry["ranges"][table] if table else []
    if not targets:
        return principal, device, mbap(draw(public_pdus(fc, sub)), unit)
    target = draw(st.sampled_from(targets))
    first = min(target["end"], target["start"] + draw(st.integers(0, 3)))
    if table == "file_records":
        return principal, device, mbap(draw(public_pdus(fc, sub, file_start=first))[:253], unit)
    return principal, device, mbap(draw(public_pdus(fc, sub, start=first & 0xFFFF))[:253], unit)


@st.composite
def steps(draw: st.DrawFn, ir: dict[str, Any]) -> list[tuple[int, int, bytes, int]]:
    """(principal, device, frame, now_ns) requests; indices include unknown ones, time mostly advances."""
    n_principals, n_devices = len(ir["principals"]), len(ir["devices"])
    now = draw(st.integers(0, 10 * SECOND) | st.sampled_from([0, 2**63, U64_MAX - SECOND]))
    out: list[tuple[int, int, bytes, int]] = []
    for _ in range(draw(st.integers(1, 8))):
        step = draw(st.sampled_from([0, 0, 1, 999, SECOND // 3, SECOND, -SECOND, 2**62]) | st.integers(-5, SECOND))
        now = min(U64_MAX, max(0, now + step))  # the engine's clock is u64 nanoseconds
        if out and draw(st.integers(0, 2)) == 0:
            # repeating the previous request is what drains a rate bucket
            out.append((*out[-1][:3], now))
            continue
        if ir["rules"] and draw(st.booleans()):
            out.append((*draw(aimed_requests(ir)), now))
            continue
        principal = draw(st.integers(0, n_principals - 1)) if draw(st.integers(0, 15)) != 7 else draw(UNKNOWN)
        device = draw(st.integers(0, n_devices - 1)) if draw(st.integers(0, 15)) != 7 else draw(UNKNOWN)
        out.append((principal, device, draw(frames()), now))
    return out
