"""Both tokenizers against transformers' CodeGen tokenizer on the real CodeGen files in ../shared."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sysconfig
import tokenize

import pytest
import torch

from codegen import CodeGenTokenizer, CodeGenTokenizerFast, TokenizerFileError
from codegen.tokenizer import truncate_before_pattern
from helpers import TOKENIZER_DIR

pytestmark = pytest.mark.skipif(not os.path.isdir(TOKENIZER_DIR), reason=f"CodeGen tokenizer files not found at {TOKENIZER_DIR}")
CLASSES = [CodeGenTokenizer, CodeGenTokenizerFast]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module", params=CLASSES, ids=lambda c: c.__name__)
def tok(request):
    return request.param.from_pretrained(TOKENIZER_DIR)


def stdlib_texts() -> list[tuple[str, str]]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for f in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        if "site-packages" in f:
            continue
        try:
            with tokenize.open(f) as fh:  # honours coding cookies
                out.append((f, fh.read()))
        except (SyntaxError, UnicodeDecodeError, LookupError):
            continue  # the few deliberately broken test files
    return out


def handwritten_texts() -> list[str]:
    texts = [
        "def f(x):\r\n    return x\r\n", "a\rb\r\rc", "line\n\n\n\nend", "\t\tif x:\n\t\t\treturn y\n",
        "mixed \t \t  tabs\t \n", "x = 'it''s'  # don't\n", "ünïcödé_ïdéntifier = 1\nπ = 3.14\n变量 = '值'\n",
        "emoji = '🐍🚀' + '👩‍💻'\n", "ctrl \x00\x01\x07\x1b[0m\x7f end", "<|endoftext|>", "a<|endoftext|>b  <|endoftext|>\n",
        "<|endoftext|><|endoftext|>", "<|endof", "   \n   \n", " ", "", "\n", "\u00a0nbsp\u2003em\u3000ideo",
        "s = \"\"\"doc\n    string\n\"\"\"\n", "1234567890 12.5e-3 0x1F", "a . b , c ' d n't 's", "\ufeffbom",
    ]
    texts += [" " * n + "x" for n in range(1, 201)] + ["x" + " " * n for n in range(1, 201)]
    texts += ["\t" * n + "y" for n in range(1, 51)] + ["y" + "\t" * n + "z" for n in range(1, 51)]
    texts += [" \t" * n for n in range(1, 20)]
    return texts


def test_sizes(tok):
    assert len(tok) == 50295 and tok.vocab_size == 50257
    assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>" and tok.eos_token_id == 50256
    assert tok.pad_token is None and tok.pad_token_id is None


REFERENCE_IDS = {
    "    return x": [50284, 7783, 2124],
    "def f(x):\n    return x\n": [4299, 277, 7, 87, 2599, 198, 50284, 7783, 2124, 198],
    "\tif x:\n\t\treturn 1": [197, 361, 2124, 25, 198, 50294, 7783, 352],
    "a  b": [64, 50286, 65],
    "x   ": [87, 50285],
    " x": [2124],
    " " * 32 + "x": [50257, 2124],
    " " * 40 + "x": [50257, 50279, 87],
    "\n\n\n": [628, 198],
    "a\r\nb": [64, 201, 198, 65],
    "Hello world": [15496, 995],
    " Hello world": [18435, 995],
    "def hello_world():": [4299, 23748, 62, 6894, 33529],
    "def hellow_world():": [4299, 5968, 322, 62, 6894, 33529],
    "def greet(name):": [4299, 12589, 7, 3672, 2599],
    "The quick brown fox jumps over the lazy dog.": [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    "\nif len_a > len_b:\n    result = a\nelse:\n    result = b\n\n\n\n#":
        [198, 361, 18896, 62, 64, 1875, 18896, 62, 65, 25, 198, 50284, 20274, 796, 257, 198, 17772, 25, 198, 50284,
         20274, 796, 275, 628, 198, 198, 2],
}


@pytest.mark.parametrize("text", sorted(REFERENCE_IDS))
def test_reference_ids(tok, text):
    assert tok.encode(text) == REFERENCE_IDS[text]
    assert tok.decode(REFERENCE_IDS[text]) == text


def test_transformers_integration_sentences(tok):
    s1 = ("Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides general-purpose "
          "architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural Language Understanding (NLU) and "
          "Natural Language Generation (NLG) with over 32+ pretrained models in 100+ languages and deep interoperability "
          "between Jax, PyTorch and TensorFlow.")
    s2 = ("BERT is designed to pre-train deep bidirectional representations from unlabeled text by jointly conditioning "
          "on both left and right context in all layers.")
    enc = tok([s1, s2], return_token_type_ids=True)
    a, b = enc["input_ids"]
    assert len(a) == 94 and a[:10] == [41762, 364, 357, 36234, 1900, 355, 12972, 13165, 354, 12] and a[-4:] == [309, 22854, 37535, 13]
    assert len(b) == 31 and b[:6] == [13246, 51, 318, 3562, 284, 662]
    assert enc["token_type_ids"] == [[0] * 94, [0] * 31] and enc["attention_mask"] == [[1] * 94, [1] * 31]


def test_stdlib_corpus_matches_transformers(hf):
    """Every .py file of this machine's standard library: identical ids in all three, exact round trip."""
    files = stdlib_texts()
    assert len(files) > 500
    texts = [t for _, t in files]
    ref = hf(texts)["input_ids"]
    for cls in CLASSES:
        ours = cls.from_pretrained(TOKENIZER_DIR)
        got = ours(texts)["input_ids"]
        bad = [files[i][0] for i in range(len(texts)) if got[i] != ref[i]]
        assert not bad, f"{cls.__name__} differs on {len(bad)} files, e.g. {bad[:3]}"
        assert [ours.encode(t) for t in texts[:200]] == ref[:200]  # the single-text path too
        assert all(ours.decode(ids) == t for ids, t in zip(got, texts))


