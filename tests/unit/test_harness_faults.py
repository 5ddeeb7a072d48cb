"""Fault verification: a fault counts only when a pod was replaced or its container restarted."""

from __future__ import annotations

from harness.faults import Snapshot, fault_verified
from harness.providers.base import PodInfo


def pod(name: str, uid: str, restarts: int = 0, deleting: bool = False) -> PodInfo:
    return PodInfo(name, uid, "Terminating" if deleting else "Running", not deleting, restarts,
                   created=1.0, app="rag-api", deleting=deleting)  # fmt: skip


def test_replaced_pod_is_a_verified_fault() -> None:
    victim = pod("a", "uid-a")
    after = Snapshot(2.0, (pod("b", "uid-b"), pod("c", "uid-c")))
    assert fault_verified(Snapshot(1.0, (victim,)), after, [victim])


def test_terminating_victim_counts_as_hit() -> None:
    victim = pod("a", "uid-a")
    after = Snapshot(2.0, (pod("a", "uid-a", deleting=True), pod("c", "uid-c")))
    assert fault_verified(Snapshot(1.0, (victim,)), after, [victim])


def test_restart_count_rising_is_a_verified_crash() -> None:
    victim = pod("a", "uid-a", restarts=1)
    after = Snapshot(2.0, (pod("a", "uid-a", restarts=2),))
    assert fault_verified(Snapshot(1.0, (victim,)), after, [victim])


def test_untouched_pod_is_not_a_fault() -> None:
    victim = pod("a", "uid-a", restarts=1)
    after = Snapshot(2.0, (pod("a", "uid-a", restarts=1), pod("b", "uid-b")))
    assert not fault_verified(Snapshot(1.0, (victim,)), after, [victim])
