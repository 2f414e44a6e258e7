"""The bundled demo model and its tokenizer files (built from PyPI data by scripts/make_tokenizer.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import codegen
from codegen.demo import DEMO_DIR
from helpers import TOKENIZER_DIR

needs_shared = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason="CodeGen tokenizer files not in ../shared")
has_weights = os.path.isfile(os.path.join(DEMO_DIR, "model.safetensors"))


@needs_shared
def test_shipped_tokenizer_files_equal_codegens():
    ours = codegen.CodeGenTokenizerFast.from_pretrained(DEMO_DIR)
    ref = codegen.CodeGenTokenizerFast.from_pretrained(TOKENIZER_DIR)
    assert ours.encoder == ref.encoder and ours._merges == ref._merges
    assert ours.added_tokens_encoder == ref.added_tokens_encoder and len(ours) == 50295
    from test_tokenizer import handwritten_texts, stdlib_texts

    texts = [t for _, t in stdlib_texts()[:300]] + handwritten_texts()
    assert ours(texts)["input_ids"] == ref(texts)["input_ids"]


@pytest.mark.skipif(not has_weights, reason="the demo model's weights are not built")
def test_demo_model_card_and_size():
    size = os.path.getsize(os.path.join(DEMO_DIR, "model.safetensors"))
    assert size < 32 * 10**6
    card = open(os.path.join(DEMO_DIR, "MODEL_CARD.md"), encoding="utf-8").read()
    for needle in ("held-out loss", "codegen train", "PSF", "tokens"):
        assert needle in card


@pytest.mark.skipif(not has_weights, reason="the demo model's weights are not built")
def test_complete_without_model_uses_the_demo(tmp_path):
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "complete", "def fibonacci(n):", "--temperature", "0",
                        "--max-new-tokens", "24"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def fibonacci(n):") and len(r.stdout) > len("def fibonacci(n):") + 5
    config = json.load(open(os.path.join(DEMO_DIR, "config.json")))
    assert config["model_type"] == "codegen"


def test_demo_data_cuts_functions_and_methods_out_dedented():
    import ast
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_demo_data.py")
    spec = importlib.util.spec_from_file_location("make_demo_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    source = (
        "import os\n\n"
        "def top(a):\n    def inner():\n        return a\n    return inner\n\n"
        "class C:\n    x = 1\n\n    @property\n    def value(self):\n        return self.x\n\n"
        "    async def fetch(self, url):\n        return url\n"
    )
    texts = mod.functions(source)
    assert texts == [
        "def top(a):\n    def inner():\n        return a\n    return inner\n",
        "@property\ndef value(self):\n    return self.x\n",
        "async def fetch(self, url):\n    return url\n",
    ]
    for t in texts:
        ast.parse(t)
    assert mod.functions("def broken(:\n") == []

    documented = ('class C:\n    def a(self):\n        """Doc\n        more."""\n        return 1\n\n'
                  '    def b(self):\n        "only a docstring"\n\n'
                  'def c(x): "same line"; return x\n\n'
                  'def d(y):\n    r"""raw"""\n    def inner():\n        """kept"""\n    return inner\n')
    assert mod.functions(documented, strip_docstrings=True) == [
        "def a(self):\n    return 1\n",
        'def c(x): "same line"; return x\n',
        'def d(y):\n    def inner():\n        """kept"""\n    return inner\n',
    ]
    assert len(mod.functions(documented)) == 4


def test_demo_data_script_refuses_a_missing_stdlib(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_demo_data.py")
    r = subprocess.run([sys.executable, script, str(tmp_path / "out.jsonl"), "--stdlib", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"--stdlib {tmp_path / 'nope'}: not a directory" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_demo_data_script_writes_functions_without_docstrings(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "make_demo_data.py")
    lib = tmp_path / "lib"
    (lib / "test").mkdir(parents=True)
    (lib / "mod.py").write_text('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x\n')
    (lib / "test" / "test_mod.py").write_text("def test_f():\n    assert True\n")
    out = tmp_path / "out.jsonl"
    for flags, texts in (([], ['"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x\n', 'def f(x):\n    """Doc."""\n    return x\n']),
                         (["--strip-docstrings", "--functions-only"], ["def f(x):\n    return x\n"])):
        r = subprocess.run([sys.executable, script, str(out), "--stdlib", str(lib), *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [rec["text"] for rec in records] == texts
        assert {rec["name"] for rec in records} == {str(lib / "mod.py")}
