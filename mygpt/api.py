"""The Python API: load a checkpoint (native or book) on a backend and use it from a notebook.

>>> import mygpt
>>> m = mygpt.load("model.safetensors", backend="mlx")
>>> m.config.embed_dim, m.tokenizer.vocab_size
>>> logits = m.logits(m.encode("ROMEO:"))          # numpy in, numpy out: (T, vocab)
>>> print(m.generate("ROMEO:", max_new_tokens=100, temperature=0.8))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mygpt import model
from mygpt.backends import Ops, get_backend
from mygpt.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mygpt.config import ModelConfig
from mygpt.generate import generate, generate_steps
from mygpt.precision import resolve_precision


class Model:
    """A loaded model: config, tokenizer and weights on one backend."""

    def __init__(self, ckpt: Checkpoint, ops: Ops, dtype: str = "float32") -> None:
        from mygpt.tokenizers import tokenizer_from_dict

        self.checkpoint = ckpt
        self.config: ModelConfig = ckpt.config
        self.tokenizer = tokenizer_from_dict(ckpt.tokenizer)
        self.ops = ops
        self.dtype = dtype
        self.params = {k: ops.asarray(v) for k, v in ckpt.params.items()}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def logits(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits for token ids: (T,) -> (T, vocab) or (B, T) -> (B, T, vocab), as float32 numpy."""
        arr = np.asarray(ids, dtype=np.int64)
        batched = arr.ndim == 2
        self.ops.activate()
        x = self.ops.asarray(arr if batched else arr[None])
        with self.ops.inference():
            out = self.ops.to_numpy(
                model.forward(self.ops, self.config, self.params, x, dtype=self.dtype)
            )
        return out if batched else out[0]

    def stream(
        self, prompt: str | Sequence[int], max_new_tokens: int = 200, **kwargs
    ) -> Iterator[int]:
        """New token ids one at a time; kwargs as :func:`mygpt.generate.generate`."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.ops.activate()
        return generate(
            self.ops, self.config, self.params, ids, max_new_tokens, dtype=self.dtype, **kwargs
        )

    def steps(
        self, prompt: str | Sequence[int], max_new_tokens: int = 200, **kwargs
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(token id, the logits it was sampled from)`` one at a time: the exact cached path
        of :meth:`stream` (kwargs as :func:`mygpt.generate.generate_steps`)."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.ops.activate()
        return generate_steps(
            self.ops, self.config, self.params, ids, max_new_tokens, dtype=self.dtype, **kwargs
        )

    def generate(self, prompt: str, max_new_tokens: int = 200, **kwargs) -> str:
        """The prompt plus its continuation, as the book prints it."""
        return prompt + self.decode(list(self.stream(prompt, max_new_tokens, **kwargs)))

    def save(self, path: str | Path) -> None:
        """Save the weights as a native (safetensors) checkpoint."""
        params = {k: self.ops.to_numpy(v) for k, v in self.params.items()}
        save_checkpoint(path, self.config, params, self.tokenizer.to_dict())


def load(
    path: str | Path, backend: str = "auto", device: str = "auto", precision: str = "fp32"
) -> Model:
    """Load a native ``.safetensors`` or a book ``.ckpt`` checkpoint onto ``backend``/``device``."""
    ckpt = load_checkpoint(path)
    ops = get_backend(backend, device)
    dtype, _ = resolve_precision(ops, precision)
    return Model(ckpt, ops, dtype)
