"""Fixtures of the server tests: CodeGen's tokenizer, a tiny sharp model, and a server around them."""

from __future__ import annotations

import os

import pytest

import codegen
from helpers import TOKENIZER_DIR, sharp_lm


@pytest.fixture(scope="module")
def tok():
    if not os.path.isdir(TOKENIZER_DIR):
        pytest.skip("CodeGen tokenizer files not in ../shared")
    return codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def model():
    return sharp_lm()


@pytest.fixture(scope="module")
def server(model, tok):
    pytest.importorskip("uvicorn")
    from serving import Server

    with Server(model, tok) as s:
        yield s
