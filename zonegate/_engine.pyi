"""Stub of the Rust extension (rust_ext/). Semantics: docs/engine.md. Checked by stubtest in `make test`.

Integer codes (docs/engine.md sections 2 and 5):
  verdict: 0 allow, 1 deny, 2 would_deny
  reason: 0 allowed, 1 unknown_principal, 2 malformed, 3 no_matching_rule, 4 unit_not_allowed,
          5 function_not_allowed, 6 address_out_of_range, 7 quantity_exceeded, 8 value_out_of_bounds,
          9 rate_exceeded
  malformed: 0 none, 1 truncated, 2 trailing_bytes, 3 bad_quantity, 4 bad_byte_count, 5 address_overflow,
          6 bad_coil_value, 7 bad_subfunction, 8 bad_mei_type, 9 bad_reference_type, 10 bad_record,
          11 bad_device_id_code
  table: 0 coils, 1 discrete_inputs, 2 input_registers, 3 holding_registers, 4 file_records

A frame handed to `parse_request` / `Engine.decide` should be exactly one ADU from `split`. One that is
not is malformed: `truncated` when shorter than 8 bytes, when its protocol id is not 0, or when it holds
fewer bytes than its length field declares; `trailing_bytes` when it holds more (or more than 260 bytes).
"""

from collections.abc import Callable
from typing import Any, final

# split() status values
COMPLETE: int  # 0: n is the ADU length
INCOMPLETE: int  # 1: n is the number of bytes still needed
INVALID: int  # 2: n is the invalid reason: 1 protocol_id, 2 length

def split(buf: bytes, /) -> tuple[int, int]: ...
def parse_request(frame: bytes, /) -> Request: ...
def parse_response(frame: bytes, /) -> Response: ...
def response_matches(request: bytes, response: bytes, /) -> bool:
    """True when `response` is well formed and answers `request`: same transaction id, same unit, and
    the request's function code or its exception form (fc | 0x80)."""

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
    # (table, address, value) for every written value, in wire order; FC 22 (mask write) carries no
    # value and appears only in `ranges`
    values: list[tuple[int, int, int]]

@final
class Response:
    """One parsed reply ADU. `malformed` is 0 when well formed; `exception_code` is set for fc | 0x80."""

    transaction_id: int
    unit: int
    function: int
    exception_code: int | None
    malformed: int

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
    # 0, or the invalid reason (1 protocol_id, 2 length) of the header deciding stopped at
    invalid: int
    # one byte per frame: verdict << 4 | reason
    verdicts: bytes

@final
class Engine:
    """A compiled policy (immutable) and its rate buckets. Invalid IR raises ValueError naming the field."""

    def __new__(cls, ir_json: str, /) -> Engine: ...
    def __init__(self, ir_json: str, /) -> None: ...
    @property
    def mode(self) -> str: ...
    @property
    def rule_ids(self) -> tuple[str, ...]: ...
    def principal_index(self, name: str, /) -> int:
        """IR index of the principal; KeyError when there is none by that name."""

    def device_index(self, name: str, /) -> int:
        """IR index of the device; KeyError when there is none by that name."""

    def decide(self, principal: int, device: int, frame: bytes, now_ns: int | None = None) -> Decision:
        """Decide one ADU. `now_ns=None` reads CLOCK_MONOTONIC (the clock of `time.monotonic_ns()`)."""

    def decide_batch(
        self, principal: int, device: int, buf: bytes, now_ns: int | None = None
    ) -> BatchSummary:
        """Split `buf` and decide every complete ADU at its start, at one instant, without the GIL."""

    def decide_cip(
        self, principal: int, device: int, message: bytes, now_ns: int | None = None, route: bytes | None = None
    ) -> CipDecision:
        """Decide one CIP message router request; `route` is a connection path EPATH whose ports prefix
        every leaf's route. ValueError(kind) when `route` does not parse or names a tag."""

    def decide_enip(
        self, principal: int, device: int, session: EnipSession, frame: bytes, now_ns: int | None = None
    ) -> CipDecision:
        """Decide one EtherNet/IP encapsulation message of the client connection `session` tracks."""

# --- Modbus relay (`zonegate run --relay rust`; binding in rust_ext/src/py_relay.rs) -----------------------

