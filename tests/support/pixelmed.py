"""PixelMed's validators (Debian pixelmed-apps) as a test oracle: (errors, warnings) for one file.

Java 17's XSLT compiler refuses PixelMed's large XPath expressions under its default secure
processing limits (JAXP0801003), so the limits are lifted for this one trusted stylesheet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
JAVA_FLAGS = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]

requires_pixelmed = pytest.mark.skipif(not PIXELMED_JAR.is_file(), reason="pixelmed-apps is not installed")


def pixelmed(path: Path, validator: str = "DicomSRValidator") -> tuple[list[str], list[str], str]:
    """Run com.pixelmed.validate.<validator> on path: (errors, warnings, full output)."""
    cmd = ["java", *JAVA_FLAGS, "-cp", str(PIXELMED_JAR), f"com.pixelmed.validate.{validator}", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    text = out.stdout + out.stderr
    lines = text.splitlines()
    if out.returncode != 0 or "Exception" in text:
        raise RuntimeError(f"PixelMed {validator} did not run: {text[-2000:]}")
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")], text
