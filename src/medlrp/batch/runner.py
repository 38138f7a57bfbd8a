"""The batch run: shard the sorted case list, read in workers, explain per batch, write per case.

Order of work for one case: its files are written (temporary name, rename, fsync), then its record is
appended to this rank's index part (one line, fsync). A case is done exactly when its record exists, so
a run killed at any moment loses at most the cases in flight and a rerun redoes exactly those.

Batches are fixed slices of the rank's shard. On a rerun a slice that still holds an unfinished case is
explained whole again (only its unfinished cases are written), so every case is explained in the same
batch as in an uninterrupted run and the outputs are bit-identical (given the same world size).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medlrp.api import explain
from medlrp.batch.cases import BatchCase, list_cases, shard
from medlrp.batch.distributed import DistContext
from medlrp.batch.journal import Journal, consolidate, load_done, part_path, remove_temporaries
from medlrp.batch.loader import CaseReader, LoadedBatch, ReadCase, failure_reason, make_loader
from medlrp.batch.manifest import check_manifest, file_sha256, write_manifest
from medlrp.batch.outputs import MethodFiles, fsync_files, relative, write_case
from medlrp.batch.progress import CaseProgress
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.models import LoadedModel, load_model
from medlrp.registry import METHODS


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
        target: ``None`` explains the prediction, ``"label"`` the class folder's class, ``"K"`` class K.
        workers: DataLoader worker processes reading and preprocessing (0: in this process).
        batch_size: Cases per explanation call.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``; under torchrun ``auto``/``cuda`` take
            ``cuda:<LOCAL_RANK>``.
        trust_model: Allow pickled models (see :func:`medlrp.load_model`).
        keep_identifiers: Passed to the writers; batch records never hold identifiers themselves.
        progress: Show the progress bar (rank 0 only).
    """

    model: Path
    data: Path
    out: Path
    methods: list[str] = field(default_factory=lambda: ["lrp"])
    composite: str | None = None
    target: str | None = None
    workers: int = 2
    batch_size: int = 8
    device: str = "auto"
    trust_model: bool = False
    keep_identifiers: bool = False
    progress: bool = True


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
    if not options.methods:
        raise InputError("no method given (--methods lrp,gradcam,...)")
    for method in options.methods:
        METHODS.get(method)
    if options.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {options.batch_size}")
    if options.workers < 0:
        raise InputError(f"--workers must be 0 or more, not {options.workers}")
    if options.target not in (None, "label") and not str(options.target).isdigit():
        raise InputError(f"--target must be a class index or 'label', not {options.target!r}")


def _run(options: BatchOptions, ctx: DistContext) -> BatchSummary:
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(options.model, trust_model=options.trust_model, device=ctx.device)
    cases = list_cases(options.data)
    settings = {
        "model_sha256": file_sha256(Path(options.model)),
        "methods": list(options.methods),
        "composite": options.composite,
        "target": options.target,
        "keep_identifiers": options.keep_identifiers,
    }
    check_manifest(out, settings)
    if ctx.rank == 0:  # one process tidies what a killed run left, while nobody appends
        remove_temporaries(out)
        consolidate(out)
        write_manifest(out, {**settings, "model": str(options.model), "data": str(options.data)})
    ctx.barrier()

    done_before = load_done(out)
    mine = shard(cases, ctx.rank, ctx.world_size)
    slices = [mine[i : i + options.batch_size] for i in range(0, len(mine), options.batch_size)]
    todo = [s for s in slices if any(c.case_id not in done_before for c in s)]
    flat = [c for s in todo for c in s]
    batches, start = [], 0
    for s in todo:
        batches.append(list(range(start, start + len(s))))
        start += len(s)
    skipped = sum(c.case_id in done_before for c in mine)

    job = _Job(options, loaded, ctx, out, Path(options.data), set(done_before))
    loader = make_loader(
        CaseReader(flat, loaded.preprocessing), batches, options.workers, ctx.device.type == "cuda"
    )
    label = f"batch rank {ctx.rank}/{ctx.world_size}" if ctx.world_size > 1 else "batch"
    tic = time.perf_counter()
    with (
        Journal(part_path(out, "index", ctx.rank)) as job.index,
        Journal(part_path(out, "errors", ctx.rank)) as job.errors,
        CaseProgress(len(mine) - skipped, label, options.progress and ctx.rank == 0) as job.progress,
    ):
        for batch in loader:
            job.run(batch)
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


