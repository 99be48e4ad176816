"""Reference model of the engine stage for CIP: deciding a message's leaves, and an encapsulation
message with its session's connections, in plain Python.

This is docs/cip-engine.md sections 3-6 and 8 written out as directly as Python allows. Parsing is not
modelled: the model decides over the leaves `zonegate._engine.cip_flatten` returns (section 8), and over
encapsulation messages described as their sender built them (`EnipMessage`), so a disagreement with
`Engine.decide_cip` / `decide_enip` is a disagreement about the decision, never about the bytes. It is the
oracle of the property tests and is never on the per-message path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .reference_model import ALLOW, ALLOWED, DENY, MALFORMED, NO_MATCHING_RULE, RATE_EXCEEDED, UNKNOWN_PRINCIPAL
from .reference_model import WOULD_DENY, _Bucket, _Rate, charge

ROUTE_NOT_ALLOWED: Final = 10
SERVICE_NOT_ALLOWED: Final = 11
TARGET_NOT_ALLOWED: Final = 12
COMMAND_NOT_ALLOWED: Final = 13

# General status of a denial (section 5).
RESOURCE_UNAVAILABLE: Final = 0x02
PRIVILEGE_VIOLATION: Final = 0x0F

# Anomaly bits (enip.md section 4) that make a leaf's path unreadable for a policy.
NONZERO_PAD: Final = 1
MIXED_ADDRESSING: Final = 2
DATA_SEGMENT: Final = 4
NETWORK_SEGMENT: Final = 8
SHORT_DATA: Final = 64
BAD_PATH_ANOMALIES: Final = NONZERO_PAD | MIXED_ADDRESSING | DATA_SEGMENT | NETWORK_SEGMENT

TAG_SERVICES: Final = frozenset({
    "read_tag", "read_tag_fragmented", "write_tag", "write_tag_fragmented", "read_modify_write_tag",
})
OPEN_SERVICES: Final = frozenset({"forward_open", "large_forward_open"})

# General status of each malformed kind: flatten errors (enip.md sections 4-6) and the engine's own.
MALFORMED_STATUS: Final[dict[str, int]] = {
    "truncated": 0x04, "path_size": 0x04, "bad_route": 0x04, "bad_path": 0x04,
    "reply_in_request": 0x08, "io_connection": 0x08,
    "data_truncated": 0x13, "short_data": 0x13,
    "data_trailing": 0x15,
    "bad_offsets": 0x20, "too_deep": 0x20, "too_many_requests": 0x20,
}


def malformed_status(kind: str) -> int:
    """A path error (`path_*`) is 0x04 like every other path problem."""
    return 0x04 if kind.startswith("path_") else MALFORMED_STATUS[kind]


Hop = tuple[int, bytes]


@dataclass(frozen=True)
class Leaf:
    """One request `cip_flatten` found, with the fields the decision reads (section 8's 14-tuple)."""

    service: str | None
    code: int
    route_text: str
    tag_text: str | None
    class_: int | None
    instance: int | None
    attribute: int | None
    elements: int | None
    anomalies: int
    hops: tuple[Hop, ...]
    tag_parts: tuple[tuple[str, tuple[int, ...]], ...] | None
    depth: int
    transport_class: int | None
    data_error: str | None

    @classmethod
    def from_binding(cls, raw: tuple[Any, ...]) -> Leaf:
        hops = tuple((int(port), bytes(link)) for port, link in raw[9])
        parts = None if raw[10] is None else tuple((str(n), tuple(int(e) for e in el)) for n, el in raw[10])
        return cls(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7], raw[8], hops, parts,
                   raw[11], raw[12], raw[13])

    def target_text(self) -> str:
        """For audit: the tag name as on the wire, or the logical address from its class, or nothing."""
        if self.tag_text is not None:
            return self.tag_text
        if self.class_ is None:
            return ""
        words = [f"class 0x{self.class_:02X}"]
        if self.instance is not None:
            words.append(f"instance {self.instance}")
        if self.attribute is not None:
            words.append(f"attribute {self.attribute}")
        return " ".join(words)


