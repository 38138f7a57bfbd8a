"""Datasets: class-folder datasets (:class:`FolderDataset`) and the phantom generators.

See :mod:`medlrp.data.folder` for the dataset API other modules build on.
"""

from medlrp.data.folder import Batch, Case, CaseFile, FolderDataset, collate_cases, resolve_split

__all__ = ["Batch", "Case", "CaseFile", "FolderDataset", "collate_cases", "resolve_split"]
