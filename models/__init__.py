"""MONAI networks, training, evaluation and inference. Pure numpy/torch: no DICOM, no database."""
