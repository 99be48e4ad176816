"""Policy loading: address ranges per Modbus table, with their write-value bounds.

Addresses are zero-based, as on the wire: holding register 0 is the first register. A table's value is
one range or a list of ranges; a range is `100-109`, `100`, `[100, 109]` or a mapping that adds value
bounds (`{range: 100-109, min: 0, max: 1500, signed: true}`). File records are written
`{file: 4, records: 0-99}`. Within a table, ranges must not overlap (adjacent ranges are fine).
"""

from __future__ import annotations

from difflib import get_close_matches
from itertools import pairwise
from typing import Final

from pydantic import BaseModel, ConfigDict

from .errors import FieldError, FieldPath
from .scalars import is_int, parse_span

TABLES: Final = ("coils", "discrete_inputs", "input_registers", "holding_registers", "file_records")
MAX_ADDRESS: Final = 65535
MAX_RECORD: Final = 9999
U16: Final = (0, 65535)
I16: Final = (-32768, 32767)
COIL: Final = (0, 1)


class AddressRange(BaseModel):
    """An inclusive address range and the bounds on values written into it.

    For file records `file` is the file number and `start`/`end` are record numbers; the compiled
    policy addresses them as `file << 16 | record`.
    """

    model_config = ConfigDict(frozen=True)

    start: int
    end: int
    min: int | None = None
    max: int | None = None
    signed: bool = False
    file: int | None = None

    def label(self) -> str:
        span = f"{self.start}-{self.end}" if self.start != self.end else str(self.start)
        return f"file {self.file} records {span}" if self.file is not None else span

    @property
    def bounded(self) -> bool:
        return self.min is not None


def _within(sub: FieldPath, exc: FieldError) -> FieldError:
    return FieldError(exc.message, sub + exc.subpath, exc.suggestion)


def _bounds(item: dict[object, object], table: str) -> tuple[int | None, int | None, bool]:
    signed = item.get("signed", False)
    if not isinstance(signed, bool):
        raise FieldError(f"signed is true or false, not {signed!r}", ("signed",))
    if signed and table == "coils":
        raise FieldError("coil values are 0 or 1; signed does not apply", ("signed",))
    low, high = COIL if table == "coils" else I16 if signed else U16
    kind = "coil" if table == "coils" else "int16" if signed else "uint16"
    values: dict[str, int | None] = {}
    for key in ("min", "max"):
        value = item.get(key)
        if value is None:
            values[key] = None
            continue
        if not is_int(value):
            raise FieldError(f"{key} is a whole number, not {value!r}", (key,))
        if not low <= value <= high:  # type: ignore[operator]
            raise FieldError(f"{key} {value} is out of the {kind} range {low}..{high}", (key,))
        values[key] = value  # type: ignore[assignment]
    lo, hi = values["min"], values["max"]
    if lo is None and hi is None:
        return None, None, signed
    lo = low if lo is None else lo
    hi = high if hi is None else hi
    if lo > hi:
        raise FieldError(f"min {lo} is above max {hi}", ("min",))
    return lo, hi, signed


def _check_keys(item: dict[object, object], allowed: tuple[str, ...]) -> None:
    for key in item:
        if key not in allowed:
            near = get_close_matches(str(key), allowed, n=1)
            raise FieldError(f"unknown key {key!r}", (key,) if isinstance(key, str) else (), near[0] if near else None)


def parse_range(item: object, table: str) -> AddressRange:
    """One range of `table` (see the module docstring for the forms)."""
    if table == "file_records":
        if not isinstance(item, dict):
            raise FieldError("a file record range is {file: N, records: 0-99}")
        _check_keys(item, ("file", "records", "min", "max", "signed"))
        for key in ("file", "records"):
            if key not in item:
                raise FieldError(f"missing {key!r}: write {{file: N, records: 0-99}}")
        file = item["file"]
        if not isinstance(file, int) or isinstance(file, bool) or not 1 <= file <= 65535:
            raise FieldError(f"file {file!r} is out of range 1-65535", ("file",))
        try:
            start, end = parse_span(item["records"], 0, MAX_RECORD, "record")
        except FieldError as exc:
            raise _within(("records",), exc) from None
        low, high, signed = _bounds(item, table)
        return AddressRange(start=start, end=end, min=low, max=high, signed=signed, file=file)
    if isinstance(item, dict):
        _check_keys(item, ("range", "min", "max", "signed"))
        if "range" not in item:
            raise FieldError("missing 'range': write {range: 100-109, min: 0, max: 1500}")
        try:
            start, end = parse_span(item["range"], 0, MAX_ADDRESS, "address")
        except FieldError as exc:
            raise _within(("range",), exc) from None
        low, high, signed = _bounds(item, table)
        return AddressRange(start=start, end=end, min=low, max=high, signed=signed)
    start, end = parse_span(item, 0, MAX_ADDRESS, "address")
    return AddressRange(start=start, end=end)


def parse_table(value: object, table: str) -> tuple[AddressRange, ...]:
    """A table's whole value -> its ranges, in the order written; overlaps are an error."""
    if value is None:
        return ()
    single = not isinstance(value, list) or (len(value) == 2 and all(is_int(v) for v in value))
    items: list[object] = [value] if single or not isinstance(value, list) else value
    ranges: list[AddressRange] = []
    for n, item in enumerate(items):
        try:
            ranges.append(parse_range(item, table))
        except FieldError as exc:
            raise _within(() if single else (n,), exc) from None
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i].file or 0, ranges[i].start))
    for a, b in pairwise(order):
        first, second = ranges[a], ranges[b]
        if first.file == second.file and second.start <= first.end:
            later = max(a, b)
            raise FieldError(
                f"ranges {first.label()} and {second.label()} overlap", () if single else (later,)
            )
    return tuple(ranges)


def ir_address(r: AddressRange, start: bool) -> int:
    """The compiled policy's address: 16-bit, or `file << 16 | record` for file records."""
    record = r.start if start else r.end
    return record if r.file is None else (r.file << 16) | record
