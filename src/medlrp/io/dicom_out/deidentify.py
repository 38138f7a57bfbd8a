"""De-identification of the source headers a derived DICOM object copies from (DICOM PS3.15, Annex E).

medlrp's DICOM outputs copy the patient and study modules from their source datasets and refer to the
source instances by UID. :class:`Deidentifier` turns a source header into a minimal copy that follows the
Basic Application Level Confidentiality Profile: only the attributes a derived object needs are kept
(image geometry, pixel description, modality, SOP class): everything else is gone (private attributes,
institution, physicians, operators, accession number, dates and times, birth date, descriptions, free
text); the patient's name and ID become a pseudonym, and every UID that is not a standard DICOM UID is
replaced. Pseudonyms and UIDs come from an HMAC with a secret drawn per :class:`Deidentifier` (per run):
the same source UID always becomes the same new UID within a run, so the relevance map and the overlay of
one scan share their study and refer to the same (replaced) source instances, and nothing links them back
to the source. The secret and the replacement map are held in memory only and never written.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from copy import deepcopy

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

#: Attributes kept from a source header: what a derived object needs, and nothing that identifies anyone.
KEPT_KEYWORDS = (
    "SOPClassUID",
    "Modality",
    "ImageType",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SliceLocation",
    "PatientPosition",
    "Laterality",
    "ImageLaterality",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "SeriesNumber",
    "InstanceNumber",
)
#: UIDs replaced consistently (the source's own; standard UIDs such as SOP classes are kept).
REPLACED_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
#: Type 2 attributes of the patient and study modules, sent empty.
EMPTIED_KEYWORDS = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
)
#: DICOM's code for the profile applied (PS3.16 CID 7050).
PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
METHOD_TEXT = "PS3.15 Basic Application Level Confidentiality Profile"


class Deidentifier:
    """Makes de-identified copies of source headers; one instance per run keeps UIDs consistent.

    Args:
        secret: Key of the HMAC that makes pseudonyms and UIDs (default: 32 random bytes). Give the same
            secret to every process of one run (e.g. writer processes) for the same replacements; never
            store it beside the outputs.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:  # never show the secret
        return "Deidentifier()"

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """The replacement of a source UID: ``2.25.<128-bit integer>`` (PS3.5 B.2), the same within a run."""
        return "2.25." + str(int.from_bytes(self._digest("uid", str(value))[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        """A patient pseudonym (``ANON-`` and 12 hex digits), the same for one patient within a run."""
        return "ANON-" + self._digest("patient", str(patient_id)).hex()[:12].upper()

    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified copy of the header ``ds`` (no pixel data), for a derived object to copy from."""
        out = Dataset()
        for keyword in KEPT_KEYWORDS:
            if keyword in ds:
                out[keyword] = deepcopy(ds[keyword])
        for keyword in REPLACED_UIDS:
            if keyword in ds and str(ds.get(keyword, "")).strip():
                setattr(out, keyword, self.uid(str(ds.get(keyword))))
        for keyword in EMPTIED_KEYWORDS:
            setattr(out, keyword, "")
        pseudonym = self.pseudonym(str(ds.get("PatientID", "")) + "\0" + str(ds.get("PatientName", "")))
        out.PatientName = f"{pseudonym}^"  # a family name only (the caret marks it as such)
        out.PatientID = pseudonym
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = METHOD_TEXT
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
        out.DeidentificationMethodCodeSequence = Sequence([code])
        return out
