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

import numpy as np

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


def build_tokenizer(
    out: Path, bos: bool = True, vocab_size: int = 300, specials: list[str] = SPECIALS,
    bos_token: str = "<|begin_of_text|>",
) -> int:  # fmt: skip
    """A byte-level BPE tokenizer.json (GPT-2's pre-tokenizer) (+ tokenizer_config.json);
    returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")[:6000]
    tok.train_from_iterator([text], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, tok.token_to_id(bos_token))],
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


def check_chat_template(hfdir: Path, template_text: str, chat: list[tuple[str, str]]):
    """mygpt's chat template of the model at ``hfdir`` is ``template_text`` and renders ``chat``
    (with and without the generation prompt) and its prompt ids as transformers'
    ``apply_chat_template`` does. Returns (mygpt's template, transformers' tokenizer, the text
    rendered without the generation prompt) for a test's own checks."""
    from transformers import AutoTokenizer

    import mygpt
    from mygpt.serve.chat_template import JinjaChatTemplate, template_for

    m = mygpt.load(hfdir, backend="torch", device="cpu")
    theirs = AutoTokenizer.from_pretrained(hfdir)
    template = template_for(None, m.tokenizer)
    assert isinstance(template, JinjaChatTemplate) and template.template == template_text
    messages = [{"role": r, "content": c} for r, c in chat]
    for gen in (True, False):
        text = template.render(messages, add_generation_prompt=gen)
        assert text == theirs.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=gen)  # fmt: skip
    ids = m.encode(template.prompt(chat), add_special_tokens=False)
    want = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert ids == list(want["input_ids"] if hasattr(want, "keys") else want)
    return template, theirs, text


def check_refused_by_name(hfdir: Path, edit: dict, feature: str, tmp_path: Path, capsys) -> None:
    """A copy of the model at ``hfdir`` with ``edit`` in its config.json: ``mygpt generate``
    refuses it in one ``error:`` line that names ``feature``."""
    import shutil

    from mygpt.cli import main

    d = tmp_path / "m"
    shutil.copytree(hfdir, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **edit}))
    assert main(["generate", "--checkpoint", str(d), "--max-new-tokens", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and feature in err[0], err


def mlx_lm_logits_of_export(hfdir: Path, tmp_path: Path, name: str, ids: list[int]):
    """The model at ``hfdir`` imported, saved and exported by mygpt, then run by mlx-lm: its
    logits for ``ids`` (T, vocab) as numpy, and the export's directory."""
    import mlx.core as mx
    import mlx_lm

    from mygpt.checkpoint import save_checkpoint
    from mygpt.interop.export import export_hf
    from mygpt.interop.import_ import import_hf

    first = import_hf(hfdir)
    ckpt = tmp_path / f"{name}.safetensors"
    save_checkpoint(ckpt, first.config, first.params, first.tokenizer)
    out = export_hf(ckpt, tmp_path / name)
    model, _ = mlx_lm.load(str(out))
    return np.array(model(mx.array([ids])).astype(mx.float32))[0], out


def hf_logits(hfdir: Path, ids: list[int]):
    """transformers' fp32 logits for ``ids`` (T, vocab) as numpy."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hfdir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


# --- GPT-2, Gemma 3, Mistral with a window, Phi-3, OLMo 2 (issue 31) ----------------------------

#: Gemma 2's chat template (Gemma 3's own adds image handling): no system role, roles alternate
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
GPT2_SPECIALS = ["<|endoftext|>"]
WINDOW = 8  # small, so ~24 generated tokens pass it three times

#: (config class, model class, config kwargs): each family's own features at tiny odd shapes
NEW_FAMILIES: dict[str, tuple[str, str, dict]] = {
    # GPT-2 itself: the tanh GELU, q/k/v and output biases, Conv1D weights
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        n_embd=64, n_head=4, n_layer=2, n_positions=64, activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
    )),
    # Gemma 3: sliding and full layers with a rope each (linear scaling on the full ones),
    # query_pre_attn_scalar != head_dim, GQA, head_dim != hidden / heads
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        intermediate_size=96, num_hidden_layers=4, query_pre_attn_scalar=20, sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0,
    )),
    # Mistral 7B v0.1's shape of attention: a window shorter than the context, on every layer
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
        intermediate_size=80, num_hidden_layers=2, sliding_window=WINDOW, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_theta=1e6,
    )),
    # Phi-3-mini-like: fused qkv_proj and gate_up_proj, a window (2047 of 4096 in the real one)
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        num_hidden_layers=2, sliding_window=12, rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=None,
    )),
    # OLMo 2: norms after each sublayer only, q/k norms over all heads
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=5e5,
        pad_token_id=None,
    )),
}  # fmt: skip


def build_family_tokenizer(out: Path, family: str) -> tuple[int, int, int]:
    """The family's kind of tokenizer: GPT-2's byte-level BPE (no BOS), Gemma's specials and chat
    template, else the ChatML one above; returns (vocabulary size, bos id, eos id)."""
    from tokenizers import Tokenizer

    if family not in ("gpt2", "gemma3_text"):
        n = build_tokenizer(out)
        return n, SPECIALS.index("<|begin_of_text|>"), SPECIALS.index("<|im_end|>")
    gemma = family == "gemma3_text"
    specials = GEMMA_SPECIALS if gemma else GPT2_SPECIALS
    n = build_tokenizer(out, bos=gemma, specials=specials, bos_token=specials[-3 if gemma else 0])
    bos, eos = (2, 4) if gemma else (0, 0)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials[bos],
        "eos_token": specials[eos] if gemma else specials[0],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
    }
    if gemma:
        config["chat_template"] = GEMMA_TEMPLATE
        config["pad_token"] = "<pad>"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == n
    return n, bos, eos


def build_family(out: Path, family: str, seed: int = 0, **overrides) -> Path:
    """A random-weight model of one of :data:`NEW_FAMILIES` with its tokenizer (float32)."""
    import torch
    import transformers

    n, bos, eos = build_family_tokenizer(out, family)
    cfg_name, model_name, kwargs = NEW_FAMILIES[family]
    kwargs = {**kwargs, **overrides}
    if family != "gpt2":
        kwargs.setdefault("max_position_embeddings", 64)
    config = getattr(transformers, cfg_name)(
        vocab_size=n + 12, bos_token_id=bos, eos_token_id=eos, **kwargs
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).float().eval()
    with torch.no_grad():  # every weight random and O(1/sqrt(fan_in)): no zero biases, no 1-norms
        for name, p in model.named_parameters():
            fan_in = p.shape[0] if ".c_" in name and p.dim() == 2 else p.shape[-1]  # Conv1D
            scale = 0.3 if p.dim() == 1 else 1.0 / fan_in**0.5
            norm = name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
            p.copy_(torch.randn_like(p) * scale + (1.0 if norm else 0.0))
    model.save_pretrained(out)
    gen = {"bos_token_id": bos, "eos_token_id": eos}
    (out / "generation_config.json").write_text(json.dumps(gen), encoding="utf-8")
    return out


def hf_model(hfdir: Path, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        hfdir, dtype=torch.float32, attn_implementation=attn
    ).eval()
