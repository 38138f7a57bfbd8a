"""Resumable batch explanation of a whole archive, on one process or many under ``torchrun``.

::

    from medlrp.batch import BatchOptions, run_batch
    summary = run_batch(BatchOptions(model=Path("m.pt"), data=Path("data/test"), out=Path("out")))
    summary.exit_code   # 0, or 2 when some case failed (see out/errors.jsonl)

Modules: :mod:`~medlrp.batch.cases` (the sorted case list and its shards),
:mod:`~medlrp.batch.loader` (reading in DataLoader workers), :mod:`~medlrp.batch.journal` (the
crash-safe index), :mod:`~medlrp.batch.outputs` (per-case files), :mod:`~medlrp.batch.distributed`
(torchrun ranks and devices), :mod:`~medlrp.batch.runner` (the run itself).
"""

from medlrp.batch.cases import BatchCase, list_cases, shard
from medlrp.batch.journal import ERRORS, INDEX, read_records
from medlrp.batch.runner import BatchOptions, BatchSummary, run_batch

__all__ = [
    "ERRORS",
    "INDEX",
    "BatchCase",
    "BatchOptions",
    "BatchSummary",
    "list_cases",
    "read_records",
    "run_batch",
    "shard",
]
