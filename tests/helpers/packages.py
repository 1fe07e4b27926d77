"""Install a plugin package the way users do (pip), into a folder a server's PYTHONPATH names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "tests" / "fixtures" / "streamsnap-hello"
S3 = ROOT / "examples" / "streamsnap-s3"


def pip_install_target(package: Path, target: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        timeout=300,
    )
    return target
