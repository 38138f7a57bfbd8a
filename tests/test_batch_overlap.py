"""`medlrp batch` keeps the explainer busy: full batches across input sizes, writes beside the explaining."""

from pathlib import Path

import numpy as np

import medlrp.batch.job as job_module
from medlrp.batch import BatchOptions, run_batch
from medlrp.batch.journal import INDEX, part_path, read_records
from medlrp.io import write_png
from test_batch_support import make_checkpoint

#: Input sizes of the cases: all are resampled to the model's 32x32 grid, so all batch together.
SHAPES = [(32, 32), (40, 28), (20, 50), (32, 32), (64, 64), (17, 23), (32, 48)]


def test_cases_of_any_input_size_share_batches_and_the_writers_overlap(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    for i, shape in enumerate(SHAPES):
        write_png(tmp_path / "data" / "ab"[i % 2] / f"c{i}.png", rng.integers(0, 255, shape).astype(np.uint8))
    out = tmp_path / "out"
    calls: list[tuple[int, int]] = []  # per explain call: batch size, cases recorded as done before it
    explain = job_module.explain

    def spy(model, x, **kwargs):
        index = part_path(out, "index", 0)
        calls.append((x.shape[0], len(index.read_text().splitlines()) if index.exists() else 0))
        return explain(model, x, **kwargs)

    monkeypatch.setattr(job_module, "explain", spy)
    options = BatchOptions(
        model=make_checkpoint(tmp_path / "m.pt"),
        data=tmp_path / "data",
        out=out,
        methods=["gradient"],
        batch_size=3,
        workers=0,
        writers=1,
        progress=False,
    )
    summary = run_batch(options)
    assert summary.done == len(SHAPES) and summary.failed == 0
    assert [n for n, _ in calls] == [3, 3, 1]  # every batch full, whatever its cases' input sizes
    # the first batch's three cases are still being written (none recorded) while the second is explained
    assert calls[1][1] == 0
    records = read_records(out / INDEX)
    assert len(records) == len(SHAPES)
    assert all((out / r["methods"]["gradient"]["overlay"]).is_file() for r in records)
