"""Fill-in-the-middle (CodeGen2): complete at a cursor with the code after it known.

The prompt is CodeGen2's (its model card): `prefix <mask_1> suffix <|endoftext|> <sep> <mask_1>`, the
sentinels inserted as ids. The prefix and suffix are encoded as the text they are: sentinels or
`<|endoftext|>` written in the user's code are plain text there (only the whitespace-run tokens keep
their ids), so code that mentions `<eom>` cannot end its own prompt early. The model then writes the
middle and ends it with `<eom>`, which is a stop token, so the completion's text is the middle alone.
A tokenizer without these tokens (CodeGen-1's) cannot fill in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass

MASK, SEP, EOM = "<mask_1>", "<sep>", "<eom>"


@dataclass(frozen=True)
class FimTokens:
    mask: int
    sep: int
    eom: int
    eos: int


def fim_tokens(tokenizer) -> FimTokens | None:
    """The sentinel ids of a CodeGen2 tokenizer, or None for one that has not got them."""
    vocab = tokenizer.get_vocab()
    if any(t not in vocab for t in (MASK, SEP, EOM)) or tokenizer.eos_token_id is None:
        return None
    return FimTokens(vocab[MASK], vocab[SEP], vocab[EOM], tokenizer.eos_token_id)


def require_fim(tokenizer) -> FimTokens:
    ids = fim_tokens(tokenizer)
    if ids is None:
        raise ValueError(f"this model's tokenizer has no {MASK}, {SEP} and {EOM} tokens: only CodeGen2 models can fill "
                         f"in the middle (CodeGen-1 models cannot)")
    return ids


def fim_prompt(tokenizer, prefix: str, suffix: str) -> list[int]:
    """Token ids of the fill-in-the-middle prompt for the code before and after the cursor."""
    t = require_fim(tokenizer)
    literal = [tok for tok in [*tokenizer.get_added_vocab(), *tokenizer.all_special_tokens] if tok.strip()]
    return (tokenizer.encode_literal(prefix, literal) + [t.mask] + tokenizer.encode_literal(suffix, literal)
            + [t.eos, t.sep, t.mask])


def stop_ids(tokenizer) -> tuple[int, ...]:
    """What ends a middle: <eom>, and EOS."""
    t = require_fim(tokenizer)
    return (t.eom, t.eos)
