"""One rank's work on its batches: explain each batch, hand each case to the writers, record it.

A case's record is appended to the index only after its writer reported the files written and
fsynced, so a case in the index is complete. Explaining a batch fails over to explaining its cases one
by one, so a case that breaks the explainer fails alone.
"""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from medlrp.api import explain, method_options
from medlrp.batch.cases import BatchCase
from medlrp.batch.journal import Journal
from medlrp.batch.loader import LoadedBatch, ReadCase, failure_reason, relative_paths
from medlrp.batch.outputs import relative
from medlrp.batch.progress import CaseProgress
from medlrp.batch.writers import CaseWriter, WriteJob, Written
from medlrp.errors import InputError
from medlrp.explanation import Explanation
from medlrp.io import Image
from medlrp.lrp import LRP
from medlrp.models import LoadedModel
from medlrp.pipeline import check_finite
from medlrp.region_case import (
    PREDICTED,
    Region,
    check_region_shape,
    explain_region,
    is_segmentation,
    model_output,
    region_on_input,
    region_record,
    resolve_region,
)


@dataclass
class JobSettings:
    """What a job needs to know about the run."""

    methods: list[str]
    composite: str | None
    target: str | None
    out: Path
    data: Path
    rank: int
    device: torch.device
    keep_identifiers: bool = False
    #: Segmentation models: ``"predicted"`` (None: the same) or ``"mask"`` (each case's mask file).
    region: str | None = None
    #: The CAM methods' layer (None: their default).
    layer: str | None = None


@dataclass
class _Pending:
    case: BatchCase
    future: Future[Written]
    record: dict[str, Any]


