"""The scanner files pydicom-data ships: every ultrasound and secondary-capture instance, by study.

These are real files from many vendors and tools (palette-colour Philips cines, ACR-NEMA times,
headers without Modality or Patient ID, several frames in a single-frame class), so they are the
cheapest way to meet the headers a PACS will really send.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import pydicom

ULTRASOUND_AND_SC_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",
        "1.2.840.10008.5.1.4.1.1.3.1",
        "1.2.840.10008.5.1.4.1.1.6",
        "1.2.840.10008.5.1.4.1.1.3",
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)


def local_test_files() -> list[Path]:
    """pydicom's own test files and those of the installed pydicom-data, as ``get_testdata_files("*")``
    finds them, without its attempt to download the same set again from GitHub (offline, as in CI,
    that attempt only fails, after about 10 s)."""
    from pydicom.data.data_manager import DATA_ROOT, DataTypes, external_data_sources

    local = list((Path(DATA_ROOT) / "test_files").glob("*"))
    external = [Path(p) for source in external_data_sources().values() for p in source.get_paths("*", DataTypes.DATASET)]
    return sorted(set(local + external))


def us_and_sc_files() -> list[Path]:
    """Every Part 10 file of pydicom's test data whose SOP class is ultrasound or secondary capture."""
    out = []
    for path in local_test_files():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a Part 10 file: a PACS would not take it either
            continue
        if str(ds.get("SOPClassUID", "")) in ULTRASOUND_AND_SC_CLASSES:
            out.append(path)
    return out


def by_study(paths: list[Path]) -> dict[str, list[Path]]:
    """Files grouped by Study Instance UID; files without one are under "" (a PACS refuses them)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        groups[str(ds.get("StudyInstanceUID", "") or "")].append(path)
    return dict(groups)
