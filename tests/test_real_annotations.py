"""Where the real-annotation tests look (tests/conftest.py ``RealAnnotations``): the folder
of ``$EPIC_REAL_ANNOTATIONS``, else ../shared/epic100, each file in the flat layout or the
official repository's; a skip names the variable. Tiny stand-in folders, no real data."""

from __future__ import annotations

from pathlib import Path

import pytest

VAR = "EPIC_REAL_ANNOTATIONS"
UDA = "EPIC_100_uda_target_train_timestamps.csv"


def _official_layout(root: Path) -> Path:
    """The layout of github.com/epic-kitchens/epic-kitchens-100-annotations (files empty)."""
    (root / "UDA_annotations").mkdir(parents=True)
    for name in ("EPIC_100_video_info.csv", "EPIC_100_validation.csv"):
        (root / name).write_text("")
    (root / "UDA_annotations" / UDA).write_text("")
    return root


def test_the_variable_wins_over_the_shared_folder_regression(real_annotations_at, tmp_path):
    # Regression: the tests of tests/epicdata looked only at ../shared/epic100.
    folder = _official_layout(tmp_path / "clone")
    assert real_annotations_at({VAR: str(folder)}).require() == folder
    assert real_annotations_at({}).folder.parts[-2:] == ("shared", "epic100")
    assert real_annotations_at({VAR: ""}).folder.parts[-2:] == ("shared", "epic100")


def test_a_uda_file_is_found_in_the_official_layout_regression(real_annotations_at, tmp_path):
    # Regression: FileNotFoundError for <clone>/EPIC_100_uda_target_train_timestamps.csv.
    folder = _official_layout(tmp_path / "clone")
    found = real_annotations_at({VAR: str(folder)})
    assert found.file(UDA) == folder / "UDA_annotations" / UDA
    assert found.file("EPIC_100_validation.csv") == folder / "EPIC_100_validation.csv"


def test_a_flat_folder_is_read_flat(real_annotations_at, tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    for name in ("EPIC_100_video_info.csv", UDA):
        (folder / name).write_text("")
    assert real_annotations_at({VAR: str(folder)}).file(UDA) == folder / UDA


@pytest.mark.parametrize("kind", ["empty", "nonexistent"])
def test_no_annotations_skips_naming_the_variable_regression(real_annotations_at, tmp_path, kind):
    # Regression: the skip said "../shared/epic100 not present", not how to give a copy.
    folder = tmp_path / "ann"
    if kind == "empty":
        folder.mkdir()
    found = real_annotations_at({VAR: str(folder)})
    with pytest.raises(pytest.skip.Exception, match=f"{VAR}={folder} has no ") as info:
        found.require()
    assert "set EPIC_REAL_ANNOTATIONS to a clone of" in str(info.value)
    with pytest.raises(pytest.skip.Exception, match=VAR):
        found.file("EPIC_100_validation.csv")


def test_a_file_missing_from_a_copy_skips_naming_file_and_variable(real_annotations_at, tmp_path):
    folder = _official_layout(tmp_path / "clone")
    with pytest.raises(pytest.skip.Exception) as info:
        real_annotations_at({VAR: str(folder)}).file("EPIC_100_train.csv")
    assert f"EPIC_100_train.csv is not in {VAR}={folder}" in str(info.value)
