"""DICOMweb STOW-RS sender: the other kind of export destination, beside C-STORE (scu.send_files).

Hospitals behind a web gateway (or cloud PACS) take objects over HTTPS instead of DIMSE. The
result files are posted with dicomweb-client, a few per request, and the answer is mapped back to
each file as scu.send_files does, so the export task retries exactly what failed, with the same
backoff and the same ExportAttempt rows. The client's own HTTP retries are off: one try here is one
try on the dashboard.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter

from sonopacs.dicom_node.scu import SendReport

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

    from sonopacs.config.settings import ExportSettings

log = logging.getLogger(__name__)

# Files per STOW-RS request: small enough that one refused request costs little, large enough to
# send a study's SCs and SR in a few round trips.
BATCH = 16


@dataclass(frozen=True)
class StowTarget:
    """A STOW-RS service root (e.g. https://pacs/dicom-web) and how to authenticate to it."""

    url: str
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ca_bundle: Path | None = None  # PEM bundle that verifies the server; None: the system's
    verify_tls: bool = True

    def __str__(self) -> str:
        """The URL without any credentials embedded in it (shown on the dashboard)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def session(self) -> requests.Session:
        """A requests session with the target's authentication and TLS verification."""
        session = requests.Session()
        if self.bearer_token:
            session.headers["Authorization"] = f"Bearer {self.bearer_token}"
        elif self.username:
            session.auth = (self.username, self.password or "")
        verify: str | bool = str(self.ca_bundle) if self.ca_bundle and self.verify_tls else self.verify_tls
        session.verify = verify
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's verify setting; the
        # configured bundle (or verify_tls: false) must win, so every HTTPS request gets it here.
        session.mount("https://", _VerifyAdapter(verify))
        return session


class _VerifyAdapter(HTTPAdapter):
    """An HTTPS adapter that always verifies with the target's own setting."""

    def __init__(self, verify: str | bool) -> None:
        super().__init__()
        self._verify = verify

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self._verify
        return super().send(request, *args, **kwargs)


def stow_files(paths: Sequence[Path | str], target: StowTarget, timeout: float = 30) -> SendReport:
    """STOW-RS each file to the target; per-file outcome in the same shape as scu.send_files."""
    from dicomweb_client import DICOMwebClient

    report = SendReport()
    files: list[tuple[Path, Dataset]] = []
    for raw in paths:
        path = Path(raw)
        try:
            files.append((path, pydicom.dcmread(path)))
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            report.failed[path] = f"not a readable DICOM file: {exc}"
    if not files:
        return report
    with target.session() as session:
        client = DICOMwebClient(url=target.url, session=session, timeout=timeout)
        client.set_http_retry_params(retry=False)  # our export retries, with its own backoff
        for start in range(0, len(files), BATCH):
            _post(client, files[start : start + BATCH], target, report)
    return report


def _post(
    client: DICOMwebClient, batch: list[tuple[Path, Dataset]], target: StowTarget, report: SendReport
) -> None:
    by_uid = {str(ds.SOPInstanceUID): path for path, ds in batch}
    accepted = True  # a 2xx answer; a 409 with a Store Instances Response is a partial failure
    answer: Dataset | None
    try:
        answer = client.store_instances([ds for _, ds in batch])
    except requests.HTTPError as exc:
        accepted = False
        answer = _error_answer(exc.response)
        if answer is None:
            reason = _http_reason(exc.response, target)
            for path, _ in batch:
                report.failed[path] = reason
            return
    except requests.RequestException as exc:
        reason = f"STOW-RS to {target} not reachable: {type(exc).__name__}: {exc}"
        for path, _ in batch:
            report.failed[path] = reason[:500]
        return
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0) or 0)
        for item in answer.get("FailedSOPSequence", [])
    }
    stored = {
        str(item.get("ReferencedSOPInstanceUID", "")) for item in answer.get("ReferencedSOPSequence", [])
    }
    for uid, path in by_uid.items():
        if uid in failed:
            report.failed[path] = (
                f"STOW-RS to {target} refused the instance (failure reason 0x{failed[uid]:04X})"
            )
        elif uid in stored or (accepted and not stored):
            # a 2xx answer without a per-instance list stored everything
            report.sent.append(path)
        else:
            report.failed[path] = f"STOW-RS to {target}: the answer does not confirm the instance"


def _error_answer(response: requests.Response | None) -> Dataset | None:
    """The Store Instances Response of a 409/4xx that carries one (a partial failure), else None."""
    if response is None or not response.content:
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError, json.JSONDecodeError):
        return None


def _http_reason(response: requests.Response | None, target: StowTarget) -> str:
    if response is None:
        return f"STOW-RS to {target} failed without an HTTP answer"
    hint = {401: " (check export.username/password or bearer_token)", 403: " (not allowed)"}.get(
        response.status_code, ""
    )
    return f"STOW-RS to {target}: HTTP {response.status_code} {response.reason}{hint}"[:500]


def target_from_settings(export: ExportSettings) -> StowTarget:
    """The STOW-RS target named by the export settings (kind dicomweb)."""
    if not export.dicomweb_url:
        raise ValueError("export.dicomweb_url is not set")
    return StowTarget(
        url=export.dicomweb_url,
        username=export.username,
        password=export.password.get_secret_value() if export.password else None,
        bearer_token=export.bearer_token.get_secret_value() if export.bearer_token else None,
        ca_bundle=export.ca_bundle,
        verify_tls=export.verify_tls,
    )


def check(target: StowTarget, timeout: float = 3.0) -> str:
    """A QIDO-RS study query with the target's credentials: the DICOMweb counterpart of C-ECHO."""
    with target.session() as session:
        response = session.get(f"{target.url}/studies", params={"limit": "1"}, timeout=timeout)
    if response.status_code >= 400:
        raise RuntimeError(_http_reason(response, target))
    return f"DICOMweb {target} ok"
