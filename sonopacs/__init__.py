"""sonopacs: a DICOM-native worker that brings breast-ultrasound AI into the hospital PACS workflow.

Every result it produces is an AI result for assistance only, not for diagnosis.
The sub-packages (`sonopacs.dicom_node`, `sonopacs.worker`, ...) live in the repository's top-level
folders; the packaging maps them into this one namespace.
"""

__version__ = "0.4.0"
