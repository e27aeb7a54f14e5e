"""Engine leases (``storage.leases``, ``service.lease``) on SQLite and PostgreSQL: one holder at a
time, all of a set or none, taken over after expiry, at once from a dead process of this host."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from jobmill.service.lease import Lease, holder_alive, this_holder
from jobmill.storage.jobs import JobStore
from jobmill.storage.leases import LeaseStore

ELSEWHERE = "another-host 4242 777 abcd1234"  # a holder whose process cannot be checked here


def holder_of(pid: int) -> str:
    """The holder name process ``pid`` of this host would have."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    start = stat[stat.rindex(")") + 2 :].split()[19]
    return f"{this_holder().split(' ')[0]} {pid} {start} 00000000"


def test_one_holder_until_it_expires(store: JobStore) -> None:
    leases = LeaseStore(store.engine)
    names = ["engine:local"]
    assert leases.take(names, "a", now=100.0, ttl=5.0)
    assert not leases.take(names, "b", now=101.0, ttl=5.0)
    assert leases.take(names, "a", now=104.0, ttl=5.0)  # renewed: now until 109
    assert not leases.take(names, "b", now=108.0, ttl=5.0)
    assert leases.take(names, "b", now=109.5, ttl=5.0)  # expired: taken over
    held = leases.held(names)["engine:local"]
    assert (held.holder, held.expires_at, held.acquired_at) == ("b", 114.5, 109.5)
    assert not leases.take(names, "a", now=110.0, ttl=5.0)  # the old holder cannot renew
    leases.release(names, "a")  # not a's: nothing changes
    assert leases.held(names)["engine:local"].holder == "b"
    leases.release(names, "b")
    assert leases.take(names, "a", now=110.0, ttl=5.0)  # released: free at once


def test_a_set_is_taken_whole_or_not_at_all(store: JobStore) -> None:
    leases = LeaseStore(store.engine)
    assert leases.take(["engine:slurm"], "a", now=100.0, ttl=5.0)
    assert not leases.take(["engine:local", "engine:slurm"], "b", now=101.0, ttl=5.0)
    held = leases.held(["engine:local", "engine:slurm"])
    assert held["engine:local"].holder == ""  # not kept by the refused attempt
    assert held["engine:slurm"].holder == "a"
    assert leases.take(["engine:local"], "b", now=101.0, ttl=5.0)


def test_named_dead_holders_are_taken_over_before_expiry(store: JobStore) -> None:
    leases = LeaseStore(store.engine)
    assert leases.take(["engine:local"], "a", now=100.0, ttl=60.0)
    assert not leases.take(["engine:local"], "b", now=101.0, ttl=5.0, dead={"c"})
    assert leases.take(["engine:local"], "b", now=101.0, ttl=5.0, dead={"a"})


def test_a_holder_of_this_host_is_alive_while_its_process_runs() -> None:
    assert holder_alive(this_holder()) is True
    assert holder_alive(ELSEWHERE) is None
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        holder = holder_of(child.pid)
        assert holder_alive(holder) is True
    finally:
        child.kill()
        child.wait()
    assert holder_alive(holder) is False


def test_a_standby_waits_for_a_live_holder_and_takes_over_a_dead_one(store: JobStore) -> None:
    leases = LeaseStore(store.engine)
    first = Lease(leases, ["engine:local"], 60.0)
    second = Lease(leases, ["engine:local"], 60.0)
    assert first.try_take() and first.held
    assert not second.try_take()  # alive (this very process): second waits
    # The first holder's process "died": a holder of this host whose pid no longer runs.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = holder_of(child.pid)
    child.wait()
    assert leases.take(["engine:local"], dead, now=time.time(), ttl=60.0, dead={first.holder})
    assert second.try_take()  # at once, long before the 60 s expire
    assert leases.held(["engine:local"])["engine:local"].holder == second.holder


def test_a_holder_elsewhere_blocks_until_expiry(store: JobStore) -> None:
    leases = LeaseStore(store.engine)
    assert leases.take(["engine:local"], ELSEWHERE, now=time.time(), ttl=1.0)
    standby = Lease(leases, ["engine:local"], 1.0)
    assert not standby.try_take()
    stop = threading.Event()
    started = time.monotonic()
    assert standby.acquire(stop)
    try:
        assert 0.3 < time.monotonic() - started < 3.0  # after the 1 s expiry, within a retry
        assert standby.held
    finally:
        standby.release()
    assert leases.held(["engine:local"])["engine:local"].holder == ""


def test_a_lease_taken_away_is_lost_and_reported(store: JobStore) -> None:
    leases = LeaseStore(store.engine)
    lost = threading.Event()
    lease = Lease(leases, ["engine:local"], 0.6, on_lost=lost.set)
    assert lease.acquire(threading.Event())
    try:
        time.sleep(1.0)  # renewed by the heartbeat meanwhile
        assert lease.held and not lost.is_set()
        # Another process took it (as after this one froze past the expiry).
        assert leases.take(["engine:local"], ELSEWHERE, now=time.time() + 10, ttl=60.0)
        assert lost.wait(3.0)
        assert not lease.held
    finally:
        lease.release()
    assert leases.held(["engine:local"])["engine:local"].holder == ELSEWHERE
