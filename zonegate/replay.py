"""Replay stage (offline, beside the data plane): what a policy would have done to a recorded capture.

The capture is read, reassembled and decided in Rust (`zonegate._engine.replay_capture`, one call with
the GIL released), Modbus/TCP and EtherNet/IP alike; this module loads the policy, drives that call, and
turns its report into the text and JSON that `zonegate replay` prints. Semantics of flows, principals
and devices: docs/replay.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from zonegate import _engine
from zonegate.controlplane.policy import load
from zonegate.controlplane.policy.functions import FUNCTION_NAMES

# How many denials and invalid streams the report lists by default (all of them are counted).
DEFAULT_LISTED = 20


@dataclass(frozen=True)
class ReplayResult:
    """A replay report with the context needed to print it."""

    policy: str
    capture: str
    mode: str
    report: _engine.ReplayReport
    principal: str | None = None
    device: str | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def would_be_denied(self) -> int:
        """Requests (Modbus/TCP and EtherNet/IP) the policy refuses, in enforce mode (denied) or monitor
        mode (would_deny)."""
        r = self.report
        return r.denied + r.would_deny + r.cip_denied + r.cip_would_deny

    @property
    def complete(self) -> bool:
        """The capture was read to its end."""
        return self.report.capture_error is None


def replay(
    policy_paths: Sequence[Path | str],
    capture: Path | str,
    *,
    principal: str | None = None,
    device: str | None = None,
    max_listed: int = DEFAULT_LISTED,
    pki_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Loads the policy and replays `capture` through it.

    Raises `PolicyError` for a bad policy, `OSError` when the capture cannot be read, and `ValueError`
    when it is not a pcap/pcapng file or `principal` / `device` names nothing in the policy.
    """
    policy = load(list(policy_paths), pki_dir=pki_dir)
    report = _engine.replay_capture(
        policy.ir_json(), str(capture), principal=principal, device=device, max_listed=max_listed, progress=progress
    )
    return ReplayResult(
        policy=" + ".join(str(p) for p in policy_paths),
        capture=str(capture),
        mode=str(policy.mode),
        report=report,
        principal=principal,
        device=device,
        warnings=tuple(str(w) for w in policy.warnings),
    )


def function_name(fc: int) -> str:
    return FUNCTION_NAMES.get(fc, "exception_bit_set" if fc & 0x80 else "not_public")


def _denial_json(d: _engine.ReplayDenial) -> dict[str, Any]:
    return {
        "frame": d.frame,
        "time_ns": d.ts_ns,
        "client": f"{d.client}:{d.client_port}",
        "server": f"{d.server}:{d.server_port}",
        "principal": d.principal or None,
        "device": d.device or None,
        "unit": d.unit,
        "function": d.function,
        "verdict": d.verdict,
        "reason": d.reason,
        "malformed": d.malformed,
        "rule": d.rule_id or None,
    }


def _cip_denial_json(d: _engine.ReplayCipDenial) -> dict[str, Any]:
    return {
        "frame": d.frame,
        "time_ns": d.ts_ns,
        "client": f"{d.client}:{d.client_port}",
        "server": f"{d.server}:{d.server_port}",
        "principal": d.principal or None,
        "device": d.device or None,
        "command": d.command,
        "service": d.service or None,
        "target": d.target,
        "route": d.route,
        "leaf": d.denied_leaf,
        "verdict": d.verdict,
        "reason": d.reason,
        "malformed": d.malformed,
        "rule": d.rule_id or None,
        "general_status": d.general_status,
        "encap_status": d.encap_status,
    }


def _cip_json(r: _engine.ReplayReport) -> dict[str, Any]:
    return {
        "flows": r.cip_flows,
        "requests": r.cip_requests,
        "allowed": r.cip_allowed,
        "denied": r.cip_denied,
        "would_deny": r.cip_would_deny,
        "malformed": r.cip_malformed,
        "replies": r.cip_replies,
        "error_replies": r.cip_error_replies,
        "leaves": r.cip_leaves,
        "by_rule": dict(r.cip_by_rule),
        "by_rule_denied": dict(r.cip_by_rule_denied),
        "by_reason": dict(r.cip_by_reason),
        "by_malformed": dict(r.cip_by_malformed),
        "by_command": dict(r.cip_by_command),
        "replies_by_command": dict(r.cip_replies_by_command),
        "by_service": dict(r.cip_by_service),
        "by_leaf_service": dict(r.cip_by_leaf_service),
        "first_denials": [_cip_denial_json(d) for d in r.cip_denials],
        "anomalies": dict(r.cip_anomalies),
    }


