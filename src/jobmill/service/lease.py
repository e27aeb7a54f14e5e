"""The engine's lease: one engine per executor among the processes sharing a database.

Every engine takes the leases of its executors (``engine:<executor>``, ``storage.leases``)
before it recovers, dispatches or watches anything, and a heartbeat thread renews them every
third of their lifetime (``engine_lease``, 5 s by default). An engine that finds them taken
stands by and tries again at the same pace, so it takes over at the latest one lifetime after
the holder died; at once when the holder is a process of its own host that is gone (its pid no
longer runs with the same start time). An engine that cannot renew before its lease expires
(the database unreachable, the process frozen) counts it as lost: it stops touching jobs and
stands by again (``service.engine``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from jobmill.storage.leases import LeaseStore

log = logging.getLogger(__name__)


def lease_names(executors: Sequence[str]) -> list[str]:
    return [f"engine:{name}" for name in sorted(executors)]


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it does not run
    (or the system has no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _where() -> str:
    """This host and pid namespace: the host name, the kernel's boot id and the pid namespace
    (two containers of one name on one host do not see each other's pids)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()[:8]
        namespace = os.readlink("/proc/self/ns/pid").removeprefix("pid:")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{boot}/{namespace}".replace(" ", "_")


def this_holder() -> str:
    """A holder name for this process: where it runs (``_where``), its pid, the pid's start
    time and a nonce (two engines in one process are two holders)."""
    pid = os.getpid()
    return f"{_where()} {pid} {_start_time(pid) or '-'} {uuid.uuid4().hex[:8]}"


def holder_alive(holder: str) -> bool | None:
    """Whether ``holder``'s process still runs: None when that cannot be told from here (another
    host or pid namespace, no ``/proc``); then only the lease's expiry frees it."""
    parts = holder.split(" ")
    if len(parts) != 4 or parts[0] != _where() or "/" not in parts[0] or parts[2] == "-":
        return None
    try:
        pid = int(parts[1])
    except ValueError:
        return None
    return _start_time(pid) == parts[2]


class Lease:
    """The leases of one engine's executors, taken and renewed together."""

    def __init__(
        self,
        store: LeaseStore,
        names: Sequence[str],
        ttl: float,
        *,
        holder: str | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.names = list(names)
        self.ttl = ttl
        self.holder = holder or this_holder()
        self.on_lost = on_lost
        self.on_renewed: Callable[[], None] | None = None  # after each take or renewal
        self.renew_every = max(0.1, ttl / 3)
        self._valid_until = 0.0  # monotonic: when our last successful take runs out
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this engine may act: the lease was taken and renewed in time."""
        return time.monotonic() < self._valid_until

    def try_take(self) -> bool:
        """Take (or renew) the leases once; True when held."""
        started = time.monotonic()
        now = time.time()
        current = self.store.held(self.names)
        dead = {
            held.holder
            for held in current.values()
            if held.holder not in ("", self.holder)
            and held.expires_at >= now
            and holder_alive(held.holder) is False
        }
        if not self.store.take(self.names, self.holder, now=now, ttl=self.ttl, dead=dead):
            return False
        with self._lock:
            self._valid_until = started + self.ttl
        if self.on_renewed is not None:
            self.on_renewed()
        if dead:
            log.warning("took over the engine lease from %s (no longer running)", ", ".join(dead))
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until the leases are this engine's (True, and the heartbeat renews them) or
        ``stop`` is set (False)."""
        told = False
        while not stop.is_set():
            try:
                if self.try_take():
                    log.info("engine lease %s taken by %s", ", ".join(self.names), self.holder)
                    self._start_heartbeat()
                    return True
                if not told:
                    told = True
                    held = self.store.held(self.names).values()
                    log.info(
                        "standing by: the engine lease %s is held by %s",
                        ", ".join(self.names),
                        ", ".join(sorted({h.holder for h in held if h.holder})) or "nobody",
                    )
            except Exception as exc:  # noqa: BLE001 - the database away: a standby tries again
                log.warning("engine lease: %s", exc)
            stop.wait(self.renew_every)
        return False

    def release(self) -> None:
        """Stop renewing and give the leases back (another engine takes over at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._valid_until:
            self._valid_until = 0.0
            try:
                self.store.release(self.names, self.holder)
            except Exception as exc:  # noqa: BLE001 - it expires on its own
                log.warning("engine lease not released: %s", exc)

    def _start_heartbeat(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="jobmill-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                if self.try_take():
                    continue
                reason = "another engine holds it"
            except Exception as exc:  # noqa: BLE001 - retried while the lease lasts
                if self.held:
                    log.warning("engine lease not renewed: %s", exc)
                    continue
                reason = f"not renewed in time ({exc})"
            with self._lock:
                self._valid_until = 0.0
            log.error("engine lease %s lost: %s", ", ".join(self.names), reason)
            if self.on_lost is not None:
                self.on_lost()
            return
