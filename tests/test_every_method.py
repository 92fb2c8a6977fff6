"""One test over every registered method (built-in and installed plugins), the way timm tests every model:
the contract's checks on tiny features, and one cell end to end through the harness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conformance_fixtures import Float64Scores

import funad.methods
from funad.methods import available, method_class
from funad.methods.conformance import ConformanceError, check_method

TESTS = Path(__file__).resolve().parent

#: feature methods; image methods (anomalib's models) have their contract test in tests/test_anomalib.py,
#: where each gets the settings it needs offline
FEATURE_METHODS = [n for n in available() if method_class(n).input_kind == "features"]


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_method_meets_the_contract(name: str, one_thread: None) -> None:
    check_method(name)


def test_a_broken_method_fails_with_a_conformance_error(
    monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """A toy method with float64 image scores fails the dtype check, with the error type and message."""
    available()  # the registry is loaded before the toy joins it (and leaves it with the monkeypatch)
    monkeypatch.setitem(funad.methods._REGISTRY, Float64Scores.name, Float64Scores)
    with pytest.raises(ConformanceError, match=r"image scores \(8,\) float64, expected \(8,\) float32"):
        check_method(Float64Scores.name)


def test_the_checks_hold_under_python_O() -> None:
    """`python -O` strips asserts; the conformance checks still fail the broken toy method."""
    code = (
        "import sys\n"
        "assert False, 'asserts are on'\n"  # stripped under -O: the run proves the flag took effect
        "from conformance_fixtures import Float64Scores\n"
        "from funad.methods import available, register\n"
        "from funad.methods.conformance import ConformanceError, check_method\n"
        "available()\n"
        "register(Float64Scores)\n"
        "try:\n"
        "    check_method(Float64Scores.name)\n"
        "except ConformanceError as e:\n"
        "    print('ConformanceError:', e)\n"
        "    sys.exit(0)\n"
        "sys.exit('check_method passed a broken method')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-O", "-c", code], cwd=TESTS.parent, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ConformanceError: method 'broken_float64_scores': image scores (8,) float64" in res.stdout


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_method_runs_a_cell_through_the_harness(name: str, tmp_path, one_thread: None) -> None:
    """One cell per method through the harness's trial body (the same code a Ray trial runs): an ok row
    with its diagnostics in the run's schema, its scores, history and split files."""
    from conftest_data import run_cell_through_trial

    run_cell_through_trial(tmp_path, name, dict(method_class(name).smoke_settings))
