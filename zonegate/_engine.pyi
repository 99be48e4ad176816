"""Stub of the Rust extension (rust_ext/). Semantics: docs/engine.md. Checked by stubtest in `make test`."""

from typing import final

# split() status values
COMPLETE: int  # 0: n is the ADU length
INCOMPLETE: int  # 1: n is the number of bytes still needed
INVALID: int  # 2: n is the invalid reason: 1 protocol_id, 2 length

def split(buf: bytes, /) -> tuple[int, int]: ...
def parse_request(frame: bytes, /) -> Request: ...

@final
class Request:
    """One parsed request ADU (plain data). `malformed` is 0 when the request is well formed."""

    transaction_id: int
    unit: int
    function: int
    sub: int | None
    malformed: int
    known_function: bool
    quantity: int
    # (table, start, end_inclusive, is_write) for every range touched, in wire order
    ranges: list[tuple[int, int, int, bool]]
    # (table, address, value) for every written value, in wire order
    values: list[tuple[int, int, int]]

@final
class Decision:
    verdict: int
    reason: int
    malformed: int
    rule_id: str
    exception_code: int | None
    function: int
    sub: int | None
    unit: int
    @property
    def forward(self) -> bool: ...

@final
class BatchSummary:
    frames: int
    allowed: int
    denied: int
    would_deny: int
    consumed: int
    # one byte per frame: verdict << 4 | reason
    verdicts: bytes

@final
class Engine:
    def __init__(self, ir_json: str, /) -> None: ...
    @property
    def mode(self) -> str: ...
    def principal_index(self, name: str, /) -> int: ...
    def device_index(self, name: str, /) -> int: ...
    def decide(self, principal: int, device: int, frame: bytes, now_ns: int | None = None) -> Decision: ...
    def decide_batch(
        self, principal: int, device: int, buf: bytes, now_ns: int | None = None
    ) -> BatchSummary: ...
