from __future__ import annotations

import pytest


@pytest.fixture
def allow_test_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_PYTHON_ALLOW", "tests.runtime_funcs.*,tests.flowfuncs.*")
