"""One test over every registered method (built-in and installed plugins), the way timm tests every model:
the contract's checks on tiny features, and one cell end to end through the harness."""

from __future__ import annotations

import pytest

from funad.methods import available
from funad.methods.conformance import check_method


@pytest.mark.parametrize("name", available())
def test_method_meets_the_contract(name: str, one_thread: None) -> None:
    check_method(name)
