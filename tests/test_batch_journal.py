"""The crash-safe index, temporaries, case listing, sharding and the run manifest (no model runs)."""

import json
import os
from pathlib import Path

import pytest

from medlrp.batch.cases import list_cases, shard
from medlrp.batch.journal import (
    ERRORS,
    INDEX,
    Journal,
    consolidate,
    load_done,
    part_path,
    read_records,
    remove_temporaries,
)
from medlrp.batch.manifest import check_manifest, write_manifest
from medlrp.batch.runner import plan_batches
from medlrp.errors import InputError
from medlrp.io import atomic_path


def test_torn_last_line_is_ignored_and_dropped_by_consolidate(tmp_path: Path):
    part = part_path(tmp_path, "index", 1)
    with Journal(part) as j:
        j.append({"case": "a/1", "v": 1})
        j.append({"case": "a/2", "v": 2})
    with open(part, "ab") as f:  # what a crash in the middle of a write would leave
        f.write(b'{"case": "a/3", "v"')
    assert [r["case"] for r in read_records(part)] == ["a/1", "a/2"]
    assert sorted(load_done(tmp_path)) == ["a/1", "a/2"]
    assert consolidate(tmp_path) == (2, 0)
    assert not part.exists()
    lines = (tmp_path / INDEX).read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["case"] for x in lines[:-1]] == ["a/1", "a/2"]


def test_a_group_commit_writes_every_record_with_one_fsync(tmp_path: Path, monkeypatch):
    part = part_path(tmp_path, "index", 0)
    syncs = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), fsync(fd)))
    with Journal(part) as j:
        j.append_many([{"case": f"a/{i}", "v": i} for i in range(5)])
        j.append_many([])  # nothing finished: nothing written, no fsync
        j.append({"case": "b/0", "v": 5})
    assert len(syncs) == 2
    with open(part, "ab") as f:  # a crash in the middle of the next group's write
        f.write(b'{"case": "c/0", "v": 6}\n{"case": "c/1", "v"')
    assert [r["case"] for r in read_records(part)] == ["a/0", "a/1", "a/2", "a/3", "a/4", "b/0", "c/0"]


def test_consolidate_merges_ranks_and_drops_errors_of_done_cases(tmp_path: Path):
    with Journal(tmp_path / INDEX) as j:  # an earlier run's merged index
        j.append({"case": "b/1", "run": 1})
    with Journal(part_path(tmp_path, "index", 0)) as j0, Journal(part_path(tmp_path, "index", 3)) as j3:
        j3.append({"case": "a/9", "run": 2})
        j0.append({"case": "b/1", "run": 2})
    with Journal(part_path(tmp_path, "errors", 0)) as e:
        e.append({"case": "a/9", "reason": "flaky"})
        e.append({"case": "c/1", "reason": "corrupt"})
    assert consolidate(tmp_path) == (2, 1)
    index = read_records(tmp_path / INDEX)
    assert [(r["case"], r["run"]) for r in index] == [("a/9", 2), ("b/1", 2)]
    assert [r["case"] for r in read_records(tmp_path / ERRORS)] == ["c/1"]
    assert not (tmp_path / ".parts").exists()
    # Once the failed case is done too, errors.jsonl disappears.
    with Journal(part_path(tmp_path, "index", 0)) as j:
        j.append({"case": "c/1"})
    assert consolidate(tmp_path) == (3, 0)
    assert not (tmp_path / ERRORS).exists()


def test_remove_temporaries_only_touches_atomic_path_leftovers(tmp_path: Path):
    keep = [tmp_path / "a" / "x.relevance.nii.gz", tmp_path / ".hidden", tmp_path / "part.png"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"1")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "y.overlay.png") as tmp:
            raise RuntimeError
    leftover = tmp  # SIGKILL skips atomic_path's cleanup: its temporary stays, half written
    leftover.write_bytes(b"half")
    stale = tmp_path / "a" / ".z.relevance.nii.gz.ab12cd.part.nii.gz"
    stale.write_bytes(b"half")
    removed = remove_temporaries(tmp_path)
    assert set(removed) == {stale, leftover} and all(p.exists() for p in keep)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_list_cases_ids_masks_and_splits(tmp_path: Path):
    for split in ("test", "train"):
        for name in ("b/c1.png", "b/c1_mask.png", "a/c1.nii.gz", "a/notes.txt"):
            _touch(tmp_path / split / name)
    cases = list_cases(tmp_path)
    assert [c.case_id for c in cases] == ["test/a/c1", "test/b/c1", "train/a/c1", "train/b/c1"]
    assert cases[1].mask == tmp_path / "test/b/c1_mask.png" and cases[0].mask is None
    assert cases[1].class_name == "b"
    flat = tmp_path / "test" / "b"
    assert [(c.case_id, c.class_name) for c in list_cases(flat)] == [("c1", None)]
    with pytest.raises(InputError, match="not found"):
        list_cases(tmp_path / "nope")


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_case_once(tmp_path: Path, n: int, world: int):
    for i in range(n):
        _touch(tmp_path / "k" / f"c{i}.png")
    cases = list_cases(tmp_path) if n else []
    shards = [shard(cases, r, world) for r in range(world)]
    assert [c for s in shards for c in s] == cases  # contiguous, in order: none twice, none missed
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(InputError):
        shard(cases, world, world)


def test_manifest_refuses_other_settings(tmp_path: Path):
    settings = {"model_sha256": "x", "methods": ["lrp"], "composite": None, "target": None}
    check_manifest(tmp_path, settings)  # nothing there yet
    write_manifest(tmp_path, {**settings, "model": "m.pt"})
    check_manifest(tmp_path, settings)
    with pytest.raises(InputError, match="methods differ"):
        check_manifest(tmp_path, {**settings, "methods": ["gradcam"]})


def test_plan_batches_keeps_slices_fixed(tmp_path: Path):
    for i in range(7):
        _touch(tmp_path / "k" / f"c{i}.png")
    cases = list_cases(tmp_path)
    flat, batches = plan_batches(cases, {"k/c0", "k/c1", "k/c2", "k/c4"}, batch_size=3)
    # [c0 c1 c2] is done and skipped; [c3 c4 c5] is read whole although c4 is done; [c6] is read.
    assert [c.case_id for c in flat] == ["k/c3", "k/c4", "k/c5", "k/c6"]
    assert batches == [[0, 1, 2], [3]]
