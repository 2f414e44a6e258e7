"""CodeGen tokenizers: `CodeGenTokenizer` (pure Python) and `CodeGenTokenizerFast` (tiktoken), same ids."""

from .base import BatchEncoding, IncrementalDecoder, truncate_before_pattern
from .fast import CodeGenTokenizerFast
from .files import TokenizerFileError
from .slow import CodeGenTokenizer

__all__ = ["BatchEncoding", "CodeGenTokenizer", "CodeGenTokenizerFast", "IncrementalDecoder", "TokenizerFileError",
           "truncate_before_pattern"]