_RelayEvent = (
    # ("identify", conn_id, listener, peer "host:port" ("[addr]:port" for IPv6), client certificate DER | None)
    tuple[str, int, str, str, bytes | None]
    | tuple[str, int]  # ("closed", conn_id)
    # ("audit", conn_id, listener, device, adu, verdict name, reason name, rule id, exception, malformed name,
    #  CLOCK_REALTIME ns): every deny and would_deny and every forwarded write
    | tuple[str, int, str, str | None, bytes, str, str, str | None, int | None, str | None, int]
    | tuple[str, str, str]  # ("log", "info" | "warning" | "error", message)
    | tuple[str, int, bytes | None, int | None]  # ("reply", token, reply ADU, exception code)
    | tuple[str, int, int]  # ("dropped", audit records, log lines): the queue was full since the last take
)

@final
class Relay:
    """The Modbus relay on tokio (docs/relay.md): accepts on the sockets Python bound, decides every request with
    `engine`, answers or forwards it; Python names principals and writes audit records from the events."""

    def __new__(cls, engine: Engine, config: dict[str, Any], fds: list[int], threads: int = 2) -> Relay: ...
    def __init__(self, engine: Engine, config: dict[str, Any], fds: list[int], threads: int = 2) -> None:
        """Starts the runtime and one accept loop per listener; `fds[i]` is `config["listeners"][i]`'s bound
        listening socket, owned by the relay once this returns. ValueError names the listener or device whose
        settings or TLS material do not load (the fds then stay the caller's)."""

    def event_fd(self) -> int:
        """Readable while events wait: read it (8 bytes), then call `events()`."""

    def events(self) -> list[_RelayEvent]: ...
    def identify(self, conn_id: int, principal: str | None, /) -> None:
        """The answer to an `identify` event: the principal's name, or None when unknown."""

    def reload(self, engine: Engine, config: dict[str, Any]) -> None:
        """Swaps in the new engine and configuration once all of it builds; ValueError keeps the old one.
        The listeners must be the same, in the same order (they are bound at start)."""

    def submit(self, device: str, adu: bytes, /) -> int:
        """Forwards one complete ADU to `device` (KeyError when unknown; ValueError when not one ADU or the relay
        is stopped); the answer comes as a ("reply", token, ...) event."""

    def snapshot(self) -> dict[str, Any]: ...
    def stop(self, timeout: float) -> None:
        """Stops accepting, waits up to `timeout` seconds for forwarded requests, then closes everything."""


# --- capture replay (`zonegate replay`; binding in rust_ext/src/py_replay.rs) ------------------------

@final
class ReplayDenial:
    """One request the policy would have refused, as found in a capture."""

    frame: int  # capture frame that completed the request, numbered from 1
    ts_ns: int
    client: str
    client_port: int
    server: str
    server_port: int
    principal: str  # empty when no principal matched the client
    device: str  # empty when no device matched the server
    unit: int
    function: int
    verdict: str
    reason: str
    malformed: str | None
    rule_id: str

@final
class ReplayCipDenial:
    """One EtherNet/IP message the policy would have refused, as found in a capture."""

    frame: int  # capture frame that completed the message, numbered from 1
    ts_ns: int
    client: str
    client_port: int
    server: str
    server_port: int
    principal: str  # empty when no principal matched the client
    device: str  # empty when no device matched the server
    command: str  # encapsulation command name ("send_unit_data"), or "0x...." when unknown
    service: str  # service of the denied CIP request (inside any container); "" when none was read
    verdict: str
    reason: str
    malformed: str | None
    rule_id: str
    target: str  # tag name, "class 0x01 instance 1 attribute 7", or ""
    route: str  # docs/cip-engine.md section 4 syntax
    denied_leaf: int | None
    general_status: int | None
    encap_status: int | None

