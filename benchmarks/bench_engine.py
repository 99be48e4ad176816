"""Benchmark of the engine stage: decisions per second, per frame and in batch, against the reference model.

Frames are every Modbus request in the shared captures plus a synthetic mix (60 % FC 3, 20 % FC 16,
10 % FC 6, 10 % other), decided against a policy of about 50 rules built directly as IR. Before timing
anything it checks that the three paths (per-frame, batch, reference model) reach the same verdicts on
those frames, so a fast but wrong engine cannot post a number. It also times compiling a 10,000-rule
policy and the resident memory that costs.

    .venv/bin/python benchmarks/bench_engine.py [--json] [--iterations N] [--compile-rules N]

Targets (issue 2, on the 2-core build machine): per-frame >= 1,000,000/s including the Python call,
batch >= 10,000,000/s, batch >= 50x the reference model, 10,000 rules compile in < 1 s and < 50 MB.

CIP in the same run: every CIP request the shared EtherNet/IP capture sends plus a synthetic mix (tag
reads and writes, attribute reads, Forward Opens, routed Unconnected Sends, and Multiple Service Packets
of 10-50 requests), decided per message with `Engine.decide_cip` and, wrapped in SendRRData, with
`Engine.decide_enip`, against a policy of about 50 CIP rules; the CIP reference model
(zonegate/reference_model_cip.py) decides the same messages. Same targets as Modbus per request:
per-message >= 1,000,000/s including the call, >= 50x the reference model. As for Modbus, where the model
decides the frame's bytes, the ratio compares the two from the same bytes: the model does not parse CIP
itself, so it is given the leaves of the binding's (Rust) `cip_flatten`, timed with it, which only makes
the model faster than a model parsing in Python would be. The model over leaves flattened in advance is
printed too (`cip_per_frame_vs_flattened_reference`): it leaves out of the model the parsing the engine's
figure includes.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.vectors.pcap import PCAPS, tcp_segments  # noqa: E402
from zonegate import _engine  # noqa: E402
from zonegate import reference_model as model  # noqa: E402
from zonegate import reference_model_cip as cip_model  # noqa: E402
from zonegate.dataplane import enip_frames  # noqa: E402

SECOND = 1_000_000_000
CAPTURES = (
    "suricata-verify/modbus/modbus.pcap",
    "icsnpp-modbus/modbus_example.pcap",
    "zeek/modbusBig.pcap",
    "zeek/modbusSmall.pcap",
    "zeek/modbus-eit.pcap",
    "zeek/fuzz-72.pcap",
    "zeek/fuzz-1011.pcap",
    "zeek/modbus-and-non-modbus-p502.pcap",
)
SYNTHETIC_FRAMES = 10_000
PRINCIPALS = ("operator", "engineer", "historian", "line-hmi", "maintenance")
DEVICES = ("press-plc", "oven-plc", "robot-cell", "conveyor", "packer")
BENCH_PRINCIPAL, BENCH_DEVICE = 0, 0
TARGETS = {"per_frame_per_s": 1_000_000, "batch_per_s": 10_000_000, "batch_vs_reference": 50.0}
COMPILE_TARGET_S, COMPILE_TARGET_MB = 1.0, 50.0


# --- frames -----------------------------------------------------------------------------------------


def capture_frames() -> list[bytes]:
    """Every complete request ADU sent to port 502 in the shared captures, segment by segment."""
    frames: list[bytes] = []
    for capture in CAPTURES:
        path = PCAPS / capture
        if not path.exists():
            continue
        for segment in tcp_segments(path):
            if segment.dst_port != 502:
                continue
            buf = segment.payload
            while buf:
                status, n = model.split(buf)
                if status != model.COMPLETE:
                    break
                frames.append(buf[:n])
                buf = buf[n:]
    return frames


def _adu(tid: int, unit: int, pdu: bytes) -> bytes:
    return tid.to_bytes(2, "big") + b"\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


def _w(value: int) -> bytes:
    return value.to_bytes(2, "big")


def synthetic_frames(count: int, seed: int = 502) -> list[bytes]:
    """60 % FC 3, 20 % FC 16, 10 % FC 6, 10 % other, over the addresses the benchmark policy names."""
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        tid = i & 0xFFFF
        unit = 1 if rng.random() < 0.95 else rng.randrange(256)
        start = rng.randrange(0, 1100)
        roll = rng.random()
        if roll < 0.60:
            pdu = b"\x03" + _w(start) + _w(rng.randint(1, 20))
        elif roll < 0.80:
            qty = rng.randint(1, 8)
            pdu = b"\x10" + _w(start) + _w(qty) + bytes([2 * qty]) + b"".join(_w(rng.randrange(3000)) for _ in range(qty))
        elif roll < 0.90:
            pdu = b"\x06" + _w(start) + _w(rng.randrange(3000))
        else:
            pdu = rng.choice(
                [
                    b"\x01" + _w(start) + _w(rng.randint(1, 64)),
                    b"\x04" + _w(start) + _w(rng.randint(1, 10)),
                    b"\x05" + _w(start) + rng.choice([b"\xff\x00", b"\x00\x00"]),
                    b"\x17" + _w(start) + _w(4) + _w(start + 1) + _w(1) + b"\x02" + _w(7),
                    b"\x08\x00\x00\x12\x34",
                    b"\x2b\x0e\x01\x00",
                    b"\x5a\x00\x10",  # a vendor code: denied before any rule is read
                ]
            )
        frames.append(_adu(tid, unit, pdu))
    return frames


# --- policies ---------------------------------------------------------------------------------------


def _no_ranges() -> dict[str, list[dict[str, Any]]]:
    return {t: [] for t in model.TABLE_NAMES}


def _range(start: int, end: int, lo: int | None = None, hi: int | None = None) -> dict[str, Any]:
    return {"start": start, "end": end, "min": lo, "max": hi, "signed": False}


def _principal(name: str) -> dict[str, Any]:
    return {"name": name, "tls_roles": [name.title()], "subjects": [], "opcua_users": [], "sources": []}


def _device(i: int, name: str) -> dict[str, Any]:
    return {"name": name, "zone": "cell-a", "host": f"192.168.10.{11 + i}", "port": 502, "units": [[1, 1]]}


def benchmark_policy(rules: int = 50) -> dict[str, Any]:
    """About 50 rules over 5 principals and 5 devices; the benchmarked pair has 10 candidate rules.

    Rule k of a pair allows reads of holding registers [100k, 100k+99] and bounded writes to half of
    them, so a request walks several rules before one matches (or the deepest failure is chosen).
    """
    out = []
    for k in range(rules):
        pair = k % len(PRINCIPALS)
        band = (k // len(PRINCIPALS)) * 100
        reads = _no_ranges()
        reads["holding_registers"] = [_range(band, band + 99)]
        reads["input_registers"] = [_range(band, band + 99)]
        reads["coils"] = [_range(band, band + 63)]
        writes = _no_ranges()
        writes["holding_registers"] = [_range(band, band + 49, 0, 1500)]
        writes["coils"] = [_range(band, band + 15)]
        allow = [
            {"functions": [[3, None], [4, None], [1, None], [23, None]], "ranges": reads, "max_quantity": 125,
             "rate": None},
            {"functions": [[6, None], [16, None], [5, None], [23, None]], "ranges": writes, "max_quantity": 16,
             "rate": {"count": 1_000_000_000, "period_ns": SECOND, "burst": 1_000_000_000} if k == 0 else None},
        ]
        if k % 10 == 9:
            allow.append({"functions": [[8, 0], [43, 14]], "ranges": _no_ranges(), "max_quantity": None, "rate": None})
        out.append(
            {"id": f"rule-{k:02d}", "principals": [pair], "devices": [pair], "units": None, "allow": allow}
        )
    return {
        "version": 1,
        "mode": "enforce",
        "principals": [_principal(p) for p in PRINCIPALS],
        "devices": [_device(i, d) for i, d in enumerate(DEVICES)],
        "rules": out,
    }


def large_policy(rules: int) -> dict[str, Any]:
    """`rules` rules over 100 principals and 100 devices, each with two entries and a few ranges."""
    principals = [_principal(f"principal-{i}") for i in range(100)]
    devices = [_device(i % 200, f"device-{i}") for i in range(100)]
    out = []
    for k in range(rules):
        ranges = _no_ranges()
        ranges["holding_registers"] = [_range(10 * j, 10 * j + 4, 0, 1000 + j) for j in range(4)]
        ranges["coils"] = [_range(0, 63)]
        out.append(
            {
                "id": f"rule-{k:05d}",
                "principals": [k % 100],
                "devices": [(k // 100) % 100],
                "units": [[1, 4]] if k % 2 else None,
                "allow": [
                    {"functions": [[3, None], [16, None]], "ranges": ranges, "max_quantity": 100, "rate": None},
                    {"functions": [[6, None]], "ranges": ranges, "max_quantity": None,
                     "rate": {"count": 5, "period_ns": SECOND, "burst": 5}},
                ],
            }
        )
    return {"version": 1, "mode": "enforce", "principals": principals, "devices": devices, "rules": out}


# --- measuring --------------------------------------------------------------------------------------


def _rss_mb() -> float:
    """Resident set size from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rate(count: int, run: Callable[[], None], min_seconds: float) -> float:
    """Calls `run` (which decides `count` frames) until `min_seconds` pass; decisions per second."""
    done, elapsed = 0, 0.0
    start = time.perf_counter()
    while True:
        run()
        done += count
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return done / elapsed if elapsed > 0 else 0.0


