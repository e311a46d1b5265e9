"""A real Orthanc (Debian package) started per test: temporary storage, free ports, REST API."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_for_port

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
# Debian orthanc-dicomweb: QIDO-RS, WADO-RS and STOW-RS under /dicom-web/
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    return Path(ORTHANC_BIN).exists()


def dicomweb_available() -> bool:
    return orthanc_available() and DICOMWEB_PLUGIN.exists()


@dataclass
class Orthanc:
    """Orthanc acting as the hospital PACS; `modalities` maps a name to (AE, host, port)."""

    workdir: Path
    ae_title: str = "ORTHANC"
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    dicomweb: bool = False  # load the DICOMweb plugin (root: dicomweb_url)
    users: dict[str, str] = field(default_factory=dict)  # HTTP basic auth users; empty: no auth

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> Orthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "sonopacs-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "StableAge": 1,
            "Plugins": [],
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
        }
        if self.dicomweb:
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
        if self.users:
            config["AuthenticationEnabled"] = True
            config["RegisteredUsers"] = dict(self.users)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        log = open(self.workdir / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.http_port, timeout=30)
        wait_for_port(self.dicom_port, timeout=30)
        self._wait_rest()
        return self

    def _wait_rest(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start on the same ports and storage (used to simulate a PACS outage)."""
        self.stop()
        self.start()

    # REST API -------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"
    ) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, payload: Any) -> Any:
        out = self.request("POST", path, json.dumps(payload).encode())
        return json.loads(out) if out else None

    def upload(self, path: Path) -> str:
        """Store a DICOM file in Orthanc through REST; returns the Orthanc instance id."""
        out = json.loads(self.request("POST", "/instances", path.read_bytes(), "application/dicom"))
        return str(out["ID"])

    def instance_bytes(self, orthanc_id: str) -> bytes:
        return self.request("GET", f"/instances/{orthanc_id}/file")

    def push_study(self, modality: str, study_id: str, synchronous: bool = True) -> Any:
        """C-STORE a whole study from Orthanc to a configured modality (Orthanc is the SCU)."""
        return self.post_json(
            f"/modalities/{modality}/store", {"Resources": [study_id], "Synchronous": synchronous}
        )

    def find_instance(self, uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or None."""
        out = json.loads(self.request("POST", "/tools/lookup", uid.encode(), "text/plain"))
        for hit in out:
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for oid in self.get("/instances"):
            tags = self.get(f"/instances/{oid}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])
        return uids
