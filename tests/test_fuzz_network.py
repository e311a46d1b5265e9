"""A seeded fuzz run over the network: a few hundred malformed data sets C-STOREd to a real listener.

Each one must end in a DICOM status (or a refusal at negotiation), a refusal must leave an audit row,
the listener must keep serving, and nothing answered Success may be one the worker cannot decode:
Success tells the PACS the image is taken care of. `benchmarks/fuzz_soak.py` runs the same
generator for longer, on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db.models import Instance
from sonopacs.db.session import Database
from sonopacs.dicom_node import status
from sonopacs.dicom_node.eligibility import skip_reason
from sonopacs.dicom_node.pixels import read_frames
from tests.support.fuzz import FuzzCase, fuzz_cases
from tests.support.listener import audit_rows, raw_c_store, running_listener

SEED = 20261204
N_CASES = 240


def _outcome(port: int, case: FuzzCase) -> int | str:
    try:
        result = raw_c_store(port, case.path)
    except (ConnectionError, ValueError, RuntimeError) as exc:  # refused at negotiation: no context
        return f"refused: {exc}"
    assert result.status is not None, f"{case.name}: no C-STORE response (association aborted?)"
    return result.status


def test_malformed_data_sets_over_the_network_end_in_a_status_and_nothing_undecodable_is_acknowledged(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    cases = fuzz_cases(tmp_path / "fuzz", SEED, N_CASES)
    with running_listener(settings) as listener:
        outcomes = {case.name: _outcome(listener.port, case) for case in cases}
        good = raw_c_store(listener.port, cases[0].source)
    assert good.status == status.SUCCESS  # still serving after all of them

    failures = [n for n, o in outcomes.items() if isinstance(o, int) and o != status.SUCCESS]
    accepted = [n for n, o in outcomes.items() if o == status.SUCCESS]
    assert failures and accepted  # the generator makes both kinds
    assert len(audit_rows(settings, "instance_refused")) >= len(failures)

    db = Database(settings.database_url)
    try:
        with db.session() as session:
            stored = {i.sop_instance_uid: i.path for i in session.scalars(select(Instance))}
    finally:
        db.dispose()
    undecodable = []
    for path in stored.values():
        ds = pydicom.dcmread(path)
        if skip_reason(ds, settings.pipeline.uid_root) is not None:
            continue  # skipped with a reason by the pipeline: not a decode failure
        try:
            read_frames(ds, settings.pipeline.max_frames)
        except Exception as exc:  # noqa: BLE001 - any decode error is what this test looks for
            undecodable.append(f"{Path(path).name}: {type(exc).__name__}: {exc}")
    assert not undecodable, undecodable[:10]


@pytest.mark.parametrize("seed", [1, 2])
def test_the_generator_is_seeded(tmp_path: Path, seed: int) -> None:
    a = [c.path.read_bytes() for c in fuzz_cases(tmp_path / "a", seed, 30)]
    b = [c.path.read_bytes() for c in fuzz_cases(tmp_path / "b", seed, 30)]
    assert a == b
