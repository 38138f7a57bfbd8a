"""Writing cases beside the explaining: in this process, or in a pool of writer processes.

Drawing an overlay costs far more than explaining a small case (and on a GPU, all of it), so with
``writers > 0`` the files are written by worker processes while the next batch is explained. A writer
only writes files; the index record is appended by the main process once the writer reports success,
so "done means recorded after its files" holds either way. Writers watch their parent: after its death
(e.g. SIGKILL) a writer finishes the file it is writing (a complete file renamed into place, never
recorded, so the next run redoes that case and writes the same bytes), starts no other job, and exits.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from medlrp.batch.outputs import MethodFiles, fsync_files, write_case
from medlrp.explanation import Explanation
from medlrp.io import DicomWriter, Image
from medlrp.models import LoadedModel


@dataclass
class WriteJob:
    """One case's files to write (all tensors on the CPU)."""

    image: Image
    explanations: dict[str, Explanation]
    case_dir: Path
    name: str
    mask: Image | None
    #: Segmentation models: the explained region (``"predicted"`` or the mask image), else ``None``.
    region: str | Image | None = None
    #: The case's true class name, when its class folder is one of the model's classes.
    label: str | None = None


@dataclass
class Written:
    """What a writer reports back."""

    files: dict[str, MethodFiles]
    write_s: float


def write_job(
    job: WriteJob, loaded: LoadedModel, keep_identifiers: bool, dicom: DicomWriter | None = None
) -> Written:
    """Write one case's files and flush them to the disk."""
    tic = time.perf_counter()
    files = write_case(
        loaded,
        job.image,
        job.explanations,
        job.case_dir,
        job.name,
        job.mask,
        keep_identifiers,
        dicom,
        region=job.region,
        label=job.label,
    )
    fsync_files([p for f in files.values() for p in (f.relevance, f.overlay, *f.dicom)])
    return Written(files, time.perf_counter() - tic)


# A writer process's settings, set once by _init_writer (jobs then carry only the case).
_WORKER_SETTINGS: tuple[LoadedModel, bool, DicomWriter | None] | None = None
_PARENT = -1
# Held while a job writes: an orphaned writer finishes the file it is writing (so it never leaves a
# temporary behind after the next run has tidied up) and then exits, starting no further job.
_BUSY = threading.Lock()


class OrphanedWriterError(RuntimeError):
    """The writer's parent died; the job is not started."""


def _write_in_worker(job: WriteJob) -> Written:
    assert _WORKER_SETTINGS is not None
    with _BUSY:
        if os.getppid() != _PARENT:
            raise OrphanedWriterError("the batch run that queued this job is gone")
        return write_job(job, *_WORKER_SETTINGS)


def _ready() -> bool:
    return True


def _init_writer(
    loaded: LoadedModel, keep_identifiers: bool, parent: int, close_fds: list[int], dicom: DicomWriter | None
) -> None:
    global _WORKER_SETTINGS, _PARENT
    _WORKER_SETTINGS, _PARENT = (loaded, keep_identifiers, dicom), parent
    for fd in close_fds:
        os.close(fd)
    torch.set_num_threads(1)  # a writer resamples small maps; threads would only fight the explainer

    def watch() -> None:  # an orphaned pool worker would otherwise wait for jobs forever
        while os.getppid() == parent:
            time.sleep(0.5)
        with _BUSY:
            os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class CaseWriter:
    """Writes :class:`WriteJob` s, synchronously (``writers=0``) or in ``writers`` processes.

    ``close_fds`` are closed in each writer process (descriptors it inherits but must not hold, such as
    the run lock: it must die with the main process, not linger with an orphaned writer). ``dicom``
    (``--dicom``) goes to every writer: one :class:`~medlrp.io.DicomWriter` per run, so every writer
    process replaces UIDs the same way.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        writers: int,
        keep_identifiers: bool = False,
        close_fds: list[int] | None = None,
        dicom: DicomWriter | None = None,
    ) -> None:
        self.writers = writers
        self._loaded = loaded
        self._keep_identifiers = keep_identifiers
        self._dicom = dicom
        self._pool: ProcessPoolExecutor | None = None
        if writers > 0:
            # Writers never run the model: give them its description only, not its weights.
            lite = replace(loaded, model=torch.nn.Identity())
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                writers,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_writer,
                initargs=(lite, keep_identifiers, os.getpid(), list(close_fds or []), dicom),
            )
            # Start the processes now, before the progress bar's thread and the readers exist.
            self._pool.submit(_ready).result()

    def submit(self, job: WriteJob) -> Future[Written]:
        """Start writing ``job``; the future holds :class:`Written` or the writer's exception."""
        if self._pool is not None:
            return self._pool.submit(_write_in_worker, job)
        future: Future[Written] = Future()
        try:
            future.set_result(write_job(job, self._loaded, self._keep_identifiers, self._dicom))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def close(self) -> None:
        """Wait for pending writes and stop the writers."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None

    def __enter__(self) -> CaseWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
