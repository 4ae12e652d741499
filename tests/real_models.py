"""Tiny random-weight Llama, Mistral, Qwen2 and Qwen3 models built locally with transformers.

No download: a byte-level BPE of ~300 tokens is trained with ``tokenizers`` on a few KB of Tiny
Shakespeare, saved as tokenizer.json with special tokens, a BOS-adding post-processor and a
ChatML-style chat template; the model is the family's ``*ForCausalLM`` from a config with odd
shapes, its weights randomised (biases and norm weights too, so no permutation hides behind a
zero or a one), saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import TINY_SHAKESPEARE

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: each family with the features that make it itself, at tiny odd shapes
FAMILIES: dict[str, dict] = {
    # Llama 3.2-like: llama3 rope scaling, GQA, head_dim != hidden / heads, untied head, biases
    "llama": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        intermediate_size=96, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    # SmolLM2-like: tied, MHA, plain rope
    "llama_tied": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
        tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
    ),
    "mistral": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        intermediate_size=80, sliding_window=None, tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope_theta=1000000.0,
    ),
    # Qwen2.5-like: q/k/v biases, GQA, tied
    "qwen2": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=112,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0,
    ),
    # Qwen3-like: q/k norms, head_dim != hidden / heads, MQA, untied
    "qwen3": dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        intermediate_size=96, tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope_theta=1000000.0,
    ),
}  # fmt: skip
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def build_tokenizer(out: Path, bos: bool = True, vocab_size: int = 300) -> int:
    """A byte-level BPE tokenizer.json (+ tokenizer_config.json); returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:6000]
    tok.train_from_iterator([text], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))],
        )  # fmt: skip
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 1024,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return tok.get_vocab_size()


def build_model(out: Path, family: str, seed: int = 0, num_layers: int = 2, **overrides) -> Path:
    """A random-weight ``family`` model with its tokenizer, saved to ``out`` (float32)."""
    import torch
    import transformers

    n = build_tokenizer(out)
    bos, eos = SPECIALS.index("<|begin_of_text|>"), SPECIALS.index("<|im_end|>")
    cfg_name, model_name = CLASSES[family]
    kwargs = {**FAMILIES[family], **overrides}
    config = getattr(transformers, cfg_name)(
        vocab_size=n + 12, num_hidden_layers=num_layers, max_position_embeddings=64,
        bos_token_id=bos, eos_token_id=[eos, SPECIALS.index("<|end_of_text|>")], **kwargs,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).float().eval()
    with torch.no_grad():  # every weight random and O(1/sqrt(fan_in)): no zero biases, no 1-norms
        for name, p in model.named_parameters():
            scale = 0.3 if p.dim() == 1 else 1.0 / p.shape[-1] ** 0.5
            p.copy_(torch.randn_like(p) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(out)
    gen = {"bos_token_id": bos, "eos_token_id": [eos, SPECIALS.index("<|end_of_text|>")]}
    (out / "generation_config.json").write_text(json.dumps(gen), encoding="utf-8")
    return out


def hf_logits(hfdir: Path, ids: list[int]):
    """transformers' fp32 logits for ``ids`` (T, vocab) as numpy."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hfdir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()
