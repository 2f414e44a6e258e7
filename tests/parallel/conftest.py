"""Multi-process tests: 2 CPU ranks over gloo on loopback, started by torchrun as users start them."""

from __future__ import annotations

import pytest

from ranks import tiny_lm


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    return tiny_lm(str(tmp_path_factory.mktemp("tp") / "lm"))
