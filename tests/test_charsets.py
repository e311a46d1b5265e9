"""Any Specific Character Set a scanner sends survives into our SC and SR (pydicom's own charset files).

The patient names and character sets of pydicom's charset test files (ISO 2022 Japanese and Korean
with code extensions, UTF-8, GB18030, Latin, Cyrillic, Greek, Arabic, Hebrew) are put on an
ultrasound study, which goes through the real clean, analyze and publish stages; the SC and SR must
carry the same name, decoded, with a character set that encodes it, and must pass dciodvfy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import Database, InstanceState, ResultObject
from sonopacs.db.migrate import upgrade
from tests.conftest import requires_dciodvfy
from tests.support.findings import dciodvfy
from tests.support.pipeline_db import register_files, run_stages
from tests.support.sonopacs_proc import analyzer_or_skip
from tests.support.us_realistic import write_realistic_study

CHARSET_FILES = ["chrH31.dcm", "chrH32.dcm", "chrI2.dcm", "chrX1.dcm", "chrX2.dcm", "chrRuss.dcm", "chrGreek.dcm",
                 "chrArab.dcm", "chrHbrw.dcm", "chrFren.dcm", "chrJapMulti.dcm", "chrKoreanMulti.dcm"]


def _charset_source(name: str) -> pydicom.Dataset:
    (path,) = [p for p in get_charset_files(name) if Path(p).name == name]
    return pydicom.dcmread(path)


@requires_dciodvfy
@pytest.mark.parametrize("name", CHARSET_FILES)
def test_patient_name_in_any_character_set_survives_into_sc_and_sr(
    name: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    analyzer_or_skip(settings)
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    source = _charset_source(name)
    (path,) = write_realistic_study(tmp_path / "study", n_images=1)
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.PatientName = str(source.PatientName)  # encoded by the file's own character set when saved
    ds.save_as(path, enforce_file_format=True)
    sent = pydicom.dcmread(path)
    assert str(sent.PatientName) == str(source.PatientName)

    study_id = register_files(db, [path])
    run_stages(settings, db, study_id, 1)
    with db.session() as session:
        rows = list(session.scalars(select(ResultObject).where(ResultObject.study_id == study_id)))
        from sonopacs.db import Instance

        (instance,) = session.scalars(select(Instance).where(Instance.study_id == study_id))
        assert instance.state in (InstanceState.PROCESSED, InstanceState.NOT_ASSESSED), instance.state_reason
    assert {r.kind for r in rows} >= {"sc", "sr"}
    for row in rows:
        out = settings.storage.root / row.path
        produced = pydicom.dcmread(out)
        assert str(produced.PatientName) == str(source.PatientName), (row.kind, produced.SpecificCharacterSet)
        errors, _ = dciodvfy(out)
        assert not errors, (row.kind, errors[:5])
