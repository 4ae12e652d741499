"""Tokenizers: the book's char and character-level BPE, and a byte-level BPE.

Public API (others code against these names):

* :class:`Tokenizer` and its kinds :class:`CharTokenizer`, :class:`BPETokenizer`,
  :class:`ByteBPETokenizer`;
* :func:`train_tokenizer`, :func:`tokenizer_from_dict`, :func:`load_tokenizer`,
  :func:`from_book_fields`;
* :func:`encode_file` (parallel, streaming corpus encoder).
"""

from mygpt.tokenizers.api import (
    KINDS,
    from_book_fields,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)
from mygpt.tokenizers.base import Tokenizer
from mygpt.tokenizers.bpe import BOOK_PATTERN, BPETokenizer
from mygpt.tokenizers.bytebpe import ENDOFTEXT, GPT4_PATTERN, ByteBPETokenizer
from mygpt.tokenizers.char import CharTokenizer
from mygpt.tokenizers.corpus import encode_file

__all__ = [
    "BOOK_PATTERN",
    "BPETokenizer",
    "ByteBPETokenizer",
    "CharTokenizer",
    "ENDOFTEXT",
    "GPT4_PATTERN",
    "KINDS",
    "Tokenizer",
    "encode_file",
    "from_book_fields",
    "load_tokenizer",
    "tokenizer_from_dict",
    "train_tokenizer",
]