def to_json(result: ReplayResult) -> dict[str, Any]:
    """The `--json` object: one document, keys stable for CI scripts."""
    r = result.report
    return {
        "policy": result.policy,
        "mode": result.mode,
        "capture": {
            "path": result.capture,
            "format": r.format,
            "frames": r.frames,
            "bytes_read": r.bytes_read,
            "complete": result.complete,
            "error": r.capture_error,
        },
        "principal_override": result.principal,
        "device_override": result.device,
        "flows": r.flows,
        "tcp_segments": r.tcp_segments,
        "requests": r.requests,
        "allowed": r.allowed,
        "denied": r.denied,
        "would_deny": r.would_deny,
        "malformed": r.malformed,
        "replies": r.replies,
        "exception_replies": r.exception_replies,
        "by_rule": dict(r.by_rule),
        "by_rule_denied": dict(r.by_rule_denied),
        "by_reason": dict(r.by_reason),
        "by_function": {str(fc): n for fc, n in sorted(r.by_function.items())},
        "by_unit": {str(unit): n for unit, n in sorted(r.by_unit.items())},
        "invalid_streams": r.invalid_streams,
        "invalid": [
            {"frame": frame, "client": f"{c}:{cp}", "server": f"{s}:{sp}", "direction": direction, "reason": reason}
            for frame, c, cp, s, sp, direction, reason in r.invalid_list
        ],
        "first_denials": [_denial_json(d) for d in r.denials],
        "anomalies": dict(r.anomalies),
        "cip": _cip_json(r),
    }


def render_json(result: ReplayResult) -> str:
    return json.dumps(to_json(result), indent=2)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_text(result: ReplayResult) -> str:
    """The human report: totals, then per rule, reason and function, then the first denials."""
    r = result.report
    lines = [
        f"replay of {result.capture} ({r.format}, {_count(r.frames, 'frame')}, {_count(r.flows, 'flow')}) "
        f"through {result.policy} (mode {result.mode})",
    ]
    if result.principal or result.device:
        who = [f"principal {result.principal}" if result.principal else "", f"device {result.device}" if result.device else ""]
        lines.append("decided as " + " and ".join(w for w in who if w) + " for every flow")
    if r.requests or r.replies or not r.cip_flows:
        lines += _modbus_lines(r)
    if r.cip_flows:
        lines += _cip_lines(r)
    if r.invalid_streams:
        lines.append(f"not Modbus/TCP or EtherNet/IP (skipped): {r.invalid_streams} stream directions")
        for frame, c, cp, s, sp, direction, reason in r.invalid_list:
            lines.append(f"  frame {frame}: {c}:{cp} -> {s}:{sp} {direction}: {reason}")
    seen = {name: n for name, n in r.anomalies.items() if n}
    seen.update({name: n for name, n in r.cip_anomalies.items() if n})
    if seen:
        lines.append("anomalies: " + ", ".join(f"{name} {n}" for name, n in seen.items()))
    if r.capture_error:
        lines.append(f"capture damaged: {r.capture_error}; the report covers the frames before it")
    return "\n".join(lines)


def _table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    width = max(len(name) for name in counts)
    return [title] + [f"  {name:<{width}}  {n}" for name, n in counts.items()]


