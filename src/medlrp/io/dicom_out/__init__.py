"""DICOM outputs: relevance maps as Parametric Maps, overlays as Secondary Captures.

De-identified (DICOM PS3.15 Basic Profile) by default, or filed with the source study.

Used by ``medlrp explain --dicom`` and ``medlrp batch --dicom``; usable from any pipeline::

    from medlrp.io import read_dicom_sources, write_dicom_explanation, MapDescription, Deidentifier

    sources = read_dicom_sources("series_folder")          # sorted, regular grid checked
    write_dicom_explanation("out", "case", explanation, sources, MapDescription("lrp", "tumour"),
                            scan, (low, high), deidentifier=Deidentifier())
"""

from medlrp.io.dicom_out.deidentify import Deidentifier
from medlrp.io.dicom_out.objects import MapDescription, overlay_captures, parametric_map
from medlrp.io.dicom_out.render import overlay_frames
from medlrp.io.dicom_out.sources import read_dicom_sources
from medlrp.io.dicom_out.write import (
    MAP_SUFFIX,
    OVERLAY_SUFFIX,
    DicomFiles,
    DicomWriter,
    relevance_on_sources,
    scan_display,
    write_dicom_explanation,
)

__all__ = [
    "MAP_SUFFIX",
    "OVERLAY_SUFFIX",
    "Deidentifier",
    "DicomFiles",
    "DicomWriter",
    "MapDescription",
    "overlay_captures",
    "overlay_frames",
    "parametric_map",
    "read_dicom_sources",
    "relevance_on_sources",
    "scan_display",
    "write_dicom_explanation",
]
