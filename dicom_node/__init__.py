"""Everything DICOM: the listener (Storage/Verification SCP), the SCU, pixel reading, result writers."""