def route_text(hops: tuple[Hop, ...]) -> str:
    """Section 4 syntax: a one-byte link in decimal, a longer printable one as its text, else 0x and hex."""
    out = []
    for port, link in hops:
        if len(link) == 1:
            shown = str(link[0])
        elif all(0x21 <= c <= 0x7E and c not in b",/" for c in link):
            shown = link.decode("ascii")
        else:
            shown = "0x" + link.hex()
        out.append(f"{port},{shown}")
    return "/".join(out)


@dataclass(frozen=True)
class CipDecision:
    """What the engine decided for one CIP message (sections 7 and 8)."""

    verdict: int
    reason: int
    rule_id: str
    malformed: str | None
    general_status: int | None
    service: int
    leaves: int
    denied_leaf: int | None
    target: str
    route: str
    command: int = 0
    encap_status: int | None = None

    @property
    def forward(self) -> bool:
        return self.verdict != DENY


@dataclass(frozen=True)
class _PatternPart:
    name: str
    elements: tuple[tuple[int, int], ...] | None


@dataclass(frozen=True)
class _CipEntry:
    services: frozenset[str]
    codes: frozenset[int]
    tags: tuple[tuple[_PatternPart, ...], ...] | None
    classes: tuple[tuple[int, int], ...] | None
    instances: tuple[tuple[int, int], ...] | None
    attributes: tuple[tuple[int, int], ...] | None
    routes: tuple[tuple[Hop, ...], ...] | None
    rate: _Rate | None


@dataclass(frozen=True)
class _CipRule:
    rule_id: str
    principals: frozenset[int]
    devices: frozenset[int]
    cip: tuple[_CipEntry, ...]


def _spans(raw: Any) -> tuple[tuple[int, int], ...] | None:
    return None if raw is None else tuple((int(lo), int(hi)) for lo, hi in raw)


def _cip_entry(raw: dict[str, Any]) -> _CipEntry:
    tags = None
    if raw.get("tags") is not None:
        tags = tuple(
            tuple(_PatternPart(p["name"], _spans(p["elements"])) for p in pattern["parts"]) for pattern in raw["tags"]
        )
    routes = None
    if raw.get("routes") is not None:
        routes = tuple(tuple((int(port), bytes(link)) for port, link in route) for route in raw["routes"])
    rate = raw.get("rate")
    return _CipEntry(
        services=frozenset(raw["services"]),
        codes=frozenset(int(c) for c in raw.get("service_codes", [])),
        tags=tags,
        classes=_spans(raw.get("classes")),
        instances=_spans(raw.get("instances")),
        attributes=_spans(raw.get("attributes")),
        routes=routes,
        rate=None if rate is None else _Rate(int(rate["count"]), int(rate["period_ns"]), int(rate["burst"])),
    )


def _within(spans: tuple[tuple[int, int], ...], value: int) -> bool:
    return any(lo <= value <= hi for lo, hi in spans)


def _part_matches(pattern: _PatternPart, name: str, elements: tuple[int, ...]) -> bool:
    if pattern.name != "*" and pattern.name != name.lower():
        return False
    if pattern.name == "*" or pattern.elements is None:
        return True
    return len(elements) == len(pattern.elements) and all(
        lo <= index <= hi for index, (lo, hi) in zip(elements, pattern.elements, strict=True)
    )


def pattern_matches(pattern: tuple[_PatternPart, ...], parts: tuple[tuple[str, tuple[int, ...]], ...],
                    count: int | None) -> bool:
    """Section 3: does the pattern admit the tag, and its element count (for tag services)?"""
    trailing_star = pattern[-1].name == "*"
    fixed = pattern[:-1] if trailing_star else pattern
    if trailing_star and len(parts) < len(pattern):
        return False  # `Line1.*` needs at least one part after Line1
    if len(parts) < len(fixed):
        return False
    for pattern_part, (name, elements) in zip(fixed, parts, strict=False):
        if not _part_matches(pattern_part, name, elements):
            return False
    if count is None:
        return True
    with_elements = [k for k, (_, elements) in enumerate(parts) if elements]
    if not with_elements:
        return True  # the tag names no element: the count is the device's business
    k = with_elements[-1]
    if k >= len(fixed) or fixed[k].name == "*" or fixed[k].elements is None:
        return True  # matched by a part without brackets: the array is allowed whole
    elements = parts[k][1]
    if len(elements) > 1:
        return count <= 1
    lo, hi = fixed[k].elements[0]  # type: ignore[index]
    return elements[0] + max(count, 1) - 1 <= hi and elements[0] >= lo


