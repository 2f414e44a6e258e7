"""The bundled demo model: a small CodeGen-architecture model trained by this project on the CPython
standard library (see MODEL_CARD.md here), with CodeGen's tokenizer files built from openai-whisper's
GPT-2 table (scripts/make_tokenizer.py). It is for trying the tool offline, not for real work."""

from __future__ import annotations

import os

DEMO_DIR = os.path.dirname(os.path.abspath(__file__))


def demo_path() -> str:
    """The demo checkpoint directory; an error that says what to do when its weights are missing."""
    if not os.path.isfile(os.path.join(DEMO_DIR, "model.safetensors")):
        raise FileNotFoundError(
            f"no --model given and the bundled demo model is missing from {DEMO_DIR}; pass --model DIR "
            "(a Salesforce/codegen-* checkpoint directory)"
        )
    return DEMO_DIR
