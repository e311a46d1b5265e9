"""Coded concepts of the TID 1500 report, each from the context group its template row names.

Kept in one place so the conformance statement (docs/conformance.md) and the validators' findings
point at a single table. Where no standard concept exists (the AI likelihood category, which is
deliberately NOT a BI-RADS assessment) we use the private scheme 99SONOPACS, declared in the SR's
Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99SONOPACS"

# TID 1500 row 4, CID 100 "Quantitative Diagnostic Imaging Procedures" has no breast-ultrasound
# entry; its generic member is used (PixelMed flagged 47079000 "Ultrasonography of breast").
PROCEDURE_REPORTED = Code("363679005", "SCT", "Imaging procedure")

# TID 1410 row 3b "Finding" (the kind of thing outlined) and TID 1419 finding site.
MASS = Code("4147007", "SCT", "Mass")
BREAST = Code("76752008", "SCT", "Breast")
LATERALITY = {"L": Code("7771000", "SCT", "Left"), "R": Code("24028007", "SCT", "Right")}

# The model's benign/malignant call: a qualitative evaluation (TID 1410 / TID 1501) named
# "Classification", valued from CID 6063 (Benign, Malignant); "Normal" from CID 222.
CLASSIFICATION = Code("278201002", "SCT", "Classification")
CLASS_VALUES = {
    "normal": Code("17621005", "SCT", "Normal"),
    "benign": Code("30807003", "SCT", "Benign"),
    "malignant": Code("21594007", "SCT", "Malignant"),
}

# TID 1500 row 12 report-level container and its items.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")  # also what Cornerstone3D reads as an annotation's label

# Measurements (TID 1419 / TID 300); CID 6048 "Probability of cancer".
PROBABILITY_OF_CANCER = Code("111047", "DCM", "Probability of cancer")
PERCENT = Code("%", "UCUM", "percent")
MM = Code("mm", "UCUM", "millimeter")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
SHORT_AXIS = Code("103340004", "SCT", "Short axis")

LIKELIHOOD_LABEL = "AI likelihood category, not a BI-RADS assessment"
LIKELIHOOD_CATEGORY = Code("LIKELIHOOD", PRIVATE_SCHEME, LIKELIHOOD_LABEL)
LIKELIHOOD_VALUES = {c: Code(f"AI-{c}", PRIVATE_SCHEME, f"AI likelihood category {c}") for c in ("1", "3", "4A", "4B", "4C", "5")}


def coding_scheme_identification() -> Dataset:
    """The Coding Scheme Identification item that declares our private scheme (PS3.3 C.12.1)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "sonopacs AI result codes"
    item.CodingSchemeResponsibleOrganization = "sonopacs"
    return item