class CipReferenceModel:
    """The CIP half of one IR document, deciding flattened messages the way section 5 says."""

    def __init__(self, ir: dict[str, Any]) -> None:
        self.mode: str = ir["mode"]
        self.principal_count = len(ir["principals"])
        self._rules = tuple(
            _CipRule(r["id"], frozenset(r["principals"]), frozenset(r["devices"]),
                     tuple(_cip_entry(e) for e in r.get("cip", [])))
            for r in ir["rules"]
        )
        # per (rule, cip entry, principal); apart from the Modbus buckets of the same rule
        self._buckets: dict[tuple[int, int, int], _Bucket] = {}

    def decide(self, principal: int, device: int, service: int, flattened: list[Leaf] | str, now_ns: int,
               prefix: tuple[Hop, ...] = ()) -> CipDecision:
        """`flattened`: the leaves, or the kind of the flatten error; `prefix`: a connection path's ports."""
        if not 0 <= principal < self.principal_count:
            return CipDecision(DENY, UNKNOWN_PRINCIPAL, "", None, PRIVILEGE_VIOLATION, service, 0, None, "", "")
        if isinstance(flattened, str):
            return CipDecision(DENY, MALFORMED, "", flattened, malformed_status(flattened), service, 0, None, "", "")
        leaves = flattened
        for index, leaf in enumerate(leaves):
            kind = self._malformed_kind(leaf)
            if kind is not None:
                # found before any leaf is decided against the policy: no leaf counts as decided
                return CipDecision(DENY, MALFORMED, "", kind, malformed_status(kind), service, 0, index,
                                   leaf.target_text(), route_text(prefix + leaf.hops))
        candidates = [(n, rule) for n, rule in enumerate(self._rules)
                      if principal in rule.principals and device in rule.devices and rule.cip]
        first_rule = ""
        for index, leaf in enumerate(leaves):
            hops = prefix + leaf.hops
            reason, rule_id = self._decide_leaf(candidates, principal, leaf, hops, now_ns)
            if reason != ALLOWED:
                return self._deny(reason, rule_id, service, index, leaf, hops)
            first_rule = first_rule or rule_id
        first = leaves[0]
        return CipDecision(ALLOW, ALLOWED, first_rule, None, None, service, len(leaves), None,
                           first.target_text(), route_text(prefix + first.hops))

    @staticmethod
    def _malformed_kind(leaf: Leaf) -> str | None:
        if leaf.anomalies & BAD_PATH_ANOMALIES:
            return "bad_path"
        if leaf.service in TAG_SERVICES and leaf.anomalies & SHORT_DATA:
            return "short_data"
        if leaf.data_error is not None:
            return leaf.data_error
        if leaf.service in OPEN_SERVICES and leaf.transport_class in (0, 1):
            return "io_connection"
        return None

    def _decide_leaf(self, candidates: list[tuple[int, _CipRule]], principal: int, leaf: Leaf,
                     hops: tuple[Hop, ...], now_ns: int) -> tuple[int, str]:
        if not candidates:
            return NO_MATCHING_RULE, ""
        deepest: tuple[int, str] | None = None  # (depth, rule id)
        for rule_index, rule in candidates:
            for entry_index, entry in enumerate(rule.cip):
                depth = self._failure_depth(entry, leaf, hops)
                if depth is None:
                    if entry.rate is not None and not self._charge((rule_index, entry_index, principal), entry.rate,
                                                                   now_ns):
                        return RATE_EXCEEDED, rule.rule_id
                    return ALLOWED, rule.rule_id
                if deepest is None or depth > deepest[0]:
                    deepest = (depth, rule.rule_id)
        assert deepest is not None
        reason = {1: ROUTE_NOT_ALLOWED, 2: SERVICE_NOT_ALLOWED, 3: TARGET_NOT_ALLOWED}[deepest[0]]
        return reason, deepest[1]

    @staticmethod
    def _failure_depth(entry: _CipEntry, leaf: Leaf, hops: tuple[Hop, ...]) -> int | None:
        if entry.routes is not None and hops not in entry.routes:
            return 1
        if leaf.service is not None:
            if leaf.service not in entry.services:
                return 2
        elif leaf.code not in entry.codes:
            return 2
        if entry.tags is not None:
            if leaf.tag_parts is None:
                return 3
            if not any(pattern_matches(p, leaf.tag_parts, leaf.elements) for p in entry.tags):
                return 3
        elif entry.classes is not None or entry.instances is not None or entry.attributes is not None:
            if leaf.class_ is None or leaf.tag_parts is not None:
                return 3
            for spans, value in ((entry.classes, leaf.class_), (entry.instances, leaf.instance),
                                 (entry.attributes, leaf.attribute)):
                if spans is not None and (value is None or not _within(spans, value)):
                    return 3
        return None

    def _deny(self, reason: int, rule_id: str, service: int, index: int, leaf: Leaf,
              hops: tuple[Hop, ...]) -> CipDecision:
        if self.mode == "monitor":
            return CipDecision(WOULD_DENY, reason, rule_id, None, None, service, index + 1, index,
                               leaf.target_text(), route_text(hops))
        status = RESOURCE_UNAVAILABLE if reason == RATE_EXCEEDED else PRIVILEGE_VIOLATION
        return CipDecision(DENY, reason, rule_id, None, status, service, index + 1, index, leaf.target_text(),
                           route_text(hops))

    def _charge(self, key: tuple[int, int, int], rate: _Rate, now_ns: int) -> bool:
        return charge(self._buckets, key, rate, now_ns)


