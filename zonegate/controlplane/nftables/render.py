"""Control plane, nftables stage: render the `inet zonegate` table from a `FirewallSpec`.

Pure: no kernel, no I/O. Every rule is built once as a list of terms that know both their nft text and
their libnftables JSON, so what an operator reads (`zonegate nft render`) and what `apply` loads cannot
drift apart. The text is written the way `nft -s list table inet zonegate` prints it, so a live box can
be compared with the render line by line.

Shape of the table (docs/deploy.md walks through it):
  limit log_rate                       one shared budget for drop logging
  sets   <kind>_<name>_v4 / _v6        every address lives in a named set: a change is an element update
  sets   meter_<listener>_v4 / _v6     per-source new-connection meters (dynamic, timeout 1m)
  chain  prerouting                    only with transparent listeners: tproxy diversion, policy accept
  chain  input / forward / output      base chains, policy drop
  chain  drop_<what>                   one per drop point: rate-limited NFLOG with a prefix naming it,
                                       then a counter and the drop
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zonegate.controlplane.nftables.model import (
    FirewallSpec,
    FirewallSpecError,
    Network,
    Rate,
    Upstream,
)

FAMILY = "inet"
TABLE = "zonegate"
LOG_LIMIT = "log_rate"
METER_SIZE = 65535
METER_TIMEOUT_S = 60
# Kernel limits: NF_LOG_PREFIXLEN and NFTNL_UDATA_COMMENT_MAXLEN, both counting the terminator.
_PREFIX_MAX = 127
_COMMENT_MAX = 127
# Neighbour discovery keeps IPv6 on the box's own links working; hop limit 255 proves it is on-link.
# Outbound, the kernel also solicits routers and reports its multicast groups (MLD, hop limit 1) so that
# snooping switches keep delivering neighbour solicitations; listed in the order nft prints them.
_ND_IN = ("nd-neighbor-solicit", "nd-neighbor-advert")
_ND_OUT = ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert")
_MLD_REPORTS = ("mld-listener-report", "mld2-listener-report")

Json = dict[str, Any]


@dataclass(frozen=True)
class Term:
    """One match or statement of a rule, in both nft text and libnftables JSON."""

    text: str
    json: Json


@dataclass(frozen=True)
class Rule:
    chain: str
    terms: tuple[Term, ...]
    comment: str

    def text(self) -> str:
        return " ".join(t.text for t in self.terms) + f' comment "{self.comment}"'

    def json(self) -> Json:
        return {"rule": {"family": FAMILY, "table": TABLE, "chain": self.chain,
                         "expr": [t.json for t in self.terms], "comment": self.comment}}


@dataclass(frozen=True)
class AddressSet:
    name: str
    version: int
    elements: tuple[Network, ...] = ()
    meter: bool = False

    @property
    def type(self) -> str:
        return "ipv4_addr" if self.version == 4 else "ipv6_addr"

    def text(self) -> str:
        lines = [f"\tset {self.name} {{", f"\t\ttype {self.type}"]
        if self.meter:
            lines += [f"\t\tsize {METER_SIZE}", "\t\tflags dynamic,timeout", f"\t\ttimeout {METER_TIMEOUT_S // 60}m"]
        else:
            lines.append("\t\tflags interval")
            if self.elements:
                lines.append("\t\telements = { " + ", ".join(_element_text(n) for n in self.elements) + " }")
        lines.append("\t}")
        return "\n".join(lines)

    def json(self) -> Json:
        body: Json = {"family": FAMILY, "table": TABLE, "name": self.name, "type": self.type}
        if self.meter:
            # libnftables' JSON parser knows no "dynamic" flag; it sets it itself for a set a rule updates.
            body.update(size=METER_SIZE, flags=["timeout"], timeout=METER_TIMEOUT_S)
        else:
            body["flags"] = ["interval"]
            if self.elements:
                body["elem"] = [_element_json(n) for n in self.elements]
        return {"set": body}


# Named base-chain priorities as nft prints them, and their numbers in libnftables JSON.
_PRIORITIES = {"mangle": -150, "filter": 0}


@dataclass(frozen=True)
class Chain:
    name: str
    hook: str | None = None  # base chains only
    priority: str = "filter"
    policy: str = "drop"  # every filtering base chain drops by default; prerouting only diverts

    def header(self) -> list[str]:
        if self.hook is None:
            return []
        return [f"\t\ttype filter hook {self.hook} priority {self.priority}; policy {self.policy};"]

    def json(self) -> Json:
        body: Json = {"family": FAMILY, "table": TABLE, "name": self.name}
        if self.hook is not None:
            body.update(type="filter", hook=self.hook, prio=_PRIORITIES[self.priority], policy=self.policy)
        return {"chain": body}


@dataclass(frozen=True)
class Divert:
    """What tproxy needs besides the table: marked packets routed locally, for these IP versions."""

    mark: int
    table: int
    versions: tuple[int, ...]


@dataclass(frozen=True)
class Ruleset:
    """The rendered `inet zonegate` table: nft text, and the libnftables JSON objects that build it."""

    text: str
    objects: tuple[Json, ...]
    divert: Divert | None = None  # set when a transparent listener needs the policy routing of routing.py

    def document(self) -> Json:
        """A libnftables JSON document; `nft -j -f` loads it (bare objects are implicit adds)."""
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.objects]}

    def replace_commands(self) -> Json:
        """One transaction that swaps the table whole: create it if absent, delete it, build it anew."""
        ident = {"table": {"family": FAMILY, "name": TABLE}}
        return {"nftables": [{"add": ident}, {"delete": ident}, *({"add": o} for o in self.objects)]}

    def script(self, origin: str = "") -> str:
        """The table as an nft script that replaces it in one transaction (`nft -f`, `nft -c -f`): the
        first line creates the table if absent so the delete cannot fail, the rest defines it anew."""
        about = f" from {origin}" if origin else ""
        header = (f"#!/usr/sbin/nft -f\n# table {FAMILY} {TABLE}, rendered by zonegate{about}.\n"
                  "# Loaded as one transaction: the table is replaced whole or not at all; no other table is\n"
                  "# named and the ruleset is never flushed.\n")
        return f"{header}table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{self.text}"


# --- terms -------------------------------------------------------------------------------------------


def _payload(protocol: str, fld: str) -> Json:
    return {"payload": {"protocol": protocol, "field": fld}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _ip(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def addr_in(version: int, direction: str, set_name: str) -> Term:
    proto = _ip(version)
    return Term(f"{proto} {direction} @{set_name}", _match(_payload(proto, direction), f"@{set_name}"))


def dport(protocol: str, port: int) -> Term:
    return Term(f"{protocol} dport {port}", _match(_payload(protocol, "dport"), port))


def ct_state(*states: str) -> Term:
    right: Any = list(states) if len(states) > 1 else states[0]
    return Term(f"ct state {','.join(states)}", _match({"ct": {"key": "state"}}, right, "in"))


def interface(key: str, name: str) -> Term:
    return Term(f'{key} "{name}"', _match({"meta": {"key": key}}, name))


def icmpv6_types(types: Sequence[str], hoplimit: int) -> list[Term]:
    return [
        Term("icmpv6 type { " + ", ".join(types) + " }", _match(_payload("icmpv6", "type"), {"set": list(types)})),
        Term(f"ip6 hoplimit {hoplimit}", _match(_payload("ip6", "hoplimit"), hoplimit)),
    ]


def meter_over(version: int, meter: str, rate: Rate) -> Term:
    proto = _ip(version)
    burst = f" burst {rate.count} packets" if rate.count != 5 else ""
    return Term(
        f"update @{meter} {{ {proto} saddr limit rate over {rate}{burst} }}",
        {"set": {"op": "update", "elem": _payload(proto, "saddr"), "set": f"@{meter}",
                 "stmt": [{"limit": {"rate": rate.count, "burst": rate.count, "per": rate.unit, "inv": True}}]}},
    )


ACCEPT = Term("accept", {"accept": None})
DROP = Term("drop", {"drop": None})
COUNTER = Term("counter", {"counter": {"packets": 0, "bytes": 0}})


def mark_is(mark: int) -> Term:
    return Term(f"meta mark 0x{mark:08x}", _match({"meta": {"key": "mark"}}, mark))


def tproxy(version: int, port: int, mark: int) -> list[Term]:
    """Hand the packet to the local socket on `port` (its addresses untouched) and mark it, so that
    policy routing delivers it locally instead of forwarding it."""
    proto = _ip(version)
    return [
        Term(f"tproxy {proto} to :{port}", {"tproxy": {"family": proto, "port": port}}),
        Term(f"meta mark set 0x{mark:08x}", {"mangle": {"key": {"meta": {"key": "mark"}}, "value": mark}}),
    ]


def goto(chain: str) -> Term:
    return Term(f"goto {chain}", {"goto": {"target": chain}})


def log(prefix: str, group: int) -> list[Term]:
    return [
        Term(f'limit name "{LOG_LIMIT}"', {"limit": LOG_LIMIT}),
        Term(f'log prefix "{prefix}" group {group}', {"log": {"prefix": prefix, "group": group}}),
    ]


def _element_text(net: Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _element_json(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


# --- the table ---------------------------------------------------------------------------------------


def ident(*parts: str) -> str:
    """An nft identifier from policy names: lower case, runs of anything else become one underscore."""
    return "_".join(p for p in (re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_") for part in parts) if p)


def by_family(nets: Iterable[Network]) -> dict[int, tuple[Network, ...]]:
    """Networks split by IP version, merged (overlaps would be refused by an interval set) and sorted."""
    out: dict[int, tuple[Network, ...]] = {}
    for version in (4, 6):
        same = [n for n in nets if n.version == version]
        if same:
            out[version] = tuple(ipaddress.collapse_addresses(same))  # type: ignore[type-var]
    return out


@dataclass
class _Builder:
    spec: FirewallSpec
    sets: list[AddressSet] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    drops: list[tuple[Chain, str]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def claim(self, name: str, owner: str) -> str:
        if not name:
            raise FirewallSpecError(f"{owner}: its name leaves no letters or digits for an nft identifier")
        if name in self.names and self.names[name] != owner:
            raise FirewallSpecError(f"{owner} and {self.names[name]} both render as nft name {name!r}; rename one")
        self.names[name] = owner
        return name

    def address_sets(self, kind: str, name: str, nets: Sequence[Network], owner: str) -> list[AddressSet]:
        made = []
        for version, elements in by_family(nets).items():
            made.append(AddressSet(self.claim(ident(kind, name, f"v{version}"), owner), version, elements))
        self.sets += made
        return made

    def drop_chain(self, what: str, label: str) -> str:
        chain = Chain(self.claim(ident("drop", what), f"drop point {label}"))
        self.drops.append((chain, label))
        return chain.name

    def rule(self, chain: str, comment: str, *terms: Term | Sequence[Term]) -> None:
        flat: list[Term] = []
        for t in terms:
            flat.extend([t] if isinstance(t, Term) else t)
        self.rules.append(Rule(chain, tuple(flat), _clip(comment, _COMMENT_MAX)))


def _clip(text: str, limit: int) -> str:
    raw = text.encode()
    return raw[:limit].decode(errors="ignore") if len(raw) > limit else text


def render(spec: FirewallSpec) -> Ruleset:
    """The whole `inet zonegate` table for `spec`; raises `FirewallSpecError` if it cannot be expressed."""
    b = _Builder(spec)
    diverting = [lst for lst in spec.listeners if lst.transparent]
    if diverting:
        b.chains.append(Chain(b.claim("prerouting", "prerouting chain"), "prerouting", "mangle", "accept"))
    for hook in ("input", "forward", "output"):
        b.chains.append(Chain(b.claim(hook, f"{hook} chain"), hook))
    invalid = b.drop_chain("invalid", "invalid")
    versions: set[int] = set()

    # prerouting: connections of a transparent listener's sources to its devices go to the listener
    for lst in diverting:
        for src in b.address_sets("listener", lst.name, lst.sources, f"listener {lst.name}"):
            for dst, port in _divert_sets(b, lst.name, lst.divert, src.version):
                versions.add(src.version)
                b.rule("prerouting", f"listener {lst.name} divert", addr_in(src.version, "saddr", src.name),
                       addr_in(src.version, "daddr", dst.name), dport("tcp", port),
                       tproxy(src.version, lst.port, spec.divert_mark), ACCEPT)

    # input: the box's own ports, each only to the sources the policy names
    b.rule("input", "loopback", interface("iif", "lo"), ACCEPT)
    b.rule("input", "established", ct_state("established", "related"), ACCEPT)
    b.rule("input", "invalid", ct_state("invalid"), goto(invalid))
    b.rule("input", "neighbour discovery", icmpv6_types(_ND_IN, 255), ACCEPT)
    for lst in spec.listeners:
        flood = b.drop_chain(f"flood {lst.name}", f"{lst.name} flood")
        if lst.transparent:
            sources = [s for s in b.sets if s.name in {ident("listener", lst.name, f"v{v}") for v in (4, 6)}]
        else:
            sources = b.address_sets("listener", lst.name, lst.sources, f"listener {lst.name}")
        for src in sources:
            if lst.transparent:
                # diverted packets still carry the device's address and port; the mark says tproxy took them
                matches = [[mark_is(spec.divert_mark), addr_in(src.version, "saddr", src.name),
                            addr_in(src.version, "daddr", dst.name), dport("tcp", port), ct_state("new")]
                           for dst, port in _divert_sets(b, lst.name, lst.divert, src.version, claim=False)]
            else:
                matches = [[dport("tcp", lst.port), addr_in(src.version, "saddr", src.name), ct_state("new")]]
            if not matches:
                continue
            meter = AddressSet(b.claim(ident("meter", lst.name, f"v{src.version}"), f"listener {lst.name}"),
                               src.version, meter=True)
            b.sets.append(meter)
            for match in matches:
                b.rule("input", f"listener {lst.name} flood", match, meter_over(src.version, meter.name,
                                                                                  spec.connection_rate), goto(flood))
                b.rule("input", f"listener {lst.name}", match, ACCEPT)
    if spec.metrics is not None:
        for src in b.address_sets("metrics", "scrapers", spec.metrics.sources, "metrics"):
            b.rule("input", "metrics", dport("tcp", spec.metrics.port), addr_in(src.version, "saddr", src.name),
                   ct_state("new"), ACCEPT)
    b.rule("input", "default", goto(b.drop_chain("input", "input")))

    # forward: nothing crosses the box except the flows the policy declares
    b.rule("forward", "established", ct_state("established", "related"), ACCEPT)
    b.rule("forward", "invalid", ct_state("invalid"), goto(invalid))
    for flow in spec.flows:
        owner = f"flow {flow.id}"
        src_sets = {s.version: s for s in b.address_sets("flow", f"{flow.id} from", flow.sources, owner)}
        dst_sets = {s.version: s for s in b.address_sets("flow", f"{flow.id} to", flow.destinations, owner)}
        for version in sorted(src_sets.keys() & dst_sets.keys()):
            b.rule("forward", f"flow {flow.id}", addr_in(version, "saddr", src_sets[version].name),
                   addr_in(version, "daddr", dst_sets[version].name), dport(flow.protocol, flow.port),
                   ct_state("new"), ACCEPT)
    walled = [z for z in spec.zones if z.interface is not None]
    for a in walled:
        for z in walled:
            if a is not z:
                pair = b.drop_chain(f"zone {a.name} to {z.name}", f"{a.name}->{z.name}")
                b.rule("forward", f"zone {a.name} to {z.name}", interface("iifname", str(a.interface)),
                       interface("oifname", str(z.interface)), goto(pair))
    b.rule("forward", "default", goto(b.drop_chain("forward", "forward")))

    # output: the box dials its upstreams on their ports, nothing else
    b.rule("output", "loopback", interface("oif", "lo"), ACCEPT)
    b.rule("output", "established", ct_state("established", "related"), ACCEPT)
    b.rule("output", "invalid", ct_state("invalid"), goto(invalid))
    b.rule("output", "neighbour discovery", icmpv6_types(_ND_OUT, 255), ACCEPT)
    b.rule("output", "multicast listener reports", icmpv6_types(_MLD_REPORTS, 1), ACCEPT)
    for up in spec.upstreams:
        for dst in b.address_sets("upstream", up.name, [up.address], f"upstream {up.name}"):
            b.rule("output", f"upstream {up.name}", addr_in(dst.version, "daddr", dst.name),
                   dport(up.protocol, up.port), ct_state("new"), ACCEPT)
    b.rule("output", "default", goto(b.drop_chain("output", "output")))

    for chain, label in b.drops:
        b.chains.append(chain)
        b.rule(chain.name, "log", log(_clip(f"zonegate drop {label}: ", _PREFIX_MAX), spec.log_group))
        b.rule(chain.name, "drop", COUNTER, DROP)
    divert = Divert(spec.divert_mark, spec.divert_table, tuple(sorted(versions))) if versions else None
    return _assemble(b, divert)


def _divert_sets(b: _Builder, listener: str, devices: Sequence[Upstream], version: int,
                 claim: bool = True) -> list[tuple[AddressSet, int]]:
    """The addresses a transparent listener takes over, one set per device port and IP version
    (`divert_<listener>_v4`, or `divert_<listener>_<port>_v4` when its devices use several ports)."""
    ports = sorted({d.port for d in devices})
    out = []
    for port in ports:
        nets = [d.address for d in devices if d.port == port and d.address.version == version]
        if not nets:
            continue
        name = ident("divert", listener, *([str(port)] if len(ports) > 1 else []), f"v{version}")
        if claim:
            made = AddressSet(b.claim(name, f"listener {listener}"), version, by_family(nets)[version])
            b.sets.append(made)
        else:
            made = next(s for s in b.sets if s.name == name)
        out.append((made, port))
    return out


def _assemble(b: _Builder, divert: Divert | None = None) -> Ruleset:
    rate = b.spec.log_rate
    objects: list[Json] = [
        {"table": {"family": FAMILY, "name": TABLE}},
        {"limit": {"family": FAMILY, "table": TABLE, "name": LOG_LIMIT, "rate": rate.count, "per": rate.unit,
                   "burst": 5}},
    ]
    objects += [s.json() for s in b.sets]
    objects += [c.json() for c in b.chains]
    objects += [r.json() for r in b.rules]

    blocks = [f"\tlimit {LOG_LIMIT} {{\n\t\trate {rate}\n\t}}"]
    blocks += [s.text() for s in b.sets]
    for chain in b.chains:
        lines = [f"\tchain {chain.name} {{", *chain.header()]
        lines += [f"\t\t{r.text()}" for r in b.rules if r.chain == chain.name]
        lines.append("\t}")
        blocks.append("\n".join(lines))
    text = f"table {FAMILY} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"
    return Ruleset(text=text, objects=tuple(objects), divert=divert)