def check_agreement(engine: Any, reference: model.ReferenceModel, frames: list[bytes], now: int) -> dict[str, int]:
    """The three paths must reach the same (verdict, reason) for every frame before any is timed."""
    batch = engine.decide_batch(BENCH_PRINCIPAL, BENCH_DEVICE, b"".join(frames), now)
    if batch.frames != len(frames):
        raise SystemExit(f"batch decided {batch.frames} of {len(frames)} frames")
    counts = {"allow": 0, "deny": 0, "would_deny": 0}
    names = ("allow", "deny", "would_deny")
    for i, frame in enumerate(frames):
        fast = engine.decide(BENCH_PRINCIPAL, BENCH_DEVICE, frame, now)
        slow = reference.decide(BENCH_PRINCIPAL, BENCH_DEVICE, frame, now)
        packed = batch.verdicts[i]
        if (fast.verdict, fast.reason) != (slow.verdict, slow.reason) or packed != (slow.verdict << 4 | slow.reason):
            raise SystemExit(f"engine and reference model disagree on frame {i}: {frame.hex()}: {fast!r} vs {slow!r}")
        counts[names[slow.verdict]] += 1
    return counts


def run(iterations: int, compile_rules: int, min_seconds: float) -> dict[str, Any]:
    captured = capture_frames()
    frames = captured + synthetic_frames(SYNTHETIC_FRAMES)
    ir = benchmark_policy()
    ir_json = json.dumps(ir)
    engine = _engine.Engine(ir_json)
    now = 10 * SECOND
    verdicts = check_agreement(engine, model.ReferenceModel(ir), frames, now)

    decide = engine.decide
    batch_decide = engine.decide_batch
    buf = b"".join(frames)

    def per_frame() -> None:
        for _ in range(iterations):
            for frame in frames:
                decide(0, 0, frame)

    def batch() -> None:
        for _ in range(iterations):
            batch_decide(0, 0, buf)

    reference = model.ReferenceModel(ir)
    reference_frames = frames[: max(1, len(frames) // 10)]

    def reference_run() -> None:
        for frame in reference_frames:
            reference.decide(0, 0, frame, now)

    per_frame_per_s = _rate(iterations * len(frames), per_frame, min_seconds)
    batch_per_s = _rate(iterations * len(frames), batch, min_seconds)
    reference_per_s = _rate(len(reference_frames), reference_run, min_seconds)

    large_json = json.dumps(large_policy(compile_rules))
    gc.collect()
    rss_before = _rss_mb()
    start = time.perf_counter()
    large = _engine.Engine(large_json)
    compile_s = time.perf_counter() - start
    rss_growth = _rss_mb() - rss_before
    del large

    result: dict[str, Any] = {
        "frames": len(frames),
        "capture_frames": len(captured),
        "synthetic_frames": SYNTHETIC_FRAMES,
        "rules": len(ir["rules"]),
        "verdicts": verdicts,
        "per_frame_per_s": per_frame_per_s,
        "batch_per_s": batch_per_s,
        "reference_per_s": reference_per_s,
        "per_frame_vs_reference": per_frame_per_s / reference_per_s if reference_per_s else 0.0,
        "batch_vs_reference": batch_per_s / reference_per_s if reference_per_s else 0.0,
        "batch_vs_per_frame": batch_per_s / per_frame_per_s if per_frame_per_s else 0.0,
        "compile_rules": compile_rules,
        "compile_s": compile_s,
        "compile_rss_mb": rss_growth,
    }
    result["targets_met"] = {
        "per_frame_per_s": per_frame_per_s >= TARGETS["per_frame_per_s"],
        "batch_per_s": batch_per_s >= TARGETS["batch_per_s"],
        "batch_vs_reference": result["batch_vs_reference"] >= TARGETS["batch_vs_reference"],
        "compile_s": compile_rules < 10_000 or compile_s < COMPILE_TARGET_S,
        "compile_rss_mb": compile_rules < 10_000 or rss_growth < COMPILE_TARGET_MB,
    }
    return result


def report(r: dict[str, Any]) -> str:
    mark = {True: "ok", False: "BELOW TARGET"}
    met = r["targets_met"]
    return "\n".join(
        [
            f"engine benchmark: {r['frames']} frames ({r['capture_frames']} from captures, "
            f"{r['synthetic_frames']} synthetic), {r['rules']} rules; verdicts {r['verdicts']}",
            f"  per-frame decide   {r['per_frame_per_s']:>14,.0f} /s   {mark[met['per_frame_per_s']]}",
            f"  batch decide       {r['batch_per_s']:>14,.0f} /s   {mark[met['batch_per_s']]}",
            f"  reference model    {r['reference_per_s']:>14,.0f} /s",
            f"  per-frame / reference  {r['per_frame_vs_reference']:8.1f}x",
            f"  batch / reference      {r['batch_vs_reference']:8.1f}x   {mark[met['batch_vs_reference']]}",
            f"  batch / per-frame      {r['batch_vs_per_frame']:8.1f}x",
            f"  compile {r['compile_rules']} rules: {r['compile_s']:.3f} s, RSS +{r['compile_rss_mb']:.1f} MB"
            f"   {mark[met['compile_s'] and met['compile_rss_mb']]}",
        ]
    )


# --- CIP ----------------------------------------------------------------------------------------------

CIP_CAPTURES = ("suricata-verify/enip-keywords/enip_cip_example.pcap",)
CIP_SYNTHETIC = 5_000
CIP_TARGETS = {"cip_per_frame_per_s": 1_000_000, "cip_per_frame_vs_reference": 50.0}
SEND_RR_DATA = 0x6F


def cip_capture_messages() -> list[bytes]:
    """The CIP message of every SendRRData / SendUnitData request sent to port 44818 in the captures."""
    messages: list[bytes] = []
    for capture in CIP_CAPTURES:
        path = PCAPS / capture
        if not path.exists():
            continue
        for segment in tcp_segments(path):
            if segment.dst_port != 44818:
                continue
            buf = segment.payload
            while buf:
                status, n = _engine.enip_split(buf)
                if status != _engine.COMPLETE:
                    break
                found = enip_frames.items(buf[:n])
                if found is not None and found.cip:
                    messages.append(found.cip)
                buf = buf[n:]
    return messages


def _symbol(name: str, index: int | None = None) -> bytes:
    raw = name.encode()
    out = bytes([0x91, len(raw)]) + raw + (b"\x00" if len(raw) % 2 else b"")
    if index is not None:
        out += bytes([0x28, index]) if index < 256 else b"\x29\x00" + index.to_bytes(2, "little")
    return out


def _tag_path(tag: str, index: int | None = None) -> bytes:
    parts = tag.split(".")
    return b"".join(_symbol(p, index if i == len(parts) - 1 else None) for i, p in enumerate(parts))


def _request(service: int, path: bytes, data: bytes = b"") -> bytes:
    return bytes([service, len(path) // 2]) + path + data


def read_tag(tag: str, index: int | None = None, elements: int = 1) -> bytes:
    return _request(0x4C, _tag_path(tag, index), elements.to_bytes(2, "little"))


def write_tag(tag: str, index: int | None, value: int) -> bytes:
    return _request(0x4D, _tag_path(tag, index), b"\xc3\x00\x01\x00" + value.to_bytes(2, "little", signed=True))


def get_attribute_single(cls: int, instance: int, attribute: int) -> bytes:
    return _request(0x0E, bytes([0x20, cls, 0x24, instance, 0x30, attribute]))


def multiple_service_packet(inner: list[bytes]) -> bytes:
    offsets, at = [], 2 + 2 * len(inner)
    for request in inner:
        offsets.append(at.to_bytes(2, "little"))
        at += len(request)
    return b"\x0a\x02\x20\x02\x24\x01" + len(inner).to_bytes(2, "little") + b"".join(offsets) + b"".join(inner)


def unconnected_send(inner: bytes, route: bytes = b"\x01\x00") -> bytes:
    pad = b"\x00" if len(inner) % 2 else b""
    return (b"\x52\x02\x20\x06\x24\x01\x0a\xf0" + len(inner).to_bytes(2, "little") + inner + pad
            + bytes([len(route) // 2, 0]) + route)


def forward_open(serial: int) -> bytes:
    data = (b"\x0a\x0e" + bytes(4) + b"\x01\x00\x02\x00" + serial.to_bytes(2, "little") + b"\x4d\x00\x78\x56\x34\x12"
            + b"\x03\x00\x00\x00" + b"\x40\x4b\x4c\x00\xf8\x43" * 2 + b"\xa3\x03\x01\x00\x20\x02\x24\x01")
    return _request(0x54, b"\x20\x06\x24\x01", data)


def send_rr_data(message: bytes) -> bytes:
    """SendRRData around an unconnected CIP message: interface 0, timeout 5, null address, data item."""
    cpf = b"\x02\x00" + b"\x00\x00\x00\x00" + b"\xb2\x00" + len(message).to_bytes(2, "little") + message
    return enip_frames.message(SEND_RR_DATA, 0x01020304, b"zonegate", bytes(6) + cpf)


def _cip_tag(rng: random.Random) -> tuple[str, int | None]:
    roll = rng.random()
    if roll < 0.4:
        return f"Line{rng.randrange(12)}.Motor.Speed", None
    if roll < 0.7:
        return f"Press_SP{rng.randrange(12)}", rng.randrange(16)
    if roll < 0.9:
        return "Recipe", rng.randrange(40)
    return f"Scratch{rng.randrange(100)}", None  # no rule names it


def synthetic_cip_messages(count: int, seed: int = 44818) -> list[bytes]:
    """40 % Read Tag, 15 % Write Tag, 10 % Get Attribute Single, 5 % Forward Open, 10 % routed Unconnected
    Send, 20 % Multiple Service Packets of 10-50 requests."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.40:
            out.append(read_tag(*_cip_tag(rng), elements=rng.randint(1, 4)))
        elif roll < 0.55:
            tag, index = _cip_tag(rng)
            out.append(write_tag(tag, index, rng.randrange(-100, 3000)))
        elif roll < 0.65:
            out.append(get_attribute_single(rng.choice((0x01, 0x01, 0x02, 0x66)), 1, rng.randint(1, 9)))
        elif roll < 0.70:
            out.append(forward_open(i & 0xFFFF))
        elif roll < 0.80:
            out.append(unconnected_send(read_tag(*_cip_tag(rng)), rng.choice((b"\x01\x00", b"\x01\x03"))))
        else:
            inner = [read_tag(*_cip_tag(rng)) if rng.random() < 0.8 else get_attribute_single(1, 1, rng.randint(1, 9))
                     for _ in range(rng.randint(10, 50))]
            out.append(multiple_service_packet(inner))
    return out


def _pattern(*parts: tuple[str, list[list[int]] | None]) -> dict[str, Any]:
    return {"parts": [{"name": name, "elements": elements} for name, elements in parts]}


def cip_benchmark_policy(rules: int = 50) -> dict[str, Any]:
    """About 50 CIP rules over the Modbus benchmark's principals and devices; the benchmarked pair has 10.

    Rule k of a pair allows reads of `Line{k}.*`, `Press_SP{k}[0..9]` and `Recipe` behind slot 0 (or
    none), writes to `Press_SP{k}[0..4]` (rate-limited on rule 0), and the Identity object's attributes
    1-7, so a request walks several rules before one matches or the deepest failure is chosen.
    """
    out = []
    for k in range(rules):
        pair, band = k % len(PRINCIPALS), k // len(PRINCIPALS)
        slot0 = [[[1, [0]]], []]
        cip = [
            {"services": ["read_tag", "read_tag_fragmented"], "service_codes": [],
             "tags": [_pattern((f"line{band}", None), ("*", None)), _pattern((f"press_sp{band}", [[0, 9]])),
                      _pattern(("recipe", [[0, 31]]))],
             "classes": None, "instances": None, "attributes": None, "routes": slot0, "rate": None},
            {"services": ["write_tag"], "service_codes": [], "tags": [_pattern((f"press_sp{band}", [[0, 4]]))],
             "classes": None, "instances": None, "attributes": None, "routes": slot0,
             "rate": {"count": 1_000_000_000, "period_ns": SECOND, "burst": 1_000_000_000} if k == 0 else None},
            {"services": ["get_attribute_single", "get_attribute_list", "get_attribute_all"], "service_codes": [],
             "tags": None, "classes": [[1, 1]], "instances": [[1, 1]], "attributes": [[1, 7]], "routes": None,
             "rate": None},
        ]
        if k % 10 == 9:
            cip.append({"services": ["forward_open", "forward_close"], "service_codes": [], "tags": None,
                        "classes": None, "instances": None, "attributes": None, "routes": None, "rate": None})
        out.append({"id": f"cip-{k:02d}", "principals": [pair], "devices": [pair], "units": None, "allow": [],
                    "cip": cip})
    devices = [dict(_device(i, d), enip={"host": f"192.168.10.{11 + i}", "port": 44818}) for i, d in enumerate(DEVICES)]
    return {"version": 1, "mode": "enforce", "principals": [_principal(p) for p in PRINCIPALS], "devices": devices,
            "rules": out}


def _flattened(message: bytes) -> list[cip_model.Leaf] | str:
    try:
        return [cip_model.Leaf.from_binding(t) for t in _engine.cip_flatten(message)]
    except ValueError as exc:
        return str(exc)


def check_cip_agreement(engine: Any, reference: cip_model.CipReferenceModel, messages: list[bytes],
                        flattened: list[list[cip_model.Leaf] | str], now: int) -> dict[str, int]:
    """decide_cip, decide_enip (SendRRData around the same message) and the model must agree on (verdict,
    reason) for every message before any is timed."""
    counts = {"allow": 0, "deny": 0, "would_deny": 0}
    names = ("allow", "deny", "would_deny")
    session = _engine.EnipSession()
    for i, (message, leaves) in enumerate(zip(messages, flattened, strict=True)):
        fast = engine.decide_cip(BENCH_PRINCIPAL, BENCH_DEVICE, message, now)
        framed = engine.decide_enip(BENCH_PRINCIPAL, BENCH_DEVICE, session, send_rr_data(message), now)
        slow = reference.decide(BENCH_PRINCIPAL, BENCH_DEVICE, message[0] if message else 0, leaves, now)
        if message[:1] in (b"\x54", b"\x5b"):
            session = _engine.EnipSession()  # a recorded Forward Open must not make the next one a duplicate
        if not (fast.verdict, fast.reason) == (framed.verdict, framed.reason) == (slow.verdict, slow.reason):
            raise SystemExit(f"CIP engine and reference model disagree on message {i}: {message.hex()}: "
                             f"{fast!r} / {framed!r} vs {slow!r}")
        counts[names[slow.verdict]] += 1
    return counts


def run_cip(iterations: int, min_seconds: float) -> dict[str, Any]:
    captured = cip_capture_messages()
    messages = captured + synthetic_cip_messages(CIP_SYNTHETIC)
    ir = cip_benchmark_policy()
    engine = _engine.Engine(json.dumps(ir))
    now = 10 * SECOND
    flattened = [_flattened(m) for m in messages]
    verdicts = check_cip_agreement(engine, cip_model.CipReferenceModel(ir), messages, flattened, now)
    leaves = sum(len(f) for f in flattened if not isinstance(f, str))
    # An allowed Forward Open is recorded in the session, and the same one again would be a duplicate:
    # decide_enip is timed on the other messages, with a fresh session per pass.
    framed_no_open = [send_rr_data(m) for m in messages if m[:1] not in (b"\x54", b"\x5b")]
    singles = [m for m in messages if m[:1] != b"\x0a"]
    packets = [m for m in messages if m[:1] == b"\x0a"]
    decide_cip, decide_enip = engine.decide_cip, engine.decide_enip

    def timed(subset: list[bytes]) -> Callable[[], None]:
        def go() -> None:
            for _ in range(iterations):
                for message in subset:
                    decide_cip(0, 0, message)

        return go

    def per_encapsulation() -> None:
        for _ in range(iterations):
            session = _engine.EnipSession()
            for frame in framed_no_open:
                decide_enip(0, 0, session, frame)

    reference = cip_model.CipReferenceModel(ir)
    sample = list(zip(messages, flattened, strict=True))[: max(1, len(messages) // 10)]

    def reference_run() -> None:
        for message, leaves_of in sample:
            reference.decide(0, 0, message[0], leaves_of, now)

    def reference_with_flatten() -> None:
        # What the model needs to decide bytes: the binding's flatten and the model's leaves.
        for message, _ in sample:
            reference.decide(0, 0, message[0], _flattened(message), now)

    per_frame_per_s = _rate(iterations * len(messages), timed(messages), min_seconds)
    single_per_s = _rate(iterations * len(singles), timed(singles), min_seconds)
    packet_per_s = _rate(iterations * len(packets), timed(packets), min_seconds) if packets else 0.0
    enip_per_s = _rate(iterations * len(framed_no_open), per_encapsulation, min_seconds)
    reference_per_s = _rate(len(sample), reference_run, min_seconds)
    reference_flatten_per_s = _rate(len(sample), reference_with_flatten, min_seconds)
    # Bytes in, decision out on both sides (see the module's docstring).
    ratio = per_frame_per_s / reference_flatten_per_s if reference_flatten_per_s else 0.0
    result: dict[str, Any] = {
        "cip_messages": len(messages),
        "cip_capture_messages": len(captured),
        "cip_synthetic_messages": CIP_SYNTHETIC,
        "cip_multiple_service_packets": len(packets),
        "cip_leaves": leaves,
        "cip_rules": len(ir["rules"]),
        "cip_verdicts": verdicts,
        "cip_per_frame_per_s": per_frame_per_s,
        "cip_single_request_per_s": single_per_s,
        "cip_multiple_service_packet_per_s": packet_per_s,
        "cip_enip_per_frame_per_s": enip_per_s,
        "cip_leaves_per_s": per_frame_per_s * leaves / len(messages),
        "cip_reference_per_s": reference_per_s,
        "cip_reference_with_flatten_per_s": reference_flatten_per_s,
        "cip_per_frame_vs_reference": ratio,
        "cip_per_frame_vs_flattened_reference": per_frame_per_s / reference_per_s if reference_per_s else 0.0,
        "cip_enip_vs_reference": enip_per_s / reference_flatten_per_s if reference_flatten_per_s else 0.0,
    }
    result["cip_targets_met"] = {
        "cip_per_frame_per_s": per_frame_per_s >= CIP_TARGETS["cip_per_frame_per_s"],
        "cip_per_frame_vs_reference": ratio >= CIP_TARGETS["cip_per_frame_vs_reference"],
    }
    return result


def cip_report(r: dict[str, Any]) -> str:
    mark = {True: "ok", False: "BELOW TARGET"}
    met = r["cip_targets_met"]
    return "\n".join(
        [
            f"CIP: {r['cip_messages']} messages ({r['cip_capture_messages']} from captures, "
            f"{r['cip_synthetic_messages']} synthetic, {r['cip_multiple_service_packets']} Multiple Service "
            f"Packets), {r['cip_leaves']} requests inside, {r['cip_rules']} rules; verdicts {r['cip_verdicts']}",
            f"  per-message decide_cip   {r['cip_per_frame_per_s']:>14,.0f} /s   {mark[met['cip_per_frame_per_s']]}"
            f"   ({r['cip_leaves_per_s']:,.0f} requests/s)",
            f"    single requests        {r['cip_single_request_per_s']:>14,.0f} /s",
            f"    Multiple Service Pkts  {r['cip_multiple_service_packet_per_s']:>14,.0f} /s",
            f"  per-message decide_enip  {r['cip_enip_per_frame_per_s']:>14,.0f} /s",
            f"  reference model (bytes in: flatten + model) {r['cip_reference_with_flatten_per_s']:>10,.0f} /s",
            f"  reference model, leaves flattened in advance {r['cip_reference_per_s']:>9,.0f} /s",
            f"  decide_cip / reference            {r['cip_per_frame_vs_reference']:8.1f}x   "
            f"{mark[met['cip_per_frame_vs_reference']]}",
            f"  decide_cip / flattened reference  {r['cip_per_frame_vs_flattened_reference']:8.1f}x",
            f"  decide_enip / reference           {r['cip_enip_vs_reference']:8.1f}x",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--iterations", type=int, default=20, help="passes over the frames per timed call")
    parser.add_argument("--compile-rules", type=int, default=10_000, help="rules in the compile benchmark")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.compile_rules < 1 or args.min_seconds < 0:
        parser.error("--iterations and --compile-rules must be >= 1, --min-seconds >= 0")
    result = run(args.iterations, args.compile_rules, args.min_seconds)
    result.update(run_cip(args.iterations, args.min_seconds))
    print(json.dumps(result) if args.json else report(result) + "\n" + cip_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
