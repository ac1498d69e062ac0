"""Golden-file comparison shared by the golden tests: regenerate with VIR_TEST_REGENERATE_OUTPUT=1."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "testdata"


def regenerating():
    return os.environ.get("VIR_TEST_REGENERATE_OUTPUT") == "1"


def compare(expected_path, actual):
    """Compare ACTUAL with the file; write it when regenerating or when it is missing (and fail)."""
    expected_path = Path(expected_path)
    if regenerating():
        expected_path.write_text(actual)
        return
    if not expected_path.exists():
        expected_path.write_text(actual)
        pytest.fail(f"{expected_path.relative_to(REPO)} did not exist; written now — read it, then commit it")
    assert actual == expected_path.read_text(), f"output differs from {expected_path.relative_to(REPO)}"
