"""Evaluation: HumanEval pass@k and the multi-turn MTPB benchmark, with generated code run only in
the sandbox (`codegen.eval.sandbox`)."""

from .passk import pass_at_k

__all__ = ["pass_at_k"]