def test_handwritten_texts_match_transformers(tok, hf):
    for text in handwritten_texts():
        ids = tok.encode(text)
        assert ids == hf(text)["input_ids"], repr(text)
        assert tok.decode(ids) == text, repr(text)
        assert tok.convert_tokens_to_ids(tok.tokenize(text)) == ids
    batch = handwritten_texts()
    assert tok(batch)["input_ids"] == hf(batch)["input_ids"]


def test_decode_matches_transformers(tok, hf):
    ids = [15496, 995, 50256, 50284, 7783, 50256, 50286, 65]
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert tok.decode([15496, 995, 50256, 50256]) == "Hello world<|endoftext|><|endoftext|>"
    assert tok.decode(torch.tensor([15496, 995, 50256]), skip_special_tokens=True) == "Hello world"
    assert tok.batch_decode(torch.tensor([[15496, 995], [4299, 277]])) == ["Hello world", "def f"]
    # Code is decoded verbatim: no clean-up of " ." or " ," unless asked for.
    code = "a . b , c ' d"
    assert tok.decode(tok.encode(code)) == code
    assert tok.decode(tok.encode(code), clean_up_tokenization_spaces=True) == "a. b, c'd"


def test_truncate_before_pattern(tok):
    text = "\nif len_a > len_b:\n    result = a\nelse:\n    result = b\n\n\n\n#"
    patterns = ["^#", re.escape("<|endoftext|>"), "^'''", '^"""', "\n\n\n"]
    want = "\nif len_a > len_b:\n    result = a\nelse:\n    result = b"
    assert tok.decode(tok.encode(text), truncate_before_pattern=patterns) == want
    assert truncate_before_pattern(text, patterns) == want
    two_defs = "def a():\n    pass\ndef b():\n    pass\n"
    assert truncate_before_pattern(two_defs, ["^zzz"]) == "def a():\n    pass\n"
    two_prints = "print(1)\nx = 2\nprint(2)\n"
    assert truncate_before_pattern(two_prints, ["^zzz"]) == "print(1)\nx = 2\n"
    assert truncate_before_pattern(two_prints, []) == two_prints
    assert truncate_before_pattern("x = 1\n# end\n\n\nmore", [r"\n\n^#", "^'''", "\n\n\n"]) == "x = 1\n# end"


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_matches_transformers(tok, hf, side):
    texts = ["def f(x):\n    return x", "x = 1", "    # indented comment\n\tpass"]
    tok.pad_token, hf.pad_token = tok.eos_token, hf.eos_token
    try:
        for kwargs in (dict(padding=True), dict(padding="longest"), dict(padding="max_length", max_length=16),
                       dict(padding=True, truncation=True, max_length=5), dict(padding=True, pad_to_multiple_of=8)):
            ours = tok(texts, return_tensors="pt", padding_side=side, **kwargs)
            ref = hf(texts, return_tensors="pt", padding_side=side, **kwargs)
            assert set(ours) == {"input_ids", "attention_mask"}
            assert torch.equal(ours["input_ids"], ref["input_ids"]) and torch.equal(ours.attention_mask, ref["attention_mask"]), kwargs
        single = tok("x = 1", return_tensors="pt")
        assert single["input_ids"].shape == (1, 3) and tok("x = 1", return_tensors="np")["input_ids"].shape == (1, 3)
    finally:
        tok.pad_token, hf.pad_token = None, None


