"""The data watcher's work for the costliest data waits the limits allow.

The watcher runs in this process (no server), fed conditions directly, over a tree of
directories under the data root (``a<i>/b<j>/c<k>`` with 50 files in each of the 1,000 leaves;
the larger tree has a fourth level ``d<l>`` and no files). Each row is one request: the CPU time
(``time.process_time``) the watcher spends to take it in (expand its patterns, watch their
directories, look at every file already there), and to plan again (what every change of the
tree, or every scan of a network filesystem, costs).

Rows:

* the worst allowed wait: 32 patterns (``JOBMILL_MAX_WAIT_PATHS``), 4 of them with two ``**``
  (``JOBMILL_MAX_WAIT_WILDCARD_DIRS``), each over a part of the tree of its own, the 28 others
  wildcard file names in 28 directories with files;
* an adversarial one: the 4 recursive patterns' names match every file, their directories
  none (each directory is tested against each pattern once, each file by its name);
* one user's worst: 31 jobs with 992 wildcard patterns (``JOBMILL_MAX_USER_WILDCARDS``), 64 of
  them adversarial ones with two ``**`` (``JOBMILL_MAX_USER_WILDCARD_DIRS``), all taken in at
  once (a batch);
* the refused attack, for scale: 200 patterns with ``**`` (a 422 now, fed to the watcher
  directly here).

Target: the worst allowed request costs under 1 s of watcher CPU on the larger tree.

Run: ``.venv/bin/python bench/bench_waitlimits.py [--quick]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import banner, parse_args, print_table, verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from jobmill.domain.conditions import DataCondition, resolve
from jobmill.service import inotify
from jobmill.service.datawatch import DataWatcher, WatchSettings
from jobmill.storage.conditions import WaitingCondition

TARGET_SECONDS = 1.0
JOB = "00000000-0000-4000-8000-000000000000"


class NoStore:
    """The watcher's database, empty: the bench feeds conditions directly."""

    def waiting_ids(self) -> set[str]:
        return set()


def make_tree(root: Path, fanout: int, depth: int, files: int) -> int:
    levels = "abcd"[:depth]
    count = 0

    def grow(path: Path, level: int) -> None:
        nonlocal count
        if level == depth:
            for n in range(files):
                (path / f"f{n}.fits").write_bytes(b"")
            return
        for i in range(fanout):
            child = path / f"{levels[level]}{i}"
            child.mkdir()
            count += 1
            grow(child, level + 1)

    grow(root, 0)
    return count


def names(tag: str, count: int = 28) -> list[str]:
    return [f"a{i % 10}/b{i // 10 % 10}/c{i % 7}/{tag}n{i}_*" for i in range(count)]


def worst_allowed(tag: str) -> list[str]:
    recursive = [
        f"a0*/**/c*/**/{tag}r0.dat",
        f"a1*/**/b?/**/{tag}r1.dat",
        f"a2*/**/*/**/{tag}r2.dat",
        f"a3*/**/b[0-9]/**/{tag}r3.dat",
    ]
    return recursive + names(tag)


def adversarial(tag: str = "") -> list[str]:
    recursive = [
        f"**/zz{tag}*/**/*.fits",
        f"a*/**/zz{tag}*/**/*.fits",
        f"*/**/q{tag}*/**/*.fits",
        f"**/b[0-9]/**/zz{tag}/*.fits",
    ]
    return recursive + names(f"v{tag}")


def one_users_worst() -> list[list[str]]:
    jobs = [adversarial(str(n)) for n in range(16)]
    return jobs + [names(f"x{n}", 32) for n in range(15)]


def attack() -> list[str]:
    return [f"**/*/**/b{i % 10}*/**/x{i}.dat" for i in range(200)]


def measure(root: Path, conditions: list[list[str]]) -> tuple[float, float, int]:
    """CPU seconds to take the conditions in, to plan once more, and the directories watched."""
    watcher = DataWatcher(NoStore(), WatchSettings())  # type: ignore[arg-type]
    watcher._ino = inotify.Inotify()
    try:
        items = []
        for n, paths in enumerate(conditions):
            job_id = f"{JOB[:-4]}{n:04d}"
            condition = resolve(DataCondition(paths=tuple(paths)), job_id, str(root), field="w")
            items.append(WaitingCondition(job_id, condition, None, datetime.now(UTC)))
        started = time.process_time()
        watcher._inbox.append(("add", items))
        fresh = watcher._drain_inbox()
        watcher._plan()
        watcher._look_at(fresh)
        taken = time.process_time() - started
        started = time.process_time()
        watcher._plan()
        replan = time.process_time() - started
        return taken, replan, len(watcher._watched)
    finally:
        watcher._ino.close()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    banner("data watcher: the costliest allowed waits")
    trees = [(10, 3, 50)] if args.quick else [(10, 3, 50), (10, 4, 0)]
    rows = []
    worst_large = 0.0
    for fanout, depth, files in trees:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            dirs = make_tree(root, fanout, depth, files)
            shapes = [
                ("worst allowed request (32 patterns, 4 x two '**')", [worst_allowed("w")]),
                ("adversarial: names match every file, dirs none", [adversarial()]),
                ("one user's worst (31 jobs, 992 wildcards, 64 '**')", one_users_worst()),
                ("refused attack (200 '**' patterns), for scale", [attack()]),
            ]
            for name, conditions in shapes:
                taken, replan, watched = measure(root, conditions)
                total_files = fanout**depth * files
                rows.append((name, dirs, total_files, watched, taken * 1000, replan * 1000))
                if not name.startswith(("one user", "refused")):
                    worst_large = max(worst_large, taken)
        os.sync()
    print_table(
        ["request", "dirs", "files", "watched dirs", "take in (ms CPU)", "plan again (ms CPU)"],
        rows,
    )
    print()
    ratio = TARGET_SECONDS / max(worst_large, 1e-9)
    print(
        f"worst allowed request: {worst_large * 1000:.0f} ms of watcher CPU "
        f"(target {TARGET_SECONDS * 1000:.0f} ms): {verdict(ratio)}"
    )


if __name__ == "__main__":
    main()
