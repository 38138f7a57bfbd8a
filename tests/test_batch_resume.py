"""SIGKILL in the middle of a batch run, then resume: same outputs as an uninterrupted run."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medlrp.batch import read_records
from medlrp.batch.journal import INDEX, Journal, part_path
from medlrp.cli import main
from test_batch_support import (
    TEST_METHOD,
    batch_args,
    comparable,
    make_checkpoint,
    make_dataset,
    output_files,
    registered_test_method,
    script_command,
)


@pytest.fixture(autouse=True, scope="module")
def _test_method() -> Iterator[None]:
    with registered_test_method():
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str], Path]:
    root = tmp_path_factory.mktemp("batch_resume")
    ids = make_dataset(root / "data", per_class=4)
    model = make_checkpoint(root / "m.pt")
    reference = root / "reference"  # the uninterrupted run
    assert main(_args(model, root / "data", reference)) == 0
    return model, root / "data", ids, reference


def _args(model: Path, data: Path, out: Path) -> list[str]:
    return batch_args(model, data, out, "--methods", TEST_METHOD, "--batch-size", "3")


def _started(out: Path) -> int:
    return len(read_records(part_path(out, "index", 0)))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(setup, tmp_path: Path):
    model, data, ids, reference = setup
    out = tmp_path / "out"
    # Same thread count as this process (float sums depend on it): only the delay differs.
    threads = str(torch.get_num_threads())
    env = {**os.environ, "MEDLRP_TEST_BATCH_DELAY": "0.5", "OMP_NUM_THREADS": threads}
    proc = subprocess.Popen(
        script_command(*_args(model, data, out), "--workers", "1", "--writers", "1"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while _started(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    children = _children(proc.pid)  # the writer process, and the reader unless it just finished
    assert children
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    deadline = time.monotonic() + 20  # readers and writers notice their parent died and exit
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)]
    killed_at = _started(out)
    assert 2 <= killed_at < len(ids)
    assert read_records(out / INDEX) == []  # a killed run never reached its final merge

    assert main(_args(model, data, out)) == 0
    assert not list(out.rglob(".*.part*")) and not (out / ".parts").exists()
    assert output_files(out) == output_files(reference)  # byte-identical relevance maps and overlays
    index = read_records(out / INDEX)
    assert [r["case"] for r in index] == ids
    assert comparable(index) == comparable(read_records(reference / INDEX))


def test_resume_cleans_torn_lines_temporaries_and_unrecorded_files(setup, tmp_path: Path):
    model, data, ids, reference = setup
    out = tmp_path / "out"
    # What a crash can leave: files of a case whose record was never written, a temporary of a case
    # in flight, a torn record. The case with files but no record must be redone, not trusted.
    out.mkdir()
    for name, content in output_files(reference).items():
        if name.startswith("a/c00."):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(content)
    (out / "a" / "c01.overlay.png").write_bytes(b"half a png")  # no record: must be redone
    stale = out / "b" / ".c02.overlay.png.k3j2.part.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    with Journal(part_path(out, "index", 1)) as j:
        j.append(read_records(reference / INDEX)[0])  # a/c00 done by a rank of a wider run
    with open(part_path(out, "index", 1), "ab") as f:
        f.write(b'{"case": "a/c01", "meth')

    assert main(_args(model, data, out)) == 0
    assert not stale.exists() and not list(out.rglob(".*.part*"))
    assert output_files(out) == output_files(reference)
    assert comparable(read_records(out / INDEX)) == comparable(read_records(reference / INDEX))