def test_padding_side_attribute_and_pairs(tok, hf):
    t = type(tok).from_pretrained(TOKENIZER_DIR, padding_side="left", pad_token="<|endoftext|>")
    assert t.padding_side == "left" and t.pad_token_id == 50256
    enc = t(["a", "b c d"], padding=True)
    assert enc["input_ids"][0][:2] == [50256, 50256] and enc["attention_mask"][0] == [0, 0, 1]
    pair = t("ab", "cd", return_token_type_ids=True)
    ref = hf("ab", "cd", return_token_type_ids=True)
    assert pair["input_ids"] == ref["input_ids"] == [397, 10210]
    assert pair["token_type_ids"] == ref["token_type_ids"]


def test_padding_without_pad_token_is_an_error(tok):
    with pytest.raises(ValueError, match="Asking to pad but the tokenizer has no padding token"):
        tok(["a", "bb"], padding=True)
    with pytest.raises(ValueError, match="padding=True to return tensors"):
        tok(["a", "b c"], return_tensors="pt")


def test_new_pad_token_and_bos(tok):
    t = type(tok).from_pretrained(TOKENIZER_DIR, pad_token="<pad>", add_bos_token=True)
    assert t.pad_token_id == 50295 and len(t) == 50296 and t.all_special_ids == [50256, 50295]
    assert t.encode("hi") == [50256, 5303]
    assert t.encode("a<pad>b") == [50256, 64, 50295, 65]
    assert t.decode(t.encode("a<pad>b"), skip_special_tokens=True) == "ab"
    enc = t(["hi", "hi there"], padding=True)
    assert enc["input_ids"][0] == [50256, 5303, 50295]


def test_toy_vocabulary_from_transformers_tests(tmp_path):
    vocab = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "\u0120", "\u0120l", "\u0120n", "\u0120lo", "\u0120low", "er",
             "\u0120lowest", "\u0120newer", "\u0120wider", "<unk>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n\u0120 l\n\u0120l o\n\u0120lo w\ne r\n")
    for cls in CLASSES:
        t = cls(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), unk_token="<unk>")
        tokens = t.tokenize("lower newer", add_prefix_space=True)
        assert tokens == ["\u0120low", "er", "\u0120", "n", "e", "w", "er"]
        assert t.convert_tokens_to_ids(tokens + ["<unk>"]) == [14, 15, 10, 9, 3, 2, 15, 19]
        assert t.convert_tokens_to_ids("not-a-token") == 19


def test_save_pretrained_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    t = type(tok).from_pretrained(TOKENIZER_DIR, pad_token="<|endoftext|>", padding_side="left")
    files = t.save_pretrained(tmp_path)
    assert {os.path.basename(f) for f in files} == {"vocab.json", "merges.txt", "added_tokens.json",
                                                    "special_tokens_map.json", "tokenizer_config.json"}
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = handwritten_texts()[:40]
    assert ref(texts)["input_ids"] == t(texts)["input_ids"]
    assert len(ref) == 50295 and ref.pad_token == "<|endoftext|>" and ref.padding_side == "left"
    again = type(tok).from_pretrained(tmp_path)
    assert again(texts)["input_ids"] == t(texts)["input_ids"] and again.padding_side == "left"
    v, m = t.save_vocabulary(str(tmp_path / "v"), filename_prefix="pre")
    assert v.endswith("pre-vocab.json") and m.endswith("pre-merges.txt")
    assert json.loads(open(v, encoding="utf-8").read()) == t.encoder