class BatchJob:
    """Explains batches and records their cases; ``done``/``failed`` count this run's cases."""

    def __init__(
        self,
        settings: JobSettings,
        loaded: LoadedModel,
        done_before: set[str],
        writer: CaseWriter,
        index: Journal,
        errors: Journal,
        progress: CaseProgress,
    ) -> None:
        self.settings = settings
        self.loaded = loaded
        self.done_before = done_before
        self.writer = writer
        self.index = index
        self.errors = errors
        self.progress = progress
        self.done = 0
        self.failed = 0
        self._pending: deque[_Pending] = deque()
        #: One LRP explainer for the job's batches: on a GPU its captured passes are replayed.
        self._lrp: LRP | None = None

    def run(self, batch: LoadedBatch) -> None:
        """Explain one batch and hand each of its unfinished cases to the writers."""
        for failed in batch.failed:
            self.fail(failed.case, failed.reason)
        ready: list[tuple[ReadCase, int | None]] = []
        for rc in batch.cases:
            try:
                ready.append((rc, self._target_of(rc.case)))
            except InputError as exc:
                self.fail(rc.case, failure_reason(rc.case, exc))
        if not ready:
            return
        # the loader's stacked (and, for a GPU, pinned) batch, unless a case dropped out
        stacked = batch.x if batch.x is not None and len(ready) == len(batch.cases) else None
        if stacked is None:
            stacked = torch.stack([rc.x for rc, _ in ready])
        x = stacked.to(self.settings.device, non_blocking=True)
        regions: list[Region] | None = None
        if is_segmentation(self.loaded, x):
            ready, x, regions = self._regions(ready, x)
            if not ready:
                return
        targets: list[int | None] = [t for _, t in ready] if regions is None else [r.target for r in regions]
        tic = time.perf_counter()
        try:
            per_method = self._explain(x, targets, regions)
            explained = [({m: _one(e, i) for m, e in per_method.items()}, None) for i in range(len(ready))]
        except Exception:  # one bad case must not sink its batch: explain each case alone
            explained = [
                self._explain_alone(x[i : i + 1], targets[i : i + 1], rc.case, regions and regions[i : i + 1])
                for i, (rc, _) in enumerate(ready)
            ]
        explain_s = (time.perf_counter() - tic) / len(ready)
        for i, ((rc, _), (explanations, error)) in enumerate(zip(ready, explained, strict=True)):
            if rc.case.case_id in self.done_before:
                continue  # explained again only to keep its batch-mates' batch identical
            if error is None:
                error = _non_finite(rc, explanations)
            if error is not None:
                self.fail(rc.case, error)
                continue
            self._submit(rc, explanations, explain_s, regions[i] if regions is not None else None)
        self._drain(self.max_pending(len(ready)))

    def max_pending(self, batch: int) -> int:
        """Writes left queued when ``run`` returns: this batch's, plus two per writer.

        The writers then write this batch while the next one is read and explained (waiting for all
        but a few writes would leave the device idle while the writers catch up). Without writer
        processes every write is done when it is submitted.
        """
        return batch + 2 * self.writer.writers if self.writer.writers > 0 else 0

    def finish(self) -> None:
        """Wait for every pending write and record it."""
        self._drain(0)

    def fail(self, case: BatchCase, reason: str) -> None:
        """Record ``case`` as failed (unless an earlier run finished it)."""
        if case.case_id in self.done_before:
            return
        source = relative(case.image, self.settings.data)
        reason = relative_paths(reason, case, self.settings.data)
        self.errors.append({"case": case.case_id, "source": source, "reason": reason})
        self.failed += 1
        self.progress.advance()

    def _target_of(self, case: BatchCase) -> int | None:
        target = self.settings.target
        if target is None:
            return None
        if target == "label":
            label = self._label(case)
            if label is None:
                raise InputError(f"{case.image}: --target label, but the case has no known class")
            return label
        return int(target)

    def _regions(
        self, ready: list[tuple[ReadCase, int | None]], x: torch.Tensor
    ) -> tuple[list[tuple[ReadCase, int | None]], torch.Tensor, list[Region]]:
        """Each case's region of a segmentation model; a case without one fails alone."""
        output = model_output(self.loaded.model, x)
        kept, regions = [], []
        for i, (rc, target) in enumerate(ready):
            try:
                given = self._region_of(rc)
                if isinstance(given, Image):
                    check_region_shape(given, tuple(rc.image.array.shape[1:]))
                names = self.loaded.class_names
                regions.append(resolve_region(output[i : i + 1], target, given, names, str(rc.case.image)))
            except InputError as exc:
                if rc.case.case_id not in self.done_before:
                    self.fail(rc.case, failure_reason(rc.case, exc))
                continue
            kept.append(i)
        return [ready[i] for i in kept], x[kept], regions

    def _region_of(self, rc: ReadCase) -> str | Image:
        if self.settings.region != "mask":
            return PREDICTED
        if rc.mask is None:
            raise InputError(f"{rc.case.image}: --region mask, but the case has no <case>_mask file")
        return rc.mask

    def _explain(
        self, x: torch.Tensor, targets: list[int | None], regions: list[Region] | None = None
    ) -> dict[str, Explanation]:
        target = None if all(t is None for t in targets) else targets
        result = {}
        for method in self.settings.methods:
            options = method_options(method, self.settings.composite, self.settings.layer)
            if regions is not None:
                masks = torch.cat([r.mask for r in regions])
                e = explain_region(
                    self.loaded.model, x, [r.target for r in regions], masks, method, **options
                )
            elif method == "lrp":  # as explain(method="lrp") does, with the job's reused explainer
                if self._lrp is None:
                    self._lrp = LRP(self.loaded.model, self.settings.composite)
                e = self._lrp(x, target)
            else:
                e = explain(self.loaded.model, x, target=target, method=method, **options)
            result[method] = e.to("cpu")
        return result

    def _explain_alone(
        self,
        x: torch.Tensor,
        targets: list[int | None],
        case: BatchCase,
        regions: list[Region] | None = None,
    ) -> tuple[dict[str, Explanation], str | None]:
        try:
            return {m: _one(e, 0) for m, e in self._explain(x, targets, regions).items()}, None
        except InputError as exc:
            return {}, " ".join(f"{case.image}: {exc}".split())
        except Exception as exc:
            return {}, " ".join(f"{case.image}: explaining failed: {type(exc).__name__}: {exc}".split())

    def _submit(
        self, rc: ReadCase, explanations: dict[str, Explanation], explain_s: float, region: Region | None
    ) -> None:
        case_path = Path(rc.case.case_id)
        # Plain-JSON options: a module given as layer= must not travel to a writer process.
        plain = {m: replace(e, options=_jsonable(e.options)) for m, e in explanations.items()}
        given = None if region is None else (rc.mask if region.source != PREDICTED else PREDICTED)
        record = self._record(rc, explanations, region)
        job = WriteJob(
            rc.image,
            plain,
            self.settings.out / case_path.parent,
            case_path.name,
            rc.mask,
            given,
            record["label_name"],
        )
        record["timing"] = {"read_s": round(rc.read_s, 6), "explain_s": round(explain_s, 6)}
        self._pending.append(_Pending(rc.case, self.writer.submit(job), record))

    def _drain(self, limit: int) -> None:
        """Record written cases, oldest first, until at most ``limit`` writes are pending.

        The records of one call go to the index together (one fsync for them all, not one per case).
        """
        finished = []
        while len(self._pending) > limit:
            pending = self._pending.popleft()
            try:
                written = pending.future.result()
            except Exception as exc:
                self.fail(pending.case, failure_reason(pending.case, exc))
                continue
            record = pending.record
            for method, files in written.files.items():
                entry = record["methods"][method]
                entry["relevance"] = relative(files.relevance, self.settings.out)
                entry["overlay"] = relative(files.overlay, self.settings.out)
                if files.scores is not None:
                    entry["scores"] = files.scores
                if files.dicom:
                    entry["dicom"] = [relative(p, self.settings.out) for p in files.dicom]
                if files.region_metrics is not None:
                    entry["region_metrics"] = files.region_metrics
            record["timing"]["write_s"] = round(written.write_s, 6)
            finished.append(record)
        self.index.append_many(finished)  # these cases are done from here on
        self.done += len(finished)
        for _ in finished:
            self.progress.advance()

    def _record(
        self, rc: ReadCase, explanations: dict[str, Explanation], region: Region | None = None
    ) -> dict[str, Any]:
        first = next(iter(explanations.values()))
        names = self.loaded.class_names
        label = self._label(rc.case)
        data = self.settings.data
        record: dict[str, Any] = {
            "case": rc.case.case_id,
            "source": relative(rc.case.image, data),
            "mask": relative(rc.case.mask, data) if rc.case.mask is not None else None,
            "class_name": rc.case.class_name,
            "label": label,
            # The true class name, as explain records it (the report and the overlay show it).
            "label_name": names[label] if label is not None else None,
        }
        if region is None:
            probabilities = torch.softmax(first.output[0].detach().to(torch.float64), dim=0)
            prediction = int(probabilities.argmax())
            record.update(
                prediction=prediction,
                predicted_class=names[prediction] if prediction < len(names) else None,
                probabilities=[float(p) for p in probabilities],
                correct=None if label is None else prediction == label,
            )
        else:  # a segmentation: the explained region takes the place of the class prediction
            spatial = tuple(rc.image.array.shape[1:])
            record.update(region_record(region, region_on_input(region, spatial), names))
        record.update(
            target=int(first.target[0]),
            methods={
                m: {"target": int(e.target[0]), "options": _jsonable(e.options)}
                for m, e in explanations.items()
            },
            rank=self.settings.rank,
        )
        if self.settings.keep_identifiers and rc.image.identifiers:  # only when the user asks, as explain
            record["identifiers"] = dict(rc.image.identifiers)
        return record

    def _label(self, case: BatchCase) -> int | None:
        names = self.loaded.class_names
        return names.index(case.class_name) if case.class_name in names else None


def _non_finite(rc: ReadCase, explanations: dict[str, Explanation]) -> str | None:
    """The one-line reason when a method's output or relevance is not finite (nothing is written then)."""
    try:
        for method, e in explanations.items():
            check_finite(e, rc.case.image, method)
    except InputError as exc:
        return str(exc)
    return None


def _one(e: Explanation, i: int) -> Explanation:
    """Sample ``i`` of a batch explanation, as a batch of one."""
    return Explanation(e.relevance[i : i + 1], e.output[i : i + 1], e.target[i : i + 1], e.method, e.options)


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    """Options as plain JSON (a module given as ``layer=`` becomes its text)."""
    return json.loads(json.dumps(options, default=str, sort_keys=True))