def _cip_lines(r: _engine.ReplayReport) -> list[str]:
    """The EtherNet/IP half: messages per command, CIP services, reasons and rules, the first denials."""
    lines = [
        f"EtherNet/IP messages {r.cip_requests} ({_count(r.cip_flows, 'flow')}, {r.cip_leaves} CIP requests inside): "
        f"allowed {r.cip_allowed}, denied {r.cip_denied}, would_deny {r.cip_would_deny}, malformed {r.cip_malformed}; "
        f"replies {r.cip_replies} ({r.cip_error_replies} errors)"
    ]
    if r.cip_by_rule:
        lines.append("  by rule (allowed / denied as the closest rule):")
        width = max(len(rule) for rule in r.cip_by_rule)
        lines += [
            f"    {rule:<{width}}  {n:>8} / {r.cip_by_rule_denied.get(rule, 0)}" for rule, n in r.cip_by_rule.items()
        ]
    lines += ["  " + line for line in _table("by reason:", r.cip_by_reason)]
    lines += ["  " + line for line in _table("by malformed kind:", r.cip_by_malformed)]
    commands = {
        name: f"{r.cip_by_command.get(name, 0)} / {r.cip_replies_by_command.get(name, 0)}"
        for name in sorted(set(r.cip_by_command) | set(r.cip_replies_by_command))
    }
    if commands:
        width = max(len(name) for name in commands)
        lines.append("  by command (requests / replies):")
        lines += [f"    {name:<{width}}  {n}" for name, n in commands.items()]
    lines += ["  " + line for line in _table("by service (outer CIP request):", r.cip_by_service)]
    if r.cip_by_leaf_service != r.cip_by_service:
        inside = _table("by service (every CIP request, containers opened):", r.cip_by_leaf_service)
        lines += ["  " + line for line in inside]
    if r.cip_denials:
        shown = len(r.cip_denials)
        total = r.cip_denied + r.cip_would_deny
        lines.append(f"  first denials ({shown} of {total}):" if shown < total else "  denials:")
        for d in r.cip_denials:
            what = " ".join(part for part in (d.command, d.service, d.target) if part)
            route = f" route {d.route}" if d.route else ""
            leaf = f" (request {d.denied_leaf})" if d.denied_leaf else ""
            rule = f" rule {d.rule_id}" if d.rule_id else ""
            lines.append(
                f"    frame {d.frame}: {d.client}:{d.client_port} -> {d.server}:{d.server_port} "
                f"principal {d.principal or '?'} device {d.device or '?'} {what}{leaf}{route}: {d.verdict} {d.reason}"
                + (f" ({d.malformed})" if d.malformed else "")
                + rule
            )
    return lines


def _modbus_lines(r: _engine.ReplayReport) -> list[str]:
    lines = []
    lines.append(
        f"requests {r.requests}: allowed {r.allowed}, denied {r.denied}, would_deny {r.would_deny}, "
        f"malformed {r.malformed}; replies {r.replies} ({r.exception_replies} exceptions)"
    )
    if r.by_rule:
        lines.append("by rule (allowed / denied as the closest rule):")
        width = max(len(rule) for rule in r.by_rule)
        lines += [
            f"  {rule:<{width}}  {n:>8} / {r.by_rule_denied.get(rule, 0)}" for rule, n in r.by_rule.items()
        ]
    if r.by_reason:
        lines.append("by reason:")
        width = max(len(reason) for reason in r.by_reason)
        lines += [f"  {reason:<{width}}  {n}" for reason, n in r.by_reason.items()]
    if r.by_function:
        lines.append("by function:")
        lines += [f"  {fc:>3} {function_name(fc):<36} {n}" for fc, n in sorted(r.by_function.items())]
    if r.denials:
        shown = len(r.denials)
        total = r.denied + r.would_deny
        lines.append(f"first denials ({shown} of {total}):" if shown < total else "denials:")
        for d in r.denials:
            rule = f" rule {d.rule_id}" if d.rule_id else ""
            lines.append(
                f"  frame {d.frame}: {d.client}:{d.client_port} -> {d.server}:{d.server_port} "
                f"principal {d.principal or '?'} device {d.device or '?'} unit {d.unit} "
                f"fc {d.function} ({function_name(d.function)}): {d.verdict} {d.reason}"
                + (f" ({d.malformed})" if d.malformed else "")
                + rule
            )
    return lines


class ProgressBar:
    """A one-line progress bar on a terminal; silent when the stream is not one (a pipe, a CI log)."""

    WIDTH = 30

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = min(self.WIDTH, self.WIDTH * done // total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * done // total:3d}% ")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * (self.WIDTH + 8) + "\r")
            self.stream.flush()