def test_tokenizer_json_alone(tok, tmp_path):
    shutil.copy(os.path.join(TOKENIZER_DIR, "tokenizer.json"), tmp_path)
    t = type(tok).from_pretrained(tmp_path)
    assert len(t) == 50295 and t.encode("    return x") == [50284, 7783, 2124]


def test_incremental_decoder(tok):
    text = "def grüße():\n    return '🐍 → 变量'  # ✓\n<|endoftext|>"
    ids = tok.encode(text)
    dec = tok.incremental_decoder()
    deltas = [dec.add(i) for i in ids] + [dec.flush()]
    assert "".join(deltas) == text == dec.text
    assert all("\ufffd" not in d for d in deltas)  # never half a character
    assert any(d == "" for d in deltas)  # the emoji's bytes span tokens
    # a cut-off character at the end is flushed as U+FFFD, as decode() does
    partial = tok.encode("🐍")[:1]
    dec = tok.incremental_decoder()
    assert dec.add(partial) == "" and dec.flush() == tok.decode(partial) == "\ufffd"
    skip = tok.incremental_decoder(skip_special_tokens=True)
    assert "".join(skip.add(i) for i in ids) == text.replace("<|endoftext|>", "")


def test_decode_out_of_vocabulary_ids(tok):
    with pytest.raises(ValueError, match=r"token id 50300 is outside the tokenizer's vocabulary \[0, 50295\)"):
        tok.decode([15496, 50300])
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        tok.decode([-1])
    with pytest.raises(ValueError, match=r"token id 51199 is outside"):
        tok.convert_ids_to_tokens([51199])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_missing_or_corrupt_files(cls, tmp_path):
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(TOKENIZER_DIR, name), tmp_path)
    os.remove(tmp_path / "merges.txt")
    with pytest.raises(TokenizerFileError, match=r"merges.txt is missing"):
        cls.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nthis line is bad\n")
    with pytest.raises(TokenizerFileError, match=r"merges.txt, line 3: expected two space-separated symbols"):
        cls.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nzzz qqq\n")
    with pytest.raises(TokenizerFileError, match=r"merges.txt: merge 2 \('zzz' 'qqq'\) makes 'zzzqqq', which is not in the vocabulary"):
        cls.from_pretrained(tmp_path)
    shutil.copy(os.path.join(TOKENIZER_DIR, "merges.txt"), tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": ')
    with pytest.raises(TokenizerFileError, match=r"vocab.json: not valid JSON"):
        cls.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_text('["a", "b"]')
    with pytest.raises(TokenizerFileError, match=r"vocab.json: expected a JSON object mapping token strings to integer ids"):
        cls.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer files found"):
        cls.from_pretrained(tmp_path / "..")
    with pytest.raises(FileNotFoundError, match="no such tokenizer directory"):
        cls.from_pretrained(tmp_path / "nope")
    with pytest.raises(TypeError, match="text must be a string or a list of strings, got int"):
        cls.from_pretrained(TOKENIZER_DIR)([1, 2])


def test_token_bytes_maps_every_byte_and_names_a_char_outside_the_table():
    from codegen.tokenizer.files import bytes_to_unicode, token_bytes

    table = bytes_to_unicode()
    assert token_bytes("".join(table[b] for b in range(256))) == bytes(range(256))
    assert token_bytes("Ġhello") == b" hello" and token_bytes("") == b""
    for bad, char in (("a b", " "), ("x\x7f", "\x7f"), ("Ġ\u4e2d", "\u4e2d"), ("\u0100\x00", "\x00")):
        with pytest.raises(KeyError) as e:
            token_bytes(bad)
        assert e.value.args == (char,)