# --- encapsulation messages (section 6) -------------------------------------------------------------

NOP: Final = 0x0000
LIST_SERVICES: Final = 0x0004
LIST_IDENTITY: Final = 0x0063
LIST_INTERFACES: Final = 0x0064
REGISTER_SESSION: Final = 0x0065
UNREGISTER_SESSION: Final = 0x0066
SEND_RR_DATA: Final = 0x006F
SEND_UNIT_DATA: Final = 0x0070
ANSWERED_COMMANDS: Final = frozenset({NOP, LIST_SERVICES, LIST_IDENTITY, LIST_INTERFACES, REGISTER_SESSION,
                                      UNREGISTER_SESSION})

NULL_ADDRESS: Final = 0x0000
CONNECTED_ADDRESS: Final = 0x00A1
SEQUENCED_ADDRESS: Final = 0x8002
CONNECTED_DATA: Final = 0x00B1
UNCONNECTED_DATA: Final = 0x00B2

ENCAP_INVALID_COMMAND: Final = 0x0001
ENCAP_INCORRECT_DATA: Final = 0x0003
CONNECTION_FAILURE: Final = 0x01
MAX_CONNECTIONS: Final = 128

Triad = tuple[int, int, int]  # connection serial, originator vendor, originator serial


@dataclass(frozen=True)
class EnipMessage:
    """An encapsulation message that frames correctly, as its sender built it: the command word, the CPF
    items of SendRRData / SendUnitData, and, when the CIP message of a SendRRData is (or a chain of
    Unconnected Sends delivers) a (Large) Forward Open whose data reads, its triad and the route the
    connection takes: the chain's hops, then the connection path's ports (section 8)."""

    command: int
    items: tuple[tuple[int, bytes], ...] = ()
    forward_open: tuple[Triad, tuple[Hop, ...]] | None = None


