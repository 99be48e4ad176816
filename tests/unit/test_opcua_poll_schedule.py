"""OPC UA converter, polling stage: where in its period each coalesced read is made (`spread`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zonegate.convert.opcua_poll import ReadBlock, plan_reads, spread
from zonegate.convert.opcua_tags import Tag


def registers(device: str, count: int, scan: float) -> list[Tag]:
    return [Tag(name=f"{device}_{i}", device=device, table="holding_registers", address=i, type="uint16", scan=scan)
            for i in range(count)]


def groups_of(blocks: list[ReadBlock]) -> dict[tuple[str, float], list[ReadBlock]]:
    """As the poller groups them: per device and scan period, in plan order."""
    out: dict[tuple[str, float], list[ReadBlock]] = {}
    for block in blocks:
        out.setdefault((block.device, block.scan), []).append(block)
    return out


def slots(groups: dict[tuple[str, float], list[ReadBlock]]) -> dict[float, list[float]]:
    """Every read's offset into its period, per scan period."""
    out: dict[float, list[float]] = {}
    for key, (phase, spacing) in spread(groups).items():
        out.setdefault(key[1], []).extend(phase + k * spacing for k in range(len(groups[key])))
    return out


def test_every_read_of_a_scan_class_gets_its_own_evenly_spaced_slot() -> None:
    # five 1,000-register devices at 1 s (8 reads each) and one at 100 ms, as in the benchmark
    tags = [t for d in range(5) for t in registers(f"slow{d}", 1000, 1.0)] + registers("fast0", 1000, 0.1)
    groups = groups_of(plan_reads(tags))
    assert {key: len(blocks) for key, blocks in groups.items()} == {
        **{(f"slow{d}", 1.0): 8 for d in range(5)}, ("fast0", 0.1): 8}
    by_scan = slots(groups)
    assert sorted(by_scan[1.0]) == pytest.approx([k / 40 for k in range(40)])  # 40 reads at 1 s: one every 25 ms
    assert sorted(by_scan[0.1]) == pytest.approx([k * 0.1 / 8 for k in range(8)])  # 8 at 100 ms: every 12.5 ms
    # one device's reads follow each other; the next device takes the slots after them
    assert spread(groups)[("slow0", 1.0)] == pytest.approx((0.0, 0.025))
    assert spread(groups)[("slow1", 1.0)] == pytest.approx((0.2, 0.025))


def test_a_single_read_starts_its_period() -> None:
    groups = groups_of(plan_reads(registers("plc", 10, 0.5)))
    assert spread(groups) == {("plc", 0.5): (0.0, 0.5)}


def test_no_groups_no_slots() -> None:
    assert spread({}) == {}


@given(st.lists(st.tuples(st.integers(1, 600), st.sampled_from([0.05, 0.1, 1.0, 5.0])), min_size=1, max_size=8))
def test_slots_are_distinct_and_inside_the_period(devices: list[tuple[int, float]]) -> None:
    tags = [t for n, (count, scan) in enumerate(devices) for t in registers(f"d{n}", count, scan)]
    groups = groups_of(plan_reads(tags))
    for scan, offsets in slots(groups).items():
        assert len(set(offsets)) == len(offsets)
        assert all(0.0 <= offset < scan for offset in offsets)
        step = scan / len(offsets)
        ordered = sorted(offsets)
        assert all(abs(b - a - step) < 1e-9 for a, b in zip(ordered, ordered[1:]))