class _Job:
    """Explains and writes the batches of one rank; counts what it did."""

    index: Journal
    errors: Journal
    progress: CaseProgress

    def __init__(
        self,
        options: BatchOptions,
        loaded: LoadedModel,
        ctx: DistContext,
        out: Path,
        data: Path,
        done_before: set[str],
    ) -> None:
        self.options = options
        self.loaded = loaded
        self.ctx = ctx
        self.out = out
        self.data = data
        self.done_before = done_before
        self.done = 0
        self.failed = 0

    def run(self, batch: LoadedBatch) -> None:
        """Explain one batch and write each of its unfinished cases."""
        for failed in batch.failed:
            self._fail(failed.case, failed.reason)
        ready = []
        for rc in batch.cases:
            try:
                ready.append((rc, self._target_of(rc)))
            except InputError as exc:
                self._fail(rc.case, failure_reason(rc.case, exc))
        if not ready:
            return
        x = torch.stack([rc.x for rc, _ in ready]).to(self.ctx.device, non_blocking=True)
        targets = [t for _, t in ready]
        tic = time.perf_counter()
        try:
            per_method = self._explain(x, targets)
            explained = [({m: _one(e, i) for m, e in per_method.items()}, None) for i in range(len(ready))]
        except Exception:  # one bad case must not sink its batch: explain each case alone
            explained = [self._explain_alone(x[i : i + 1], targets[i : i + 1]) for i in range(len(ready))]
        explain_s = (time.perf_counter() - tic) / len(ready)
        for (rc, _), (explanations, error) in zip(ready, explained, strict=True):
            if rc.case.case_id in self.done_before:
                continue  # explained again only to keep its batch-mates' batch identical
            if error is not None:
                self._fail(rc.case, error)
                continue
            try:
                self._write(rc, explanations, explain_s)
            except Exception as exc:
                self._fail(rc.case, failure_reason(rc.case, exc))

    def _target_of(self, rc: ReadCase) -> int | None:
        target = self.options.target
        if target is None:
            return None
        if target == "label":
            label = self._label(rc.case)
            if label is None:
                raise InputError(f"{rc.case.image}: --target label, but the case has no known class")
            return label
        return int(target)

    def _explain(self, x: torch.Tensor, targets: list[int | None]) -> dict[str, Explanation]:
        target = None if all(t is None for t in targets) else targets
        result = {}
        for method in self.options.methods:
            composite = self.options.composite if method == "lrp" else None
            result[method] = explain(self.loaded.model, x, target=target, method=method, composite=composite)
        return result

    def _explain_alone(
        self, x: torch.Tensor, targets: list[int | None]
    ) -> tuple[dict[str, Explanation], str | None]:
        try:
            return {m: _one(e, 0) for m, e in self._explain(x, targets).items()}, None
        except Exception as exc:
            return {}, " ".join(f"explaining failed: {type(exc).__name__}: {exc}".split())

    def _write(self, rc: ReadCase, explanations: dict[str, Explanation], explain_s: float) -> None:
        tic = time.perf_counter()
        case_path = Path(rc.case.case_id)
        case_dir = self.out / case_path.parent
        files = write_case(
            self.loaded,
            rc.image,
            explanations,
            case_dir,
            case_path.name,
            rc.mask,
            self.options.keep_identifiers,
        )
        fsync_files([p for f in files.values() for p in (f.relevance, f.overlay)])
        record = self._record(rc, explanations, files)
        record["timing"] = {
            "read_s": round(rc.read_s, 6),
            "explain_s": round(explain_s, 6),
            "write_s": round(time.perf_counter() - tic, 6),
        }
        self.index.append(record)  # the case is done from here on
        self.done += 1
        self.progress.advance()

    def _record(
        self, rc: ReadCase, explanations: dict[str, Explanation], files: dict[str, MethodFiles]
    ) -> dict[str, Any]:
        first = next(iter(explanations.values()))
        logits = first.output[0].detach().to("cpu", torch.float64)
        probabilities = torch.softmax(logits, dim=0)
        prediction = int(probabilities.argmax())
        names = self.loaded.class_names
        label = self._label(rc.case)
        methods = {}
        for method, e in explanations.items():
            written = files[method]
            entry: dict[str, Any] = {
                "relevance": relative(written.relevance, self.out),
                "overlay": relative(written.overlay, self.out),
                "target": int(e.target[0]),
                "options": _jsonable(e.options),
            }
            if written.scores is not None:
                entry["scores"] = written.scores
            methods[method] = entry
        return {
            "case": rc.case.case_id,
            "source": relative(rc.case.image, self.data),
            "mask": relative(rc.case.mask, self.data) if rc.case.mask is not None else None,
            "class_name": rc.case.class_name,
            "label": label,
            "prediction": prediction,
            "predicted_class": names[prediction] if prediction < len(names) else None,
            "probabilities": [float(p) for p in probabilities],
            "correct": None if label is None else prediction == label,
            "target": int(first.target[0]),
            "methods": methods,
            "rank": self.ctx.rank,
        }

    def _label(self, case: BatchCase) -> int | None:
        names = self.loaded.class_names
        return names.index(case.class_name) if case.class_name in names else None

    def _fail(self, case: BatchCase, reason: str) -> None:
        if case.case_id in self.done_before:
            return
        source = relative(case.image, self.data)
        self.errors.append({"case": case.case_id, "source": source, "reason": reason})
        self.failed += 1
        self.progress.advance()


def _one(e: Explanation, i: int) -> Explanation:
    """Sample ``i`` of a batch explanation, as a batch of one."""
    return Explanation(e.relevance[i : i + 1], e.output[i : i + 1], e.target[i : i + 1], e.method, e.options)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    """Options as plain JSON (a module given as ``layer=`` becomes its text)."""
    return json.loads(json.dumps(options, default=str, sort_keys=True))
