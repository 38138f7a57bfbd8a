"""`medlrp batch` under torchrun with 2 CPU processes (gloo): every case done exactly once."""

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from medlrp.batch import list_cases, read_records, shard
from medlrp.batch.loader import CaseReader
from medlrp.models import load_model
from test_batch_support import (
    PYTHON,
    TEST_METHOD,
    batch_args,
    input_hash,
    make_checkpoint,
    make_dataset,
    registered_test_method,
    script_command,
)


@pytest.fixture(autouse=True, scope="module")
def _test_method() -> Iterator[None]:
    with registered_test_method():
        yield


def test_two_ranks_do_every_case_exactly_once(tmp_path: Path):
    ids = make_dataset(tmp_path / "data", per_class=5)
    (tmp_path / "data" / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    model = make_checkpoint(tmp_path / "m.pt")
    out, log = tmp_path / "out", tmp_path / "explained.log"
    launcher = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
    ]
    args = batch_args(
        model, tmp_path / "data", out, "--methods", TEST_METHOD, "--batch-size", "2", "--workers", "0"
    )
    env = {**os.environ, "MEDLRP_TEST_BATCH_LOG": str(log), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*launcher, *script_command(*args)[1:]], env=env, capture_output=True, text=True, timeout=240
    )
    # Each rank exits 2 (a case failed somewhere); the launcher reports failed workers with its own 1.
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr and "rank 0 of 2" in proc.stderr
    assert proc.stderr.count("medlrp: error: 1 case(s) failed") == 2

    # Each case's input was explained exactly once, over both processes, by two different processes.
    loaded = load_model(model)
    cases = list_cases(tmp_path / "data")
    reader = CaseReader(cases, loaded.preprocessing)
    hashes = {input_hash(reader[i].x): c.case_id for i, c in enumerate(cases) if c.case_id in ids}
    lines = [line.split() for line in log.read_text().splitlines()]
    counts = Counter(hashes[h] for _, h in lines)
    assert counts == Counter(ids) and len({pid for pid, _ in lines}) == 2

    # One merged index, sorted, one record per case, each written by the rank whose shard holds it.
    index = read_records(out / "index.jsonl")
    assert [r["case"] for r in index] == ids
    owner = {c.case_id: r for r in range(2) for c in shard(cases, r, 2)}
    assert all(r["rank"] == owner[r["case"]] for r in index)
    assert not (out / ".parts").exists()
    assert [(r["case"], r["source"]) for r in read_records(out / "errors.jsonl")] == [
        ("b/corrupt", "b/corrupt.png")
    ]
