"""Optional TLS for the listener (DICOM PS3.15 B.9 / "TLS secure transport connection profile")."""

from __future__ import annotations

import ssl

from sonopacs.config.settings import ConfigError, DicomSettings


def server_context(dicom: DicomSettings) -> ssl.SSLContext | None:
    """None without a certificate; with ``tls_ca`` set, peers must present a certificate it signed."""
    if dicom.tls_cert is None and dicom.tls_key is None:
        if dicom.tls_ca is not None:
            raise ConfigError("dicom.tls_ca: needs dicom.tls_cert and dicom.tls_key as well")
        return None
    if dicom.tls_cert is None or dicom.tls_key is None:
        missing = "dicom.tls_key" if dicom.tls_key is None else "dicom.tls_cert"
        raise ConfigError(f"{missing}: TLS needs both dicom.tls_cert and dicom.tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=dicom.tls_cert, keyfile=dicom.tls_key)
        if dicom.tls_ca is not None:
            context.load_verify_locations(cafile=dicom.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom.tls_cert/tls_key/tls_ca: cannot load: {exc}") from exc
    return context