@dataclass
class ModelSession:
    """One client connection's connections: pending by triad, open by O->T connection id."""

    pending: dict[Triad, tuple[Hop, ...]] = field(default_factory=dict)
    open: dict[int, tuple[Triad, tuple[Hop, ...]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pending) + len(self.open)

    def requested(self, triad: Triad, hops: tuple[Hop, ...]) -> str | None:
        """Remember a forwarded Forward Open; the malformed kind when the session cannot."""
        if triad in self.pending or any(t == triad for t, _ in self.open.values()):
            return "duplicate_connection"
        if len(self) >= MAX_CONNECTIONS:
            return "too_many_connections"
        self.pending[triad] = hops
        return None

    def replied(self, triad: Triad, ot_connection_id: int) -> None:
        """The device opened the connection (a reply to no pending Forward Open opens nothing)."""
        if triad in self.pending:
            self.open[ot_connection_id] = (triad, self.pending.pop(triad))

    def refused(self, triad: Triad) -> None:
        self.pending.pop(triad, None)

    def closed(self, triad: Triad) -> None:
        self.pending.pop(triad, None)
        for connection_id, (t, _) in list(self.open.items()):
            if t == triad:
                del self.open[connection_id]
                break


Flatten = Callable[[bytes], "list[Leaf] | str"]


def _first(items: tuple[tuple[int, bytes], ...], kinds: tuple[int, ...]) -> tuple[int, bytes] | None:
    return next((item for item in items if item[0] in kinds), None)


def decide_enip(reference: CipReferenceModel, principal: int, device: int, session: ModelSession,
                message: EnipMessage, flatten: Flatten, now_ns: int) -> CipDecision:
    """Section 6 and its section 8 additions: one encapsulation message of a client connection."""
    command = message.command
    base = CipDecision(ALLOW, ALLOWED, "", None, None, 0, 0, None, "", "", command)
    if not 0 <= principal < reference.principal_count:
        return replace(base, verdict=DENY, reason=UNKNOWN_PRINCIPAL, general_status=PRIVILEGE_VIOLATION)
    if command in ANSWERED_COMMANDS:
        return base
    if command not in (SEND_RR_DATA, SEND_UNIT_DATA):
        return replace(base, verdict=DENY, reason=COMMAND_NOT_ALLOWED, encap_status=ENCAP_INVALID_COMMAND)
    bad_items = replace(base, verdict=DENY, reason=MALFORMED, malformed="cpf_bad_items",
                        encap_status=ENCAP_INCORRECT_DATA)
    address = _first(message.items, (NULL_ADDRESS, CONNECTED_ADDRESS, SEQUENCED_ADDRESS))
    payload = _first(message.items, (CONNECTED_DATA, UNCONNECTED_DATA))
    two = len(message.items) == 2
    if command == SEND_RR_DATA:
        if address is None or address[0] != NULL_ADDRESS or payload is None or payload[0] != UNCONNECTED_DATA or not two:
            return bad_items
        cip = payload[1]
        out = replace(reference.decide(principal, device, cip[0] if cip else 0, flatten(cip), now_ns), command=command)
        if out.forward and message.forward_open is not None:
            refused = session.requested(*message.forward_open)
            if refused is not None:
                # a connection the session could not attribute must not open, whatever the mode
                out = replace(out, verdict=DENY, reason=MALFORMED, rule_id="", malformed=refused,
                              general_status=CONNECTION_FAILURE, denied_leaf=0)
        return out
    if address is not None and address[0] == CONNECTED_ADDRESS and payload is not None \
            and payload[0] == CONNECTED_DATA and two:
        connection_id = int.from_bytes(address[1][:4], "little")
        cip = payload[1][2:]
        connection = session.open.get(connection_id)
        if connection is None:
            return replace(base, verdict=DENY, reason=MALFORMED, malformed="unknown_connection",
                           general_status=CONNECTION_FAILURE, service=cip[0] if cip else 0)
        decided = reference.decide(principal, device, cip[0] if cip else 0, flatten(cip), now_ns, connection[1])
        return replace(decided, command=command)
    if address is not None and address[0] == SEQUENCED_ADDRESS:
        return replace(base, verdict=DENY, reason=MALFORMED, malformed="io_connection",
                       encap_status=ENCAP_INCORRECT_DATA)
    return bad_items
