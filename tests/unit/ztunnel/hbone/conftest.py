from __future__ import annotations

import pytest

from tests.unit.ztunnel.hbone.testca import TestCA


@pytest.fixture
def ca() -> TestCA:
    return TestCA()