@final
class ReplayReport:
    """What a policy would have done to a capture."""

    format: str  # "pcap" or "pcapng"
    frames: int
    tcp_segments: int
    flows: int
    requests: int
    allowed: int
    denied: int
    would_deny: int
    malformed: int
    replies: int
    exception_replies: int
    by_reason: dict[str, int]
    by_function: dict[int, int]
    by_unit: dict[int, int]
    by_rule: dict[str, int]
    by_rule_denied: dict[str, int]
    invalid_streams: int
    # (frame, client, client_port, server, server_port, "requests" | "replies", reason)
    invalid_list: list[tuple[int, str, int, str, int, str, str]]
    denials: list[ReplayDenial]
    anomalies: dict[str, int]
    bytes_read: int
    capture_error: str | None
    # EtherNet/IP flows (docs/replay.md): encapsulation messages decided with decide_enip
    cip_flows: int
    cip_requests: int
    cip_allowed: int
    cip_denied: int
    cip_would_deny: int
    cip_malformed: int
    cip_replies: int
    cip_error_replies: int  # non-zero encapsulation status or CIP general status
    cip_leaves: int  # CIP requests inside the decided messages, containers opened
    cip_by_command: dict[str, int]
    cip_replies_by_command: dict[str, int]
    cip_by_service: dict[str, int]  # outer service of each CIP message
    cip_by_leaf_service: dict[str, int]  # every request inside, containers opened
    cip_by_reason: dict[str, int]
    cip_by_malformed: dict[str, int]
    cip_by_rule: dict[str, int]
    cip_by_rule_denied: dict[str, int]
    cip_anomalies: dict[str, int]  # unseen_connection_requests, unmatched_replies
    cip_denials: list[ReplayCipDenial]

def replay_capture(
    ir_json: str,
    path: str,
    /,
    principal: str | None = None,
    device: str | None = None,
    max_listed: int = 20,
    progress: Callable[[int, int], object] | None = None,
) -> ReplayReport:
    """Replay a pcap or pcapng file through a policy given as IR JSON (docs/engine.md section 3)."""

# --- EtherNet/IP and CIP decisions (docs/cip-engine.md section 8; binding in rust_ext/src/py_cip.rs) ------
#
# CipDecision.reason: 0 allowed, 1 unknown_principal, 2 malformed, 3 no_matching_rule, 9 rate_exceeded,
#   10 route_not_allowed, 11 service_not_allowed, 12 target_not_allowed, 13 command_not_allowed
# verdict as for Decision: 0 allow, 1 deny, 2 would_deny

@final
class CipDecision:
    verdict: int
    reason: int
    rule_id: str  # empty when no rule decided
    malformed: str | None  # kind name when reason is malformed
    general_status: int | None  # CIP general status to answer (a deny at the CIP level)
    encap_status: int | None  # encapsulation status to answer (a deny at the encapsulation level)
    command: int  # encapsulation command word; 0 for decide_cip
    service: int  # outer CIP service byte; 0 when none
    leaves: int  # leaves decided against the policy
    denied_leaf: int | None  # wire-order index of the first denied (or malformed) leaf
    target: str  # the denied leaf's target, or the first leaf's when allowed
    route: str  # that leaf's route text
    @property
    def forward(self) -> bool: ...

@final
class EnipSession:
    """Connection table of one client connection (Forward Open -> connection id -> route)."""

    def __new__(cls) -> EnipSession: ...
    def __init__(self) -> None: ...
    @property
    def connections(self) -> int: ...
    def observe_reply(self, request: bytes, reply: bytes, /) -> bool:
        """False when `reply` does not answer `request`; else applies Forward Open replies and Forward
        Close to the table and returns True."""
    def unanswered(self, request: bytes, /) -> None:
        """`request` got the gateway's answer, not the device's: a Forward Open in it is forgotten (its
        triad free again, no longer counted in `connections`)."""

def enip_split(buf: bytes, /) -> tuple[int, int]:
    """(COMPLETE, used), (INCOMPLETE, needed) or (INVALID, 1: length beyond the bound)."""

def cip_service_names() -> tuple[str, ...]:
    """Every CIP service name a policy may use (containers excluded)."""

_CipLeaf = tuple[
    str | None,  # service name; None for an unresolved code
    int,  # service code byte
    str,  # route text
    str | None,  # tag text, case as on the wire
    int | None,  # class
    int | None,  # instance
    int | None,  # attribute
    int | None,  # element count (Read/Write Tag and their Fragmented forms)
    int,  # anomaly bits
    tuple[tuple[int, bytes], ...],  # route hops (port, link), as compared
    tuple[tuple[str, tuple[int, ...]], ...] | None,  # tag parts and their elements
    int,  # depth
    int | None,  # Forward Open transport class
    str | None,  # Forward Open / Close data error kind
]

def cip_flatten(message: bytes, /) -> list[_CipLeaf]:
    """Every request inside a message router request, in wire order; ValueError(kind) when it does not flatten."""
