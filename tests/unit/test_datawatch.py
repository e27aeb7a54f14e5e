"""The data watcher's pure parts, without its thread: which directories it watches for a set
of patterns (``service.datadirs``), which waiting conditions a file matches
(``service.waitindex``), when a file counts as complete (``service.completeness``), and the
limits on both (the directories one pattern may lead to, what one job may wait for)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobmill.domain.conditions import DataCondition, WaitingCondition, parts
from jobmill.domain.errors import ValidationError
from jobmill.service import datadirs
from jobmill.service.completeness import (
    PRESENT_SETTLE,
    Rule,
    Tracker,
    quiet_needed,
    rule_for,
)
from jobmill.service.datadirs import DirectoryPlanner, watch_spec
from jobmill.service.triggers import MAX_GLOBSTARS, DataTriggers, WaitLimits, wildcard_dirs
from jobmill.service.waitindex import FileListener, WaitIndex, new_wait, pattern

JOB = "00000000-0000-4000-8000-00000000000{}"


def waiting(n: int, *paths: str, **options: object) -> WaitingCondition:
    condition = DataCondition(paths=tuple(paths), **options)  # type: ignore[arg-type]
    return WaitingCondition(JOB.format(n), condition, None, datetime.now(UTC))


def add(index: WaitIndex, n: int, *paths: str) -> bool:
    return index.add(new_wait(waiting(n, *paths), default_stable=0.0, now=0.0))


def matched(index: WaitIndex, path: str) -> set[tuple[str, int]]:
    return {(wait.job_id, i) for wait, i in index.candidates(path)}


def tree(root: Path, *dirs: str) -> Path:
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    return root


# -- patterns and the index ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,kind,directory,start",
    [
        ("/data/run1/out.fits", "exact", "/data/run1", "/data/run1/"),
        ("/data/run1/*.fits", "name", "/data/run1", "/data/run1/"),
        ("/data/run?/out.fits", "deep", "/data/run?", "/data/"),
        ("/data/**/out.fits", "deep", "/data/**", "/data/"),
        ("/*/x/out.fits", "deep", "/*/x", "/"),
    ],
)
def test_a_pattern_is_looked_up_by_path_by_directory_or_by_a_wildcard_directory(
    text: str, kind: str, directory: str, start: str
) -> None:
    p = pattern(text)
    assert (p.kind, p.dir, p.start, p.name) == (kind, directory, start, text.rsplit("/", 1)[1])
    assert (p.match_dir is not None) is (kind == "deep")


def test_a_file_finds_exactly_the_conditions_it_matches() -> None:
    index = WaitIndex()
    add(index, 1, "/d/a/out.fits", "/d/a/*.log")
    add(index, 2, "/d/*/out.fits")
    add(index, 3, "/d/**/x*.dat")
    assert matched(index, "/d/a/out.fits") == {(JOB.format(1), 0), (JOB.format(2), 0)}
    assert matched(index, "/d/a/run.log") == {(JOB.format(1), 1)}
    assert matched(index, "/d/b/out.fits") == {(JOB.format(2), 0)}
    assert matched(index, "/d/b/c/x1.dat") == {(JOB.format(3), 0)}
    assert matched(index, "/d/x1.dat") == {(JOB.format(3), 0)}  # "**" matches no directory too
    assert matched(index, "/d/b/c/out.fits") == set()  # "*" is one directory
    assert matched(index, "/e/a/out.fits") == set()
    assert matched(index, "/d/a/out.fits.done") == set()


def test_a_deep_pattern_added_after_a_look_in_the_same_directory_is_found() -> None:
    index = WaitIndex()
    add(index, 1, "/d/*/a.dat")
    assert matched(index, "/d/x/b.dat") == set()  # remembers the deep patterns of /d/x
    add(index, 2, "/d/*/b.dat")
    assert matched(index, "/d/x/b.dat") == {(JOB.format(2), 0)}
    index.remove(JOB.format(2))
    assert matched(index, "/d/x/b.dat") == set()


def test_the_plan_changes_only_with_the_first_and_last_pattern_of_a_directory() -> None:
    index = WaitIndex()
    assert add(index, 1, "/d/a/one.fits") is True
    assert add(index, 2, "/d/a/*.fits") is False  # same directory part: nothing new to watch
    assert add(index, 3, "/d/b/one.fits", "/d/a/two.fits") is True
    assert set(index.specs) == {("d", "a"), ("d", "b")}
    assert index.remove(JOB.format(1)) is False
    assert index.remove(JOB.format(3)) is True  # /d/b goes
    assert index.remove(JOB.format(3)) is False  # unknown: nothing
    assert index.remove(JOB.format(2)) is True
    assert not index.specs and len(index) == 0
    assert matched(index, "/d/a/one.fits") == set()


def test_a_wait_takes_the_default_stability_unless_its_condition_sets_one() -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    item = waiting(1, "/d/a", "/d/b", stable_seconds=5.0)
    item.deadline = deadline
    wait = new_wait(item, default_stable=2.0, now=7.0)
    assert (wait.stable, wait.deadline, wait.added) == (5.0, deadline.timestamp(), 7.0)
    assert wait.arrived == [False, False]
    assert new_wait(waiting(2, "/d/a"), default_stable=2.0, now=0.0).stable == 2.0
    assert new_wait(waiting(3, "/d/a", stable_seconds=0), default_stable=2.0, now=0).stable == 0


def test_a_listener_is_indexed_like_a_condition() -> None:
    index = WaitIndex()
    listener = FileListener("rule:x", DataCondition(paths=("/in/*.csv",)), lambda p: True, print)
    wait = new_wait(
        WaitingCondition(listener.key, listener.condition, None, datetime.now(UTC)),
        default_stable=0.0,
        now=0.0,
    )
    wait.listener = listener
    index.add(wait)
    assert [(w.listener, i) for w, i in index.candidates("/in/a.csv")] == [(listener, 0)]


# -- completeness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker,closed,scanned,stable,rule",
    [
        (True, True, False, 0.0, Rule.MARKER),
        (True, False, True, 5.0, Rule.MARKER),
        (False, True, False, 0.0, Rule.CLOSED),  # closed in a watched directory: at once
        (False, True, False, 2.0, Rule.QUIET),  # ... unless stability is asked for
        (False, True, True, 0.0, Rule.QUIET),  # scanned: no close is ever seen for sure
        (False, False, False, 0.0, Rule.QUIET),  # found by looking
    ],
)
def test_how_a_file_is_judged_complete(
    marker: bool, closed: bool, scanned: bool, stable: float, rule: Rule
) -> None:
    assert rule_for(marker=marker, closed=closed, scanned=scanned, stable=stable) is rule


def test_a_file_found_by_looking_settles_at_least_a_second() -> None:
    assert quiet_needed(0.0, closed=True) == 0.0
    assert quiet_needed(3.0, closed=True) == 3.0
    assert quiet_needed(0.0, closed=False) == PRESENT_SETTLE
    assert quiet_needed(3.0, closed=False) == 3.0


def test_a_local_file_found_quiet_for_long_counts_at_once() -> None:
    tracker = Tracker()
    wall = 1_000_000.0
    old = int((wall - 60) * 1e9)  # its mtime is a minute old
    track = tracker.seen("/d/f", 10, old, closed=False, scanned=False, now=50.0, wall=wall)
    assert track.since == pytest.approx(-10.0)
    assert tracker.settle("/d/f", track, 50.0, [("job", 0.0)]) == ["job"]
    assert len(tracker) == 0  # nothing left waiting for it


def test_a_scanned_file_is_judged_by_two_looks_never_by_its_mtime() -> None:
    tracker = Tracker()
    old = int(1e9)  # a file server's clock may be anything
    track = tracker.seen("/n/f", 10, old, closed=False, scanned=True, now=50.0, wall=2e9)
    assert track.since == 50.0
    assert tracker.settle("/n/f", track, 50.0, [("job", 0.0)]) == []
    assert tracker.next_due() == 50.0 + PRESENT_SETTLE
    assert tracker.pop_due(50.5) is None  # not due yet
    due = tracker.pop_due(51.0)
    assert due is not None and due[0] == "/n/f"
    tracker.looked_again(due[1], 10, old, 51.0)  # unchanged
    assert tracker.settle("/n/f", due[1], 51.0, [("job", 0.0)]) == ["job"]


def test_a_change_starts_the_quiet_time_again() -> None:
    tracker = Tracker()
    track = tracker.seen("/d/f", 1, 1, closed=True, scanned=False, now=0.0, wall=0.0)
    assert tracker.settle("/d/f", track, 0.0, [("a", 2.0), ("b", 5.0)]) == []
    assert tracker.next_due() == 2.0
    path, track = tracker.pop_due(2.0) or ("", track)
    tracker.looked_again(track, 2, 2, 2.0)  # it grew
    assert (track.since, track.closed) == (2.0, False)
    # no close seen since the change: at least PRESENT_SETTLE, and "b" still wants 5 s
    assert tracker.settle(path, track, 2.0, [("a", 2.0), ("b", 5.0)]) == []
    assert tracker.pop_due(3.9) is None
    path, track = tracker.pop_due(4.0) or ("", track)
    assert tracker.settle(path, track, 4.0, [("a", 2.0), ("b", 5.0)]) == ["a"]
    assert tracker.next_due() == 7.0


def test_a_close_of_an_unchanged_file_is_remembered() -> None:
    tracker = Tracker()
    track = tracker.seen("/d/f", 1, 1, closed=False, scanned=False, now=0.0, wall=0.0)
    again = tracker.seen("/d/f", 1, 1, closed=True, scanned=False, now=0.5, wall=0.5)
    assert again is track and track.closed and track.since == 0.0
    tracker.gone("/d/f")
    assert len(tracker) == 0
    assert tracker.pop_due(100.0) is None


# -- which directories to watch --------------------------------------------------------------


def test_the_directories_a_pattern_leads_to(tmp_path: Path) -> None:
    root = tree(tmp_path, "a/x/deep", "a/y", "b/x", "c")
    planner = DirectoryPlanner()
    base = str(root)

    def expand(spec: str) -> set[str]:
        return {d.removeprefix(base) for d in planner.expand(parts(f"{base}/{spec}"))}

    assert expand("a/x") == {"/a/x"}
    assert expand("a/missing/later") == {"/a"}  # the nearest existing ancestor
    assert expand("*/x") == {"", "/a", "/b", "/c", "/a/x", "/b/x"}
    assert expand("a/**") == {"/a", "/a/x", "/a/y", "/a/x/deep"}
    assert expand("a/**/deep/**/z") == expand("a/**")  # cut after the first "**"
    assert watch_spec(("a", "**", "b", "**", "c")) == ("a", "**")


def test_every_waiting_pattern_is_planned_once(tmp_path: Path) -> None:
    root = tree(tmp_path, "a/x", "a/y", "b")
    index = WaitIndex()
    add(index, 1, f"{root}/a/*/f.dat", f"{root}/b/g.dat")
    add(index, 2, f"{root}/a/*/h.dat", f"{root}/new/dir/i.dat")
    wanted = DirectoryPlanner().wanted(index.specs)
    assert wanted == {f"{root}/a", f"{root}/a/x", f"{root}/a/y", f"{root}/b", str(root)}


def test_one_pattern_leads_to_at_most_so_many_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path, *(f"d{i}/e{j}" for i in range(5) for j in range(5)))
    monkeypatch.setattr(datadirs, "MAX_DIRS_PER_PATTERN", 10)
    found = DirectoryPlanner().expand(parts(f"{root}/**"))
    assert 10 <= len(found) < 31


def test_directories_under_a_scan_root_are_scanned(tmp_path: Path) -> None:
    planner = DirectoryPlanner((f"{tmp_path}/nfs/",))
    assert planner.scan_here(f"{tmp_path}/nfs")
    assert planner.scan_here(f"{tmp_path}/nfs/a/b")
    assert not planner.scan_here(f"{tmp_path}/nfsother")
    assert not planner.scan_here(str(tmp_path))


# -- what one job may wait for ---------------------------------------------------------------


def triggers(root: Path, limits: WaitLimits) -> DataTriggers:
    """Only ``prepare`` is used: it checks a condition without the database or the watcher."""
    return DataTriggers(None, None, None, root, limits=limits)  # type: ignore[arg-type]


def test_the_patterns_one_job_may_wait_for(tmp_path: Path) -> None:
    data = triggers(tmp_path, WaitLimits(max_paths=3, max_wildcard_dirs=1))
    ok = data.prepare(DataCondition(paths=("a/*.fits", "b/c.dat")), JOB.format(1), field="w")
    assert ok.paths == (f"{tmp_path}/a/*.fits", f"{tmp_path}/b/c.dat")
    with pytest.raises(ValidationError) as too_many:
        data.prepare(DataCondition(paths=("a", "b", "c", "d")), JOB.format(1), field="w")
    assert too_many.value.field == "w.paths"
    with pytest.raises(ValidationError) as deep:
        data.prepare(DataCondition(paths=("*/a", "**/b")), JOB.format(1), field="w")
    assert deep.value.field == "w.paths"
    stars = "/".join(["**", "x"] * (MAX_GLOBSTARS + 1))
    with pytest.raises(ValidationError) as globstars:
        data.prepare(DataCondition(paths=(stars + "/f",)), JOB.format(1), field="w")
    assert globstars.value.field == "w.paths[0]"


@pytest.mark.parametrize(
    "text,deep", [("/a/b/c", 0), ("/a/b/*.c", 0), ("/a/*/c", 1), ("/a/**/c", 1), ("/*/c", 1)]
)
def test_a_wildcard_directory_is_what_costs(text: str, deep: int) -> None:
    assert wildcard_dirs(text) == deep
