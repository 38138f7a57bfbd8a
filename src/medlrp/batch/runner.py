"""The batch run: shard the sorted case list, read in workers, explain per batch, write per case.

Order of work for one case (see :mod:`medlrp.batch.job`): its files are written (temporary name,
rename, fsync; by a writer process when ``writers > 0``), then its record is appended to this rank's
index part (one line, fsync). A case is done exactly when its record exists, so
a run killed at any moment loses at most the cases in flight and a rerun redoes exactly those.

Batches are fixed slices of the rank's shard. On a rerun a slice that still holds an unfinished case is
explained whole again (only its unfinished cases are written), so every case is explained in the same
batch as in an uninterrupted run and the outputs are bit-identical (given the same world size).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medlrp.batch.cases import BatchCase, list_cases, shard
from medlrp.batch.distributed import DistContext
from medlrp.batch.job import BatchJob, JobSettings
from medlrp.batch.journal import Journal, consolidate, load_done, part_path, remove_temporaries
from medlrp.batch.loader import CaseReader, make_loader
from medlrp.batch.lock import RunLock
from medlrp.batch.manifest import check_manifest, file_sha256, write_manifest
from medlrp.batch.progress import CaseProgress
from medlrp.batch.writers import CaseWriter
from medlrp.errors import InputError
from medlrp.io import DicomWriter
from medlrp.io.limits import DEFAULT_LIMITS, ReadLimits
from medlrp.models import LoadedModel, load_model
from medlrp.preflight import (
    check_methods,
    check_model_methods,
    check_output_folder,
    check_target,
    probe_model,
)
from medlrp.region_case import check_region_option


@dataclass
class BatchOptions:
    """Settings of a batch run (the ``medlrp batch`` options).

    Attributes:
        model: Checkpoint or TorchScript file.
        data: Dataset folder (``<class>/<case>.<ext>``, optionally under ``train/val/test``) or a flat
            folder of images.
        out: Output folder; rerunning into it resumes.
        methods: Method names (``medlrp.registry.METHODS``).
        composite: LRP composite (``None``: the model's default).
        target: ``None`` explains the prediction, ``"label"`` the class folder's class, ``"K"`` class K,
            a class name (of the checkpoint's class names) that class.
        workers: DataLoader worker processes reading and preprocessing (0: in this process).
        writers: Processes writing the per-case files while the next batch is explained (0: in this
            process, between batches).
        batch_size: Cases per explanation call.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``; under torchrun ``auto``/``cuda`` take
            ``cuda:<LOCAL_RANK>``.
        trust_model: Allow pickled models (see :func:`medlrp.load_model`).
        keep_identifiers: Put the input's patient identifiers into its index record (and let the
            writers keep them); without it no output carries them.
        progress: Show the progress bar (rank 0 only).
        dicom: Also write DICOM outputs (Parametric Map, Secondary Capture) for DICOM cases,
            de-identified unless ``keep_identifiers``; other cases get none.
        limits: Size limits for reading inputs (``--max-pixels``, ``--max-voxels``, ``--max-bytes``).
        region: Segmentation models: ``"predicted"`` (default: where the target class wins) or
            ``"mask"`` (each case's ``<case>_mask`` file); the target class's logits summed over it
            are explained. Refused for classifiers.
        layer: The CAM methods' layer, a dotted module name (``"name:K"``: call ``K``); None: their
            default. Checked against the model before any case is read.
    """

    model: Path
    data: Path
    out: Path
    methods: list[str] = field(default_factory=lambda: ["lrp"])
    composite: str | None = None
    target: str | None = None
    workers: int = 2
    writers: int = 1
    batch_size: int = 8
    device: str = "auto"
    trust_model: bool = False
    keep_identifiers: bool = False
    progress: bool = True
    dicom: bool = False
    limits: ReadLimits = DEFAULT_LIMITS
    region: str | None = None
    layer: str | None = None


@dataclass
class BatchSummary:
    """What one rank did.

    Attributes:
        total: Cases in the data folder.
        assigned: Cases in this rank's shard.
        skipped: Cases of the shard already done before this run.
        done: Cases finished by this run on this rank.
        failed: Cases that failed on this rank in this run.
        failed_all: Cases that failed in this run on all ranks.
        seconds: Wall time of this rank's explain loop.
        rank: This process's rank.
        world_size: Number of processes.
    """

    total: int
    assigned: int
    skipped: int
    done: int
    failed: int
    failed_all: int
    seconds: float
    rank: int = 0
    world_size: int = 1

    @property
    def cases_per_second(self) -> float:
        """Cases finished per second on this rank."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every case is done, 2 (bad input) when some case failed anywhere."""
        return 2 if self.failed_all else 0


def run_batch(options: BatchOptions) -> BatchSummary:
    """Explain every case of ``options.data`` into ``options.out``, resuming a previous run.

    Under ``torchrun`` each rank takes a contiguous shard of the sorted case list.

    Raises:
        InputError: Bad settings, model or data folder, or an output folder made with other settings.
    """
    _validate(options)
    ctx = DistContext.from_env(options.device)
    try:
        return _run(options, ctx)
    finally:
        ctx.close()


def _validate(options: BatchOptions) -> None:
    check_methods(options.methods, options.composite, options.layer)
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {options.batch_size}")
    if options.workers < 0:
        raise InputError(f"--workers must be 0 or more, not {options.workers}")
    if options.writers < 0:
        raise InputError(f"--writers must be 0 or more, not {options.writers}")
    if options.region not in (None, "predicted", "mask"):
        raise InputError(f"--region must be 'predicted' or 'mask', not {options.region!r}")


def _run(options: BatchOptions, ctx: DistContext) -> BatchSummary:
    out = Path(options.out)
    if out.resolve().is_relative_to(Path(options.data).resolve()):
        # A rerun would take the outputs (overlay PNGs, NIfTI maps) for new cases.
        raise InputError(f"--out {out} is inside --data {options.data}; choose a folder outside it")
    check_output_folder(out)
    loaded = load_model(options.model, trust_model=options.trust_model, device=ctx.device)
    check_model_methods(loaded, options.methods, options.layer, options.model)
    # A class name becomes its index (as explain accepts it): the manifest and the jobs see one spelling.
    target = check_target(options.target, loaded, probe_model(loaded, options.model))
    options = replace(options, target=None if target is None else str(target))
    check_region_option(loaded, options.region, str(options.model))
    cases = list_cases(options.data)
    listing = hashlib.sha256("\n".join(c.case_id for c in cases).encode()).hexdigest()
    if not ctx.agree(listing):  # shards are cut from the list: every rank must see the same one
        raise InputError(f"{options.data}: the ranks found different case lists (files changed meanwhile?)")
    settings = {
        "model_sha256": file_sha256(Path(options.model)),
        "methods": list(options.methods),
        "composite": options.composite,
        "target": options.target,
        "keep_identifiers": options.keep_identifiers,
        "dicom": options.dicom,  # recorded, not compared: a resumed run may add or drop DICOM outputs
        "region": options.region,
        "layer": options.layer,
    }
    check_manifest(out, settings)
    with RunLock(out, enabled=ctx.rank == 0) as lock:
        return _run_locked(options, ctx, loaded, cases, settings, lock)


def _run_locked(
    options: BatchOptions,
    ctx: DistContext,
    loaded: LoadedModel,
    cases: list[BatchCase],
    settings: dict[str, Any],
    lock: RunLock,
) -> BatchSummary:
    out = Path(options.out)
    if ctx.rank == 0:  # one process tidies what a killed run left, while nobody appends
        remove_temporaries(out)
        consolidate(out)
        # Names only: a full path may carry a patient's name (case paths are relative to --data).
        write_manifest(out, {**settings, "model": Path(options.model).name, "data": Path(options.data).name})
    ctx.barrier()

    done_before = load_done(out)
    mine = shard(cases, ctx.rank, ctx.world_size)
    flat, batches = plan_batches(mine, set(done_before), options.batch_size)
    skipped = sum(c.case_id in done_before for c in mine)

    job_settings = JobSettings(
        options.methods,
        options.composite,
        options.target,
        out,
        Path(options.data),
        ctx.rank,
        ctx.device,
        options.keep_identifiers,
        options.region,
        options.layer,
    )
    label = f"batch rank {ctx.rank}/{ctx.world_size}" if ctx.world_size > 1 else "batch"
    tic = time.perf_counter()
    with (
        CaseWriter(
            loaded, options.writers, options.keep_identifiers, lock.inherited_fds, _dicom_writer(options)
        ) as writer,
        Journal(part_path(out, "index", ctx.rank)) as index,
        Journal(part_path(out, "errors", ctx.rank)) as errors,
        CaseProgress(len(mine) - skipped, label, options.progress and ctx.rank == 0) as progress,
    ):
        job = BatchJob(job_settings, loaded, set(done_before), writer, index, errors, progress)
        reader = CaseReader(flat, loaded.preprocessing, options.limits, Path(options.data))
        # Readers and writers drop their copy of the lock, so it dies with this process.
        loader = make_loader(reader, batches, options.workers, ctx.device.type == "cuda", lock.inherited_fds)
        for batch in loader:
            job.run(batch)
        job.finish()
    seconds = time.perf_counter() - tic

    failed_all = ctx.sum(job.failed)  # also the point where every rank has closed its parts
    if ctx.rank == 0:
        consolidate(out)
    return BatchSummary(
        total=len(cases),
        assigned=len(mine),
        skipped=skipped,
        done=job.done,
        failed=job.failed,
        failed_all=failed_all,
        seconds=seconds,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )


def plan_batches(
    mine: list[BatchCase], done: set[str], batch_size: int
) -> tuple[list[BatchCase], list[list[int]]]:
    """The cases to read and their batches (index lists into them).

    Batches are the fixed slices ``mine[k * batch_size : (k + 1) * batch_size]``; a slice whose cases
    are all done is skipped, any other is read and explained whole (see the module docstring).
    """
    slices = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    todo = [s for s in slices if any(c.case_id not in done for c in s)]
    flat = [c for s in todo for c in s]
    batches, start = [], 0
    for s in todo:
        batches.append(list(range(start, start + len(s))))
        start += len(s)
    return flat, batches


def _dicom_writer(options: BatchOptions) -> DicomWriter | None:
    """One DICOM writer for this process's run (its de-identification secret stays in memory)."""
    return DicomWriter(options.keep_identifiers) if options.dicom else None
