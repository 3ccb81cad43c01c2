"""Fixtures shared by every test package: a generated mini-EPIC and the real annotations."""

from __future__ import annotations

from pathlib import Path

import pytest

from epicdata.synthetic import MiniEpic, make_mini_epic

#: ../shared/epic100 next to the repository: the official EPIC-100 annotation files.
REAL_ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "epic100"


@pytest.fixture(scope="session")
def mini_epic(tmp_path_factory: pytest.TempPathFactory) -> MiniEpic:
    """The default mini-EPIC (seed 0, 8 videos at 320x180), written once per session."""
    return make_mini_epic(tmp_path_factory.mktemp("mini_epic"))


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The folder of real EPIC-100 annotation files; skips the test when it is absent."""
    if not REAL_ANNOTATIONS.is_dir():
        pytest.skip("../shared/epic100 not present (real EPIC-100 annotation files)")
    return REAL_ANNOTATIONS
