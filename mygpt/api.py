"""The Python API: load a checkpoint (native or book) on a backend and use it from a notebook.

>>> import mygpt
>>> m = mygpt.load("model.safetensors", backend="mlx")  # or "Qwen/Qwen2.5-0.5B-Instruct"
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
from mygpt.backends.quant import QuantizedWeight
from mygpt.checkpoint import Checkpoint, save_checkpoint
from mygpt.config import ModelConfig
from mygpt.generate import generate, generate_steps, pads_to_batch
from mygpt.model import param_shapes
from mygpt.precision import resolve_precision
from mygpt.quant import QuantizedTensor


class Model:
    """A loaded model: config, tokenizer and weights on one backend."""

    def __init__(
        self, ckpt: Checkpoint, ops: Ops, dtype: str = "float32", consume: bool = False
    ) -> None:
        """``consume``: drop ``ckpt.params`` (numpy) once they are on the backend."""
        from mygpt.tokenizers import tokenizer_from_dict

        self.checkpoint = ckpt
        self.config: ModelConfig = ckpt.config
        self.tokenizer = tokenizer_from_dict(ckpt.tokenizer)
        self.ops = ops
        self.dtype = dtype
        # a rotary model computing in bf16 holds its weights in bf16 (half the memory of an fp32
        # copy; the forward pass casts every weight to bf16 anyway, so the logits are the same)
        held = "bfloat16" if dtype == "bfloat16" and self.config.position == "rope" else None
        rows = self._one_row_weights()
        self.params = {}
        for k in list(ckpt.params):
            # consume: each host copy goes as it moves, so a 0.5B model is in memory once
            v = ckpt.params.pop(k) if consume else ckpt.params[k]
            if isinstance(v, QuantizedTensor):  # kept in its blocks on the backend (mygpt.quant)
                self.params[k] = ops.quantized(v)
            elif k in rows:
                self.params[k] = ops.asarray_for_one_row(np.asarray(v, dtype=np.float32))
            else:
                self.params[k] = ops.asarray(v, held)
        stop = getattr(self.tokenizer, "stop_ids", None)
        #: token ids generation ends at (a real model's EOS ids; none for mygpt's tokenizers)
        self.stop_ids: list[int] = stop() if stop else []

    def _one_row_weights(self) -> set[str]:
        """The matmul weights to hold as the backend multiplies one row by them fastest: every
        one (the tied embedding too, as it is the head) of an fp32 model that decodes alone
        (``generate.pads_to_batch`` is False: a real model's long context), whose every path,
        ``generate``, serve's round-robin, eval, then computes with that one layout. A model
        that pads to the batch keeps the layout its book logits were computed with."""
        cfg = self.config
        if self.dtype != "float32" or pads_to_batch(cfg, self.dtype):
            return set()
        shapes = param_shapes(cfg)
        return {k for k, shape in shapes.items() if len(shape) == 2 and k.endswith(".weight")
                and (k != "token_embedding.embedding.weight" or cfg.tie_embeddings)
                and k != "position_embedding.weight"}  # fmt: skip

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens=False`` for text that already spells them
        (a rendered chat template), as transformers' ``apply_chat_template`` encodes it."""
        if not add_special_tokens and self.tokenizer.kind == "hf":
            return self.tokenizer.encode(text, add_special_tokens=False)
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
        kwargs.setdefault("stop_ids", self.stop_ids)
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
        """Save the weights as a native (safetensors) checkpoint (a quantized model's blocks as
        they were loaded)."""
        params = {
            k: v.to_record() if isinstance(v, QuantizedWeight) else self.ops.to_numpy(v)
            for k, v in self.params.items()
        }
        save_checkpoint(path, self.config, params, self.tokenizer.to_dict())
        # (bf16-held weights widen to fp32 exactly)


def load(
    path: str | Path, backend: str = "auto", device: str = "auto", precision: str = "fp32"
) -> Model:
    """Load a model onto ``backend``/``device``: a native ``.safetensors`` or book ``.ckpt``
    checkpoint, a Hugging Face model directory, or a Hub id (``Qwen/Qwen2.5-0.5B-Instruct``)."""
    from mygpt.interop.sources import load_source

    ckpt = load_source(path)
    ops = get_backend(backend, device)
    dtype, _ = resolve_precision(ops, precision)
    return Model(ckpt, ops, dtype, consume=True)
