"""Checkpoints: book fixtures load, native and book formats round-trip bit for bit, every bad file
gives a one-line MygptError, and SIGKILL during a save never leaves a broken file."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mygpt.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    convert,
    expected_param_shapes,
    load_checkpoint,
    save_book_checkpoint,
    save_checkpoint,
)
from mygpt.config import ModelConfig
from mygpt.errors import MygptError
from mygpt.tokenizers.bpe import BOOK_PATTERN

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BOOK = SHARED / "fixtures" / "book"
FIXTURES = ("part1_ch18", "ch27_modern", "ch28_bpe")
BUFFER_SUFFIXES = (".mha.causal_mask", ".mha.rope_cos", ".mha.rope_sin")


def fixture_path(name: str) -> Path:
    path = BOOK / f"{name}.ckpt"
    if not path.exists():
        pytest.skip(f"book fixture {path} not available")
    return path


def torch_raw(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def bits(a) -> np.ndarray:
    """A uint view, so equality is bit equality (NaN payloads, -0.0 included)."""
    a = np.ascontiguousarray(a.numpy() if hasattr(a, "numpy") else a)
    return a.view(f"u{a.dtype.itemsize}")


def assert_one_line_error(excinfo, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert " — " in msg, f"no fix given in: {msg}"
    for frag in fragments:
        assert frag.lower() in msg.lower(), f"{frag!r} not in: {msg}"


def random_native(seed: int = 0, **cfg_kwargs):
    cfg = ModelConfig(**{"vocab_size": 11, "embed_dim": 16, "num_heads": 4, "num_layers": 2,
                         "max_seq_len": 8, **cfg_kwargs})  # fmt: skip
    rng = np.random.default_rng(seed)
    params = {
        k: rng.standard_normal(s).astype(np.float32) for k, s in expected_param_shapes(cfg).items()
    }
    return cfg, params


CHAR_TOK = {"kind": "char", "version": 1, "chars": list("abcdéfg\n ✓X")}


# ---------------------------------------------------------------------------------------------
# Book fixtures


def test_part1_fixture_loads_with_part1_defaults():
    ckpt = load_checkpoint(fixture_path("part1_ch18"))
    assert ckpt.format == "book"
    assert ckpt.train_state is None and ckpt.optimizer_state == {}
    cfg = ckpt.config
    assert (cfg.vocab_size, cfg.embed_dim, cfg.num_heads, cfg.num_layers, cfg.max_seq_len) == (
        65,
        64,
        4,
        4,
        64,
    )
    assert (cfg.norm, cfg.position, cfg.num_kv_heads) == ("layer", "learned", 4)
    assert ckpt.tokenizer["kind"] == "char" and ckpt.tokenizer["version"] == 1
    assert len(ckpt.tokenizer["chars"]) == 65 and ckpt.tokenizer["chars"][:2] == ["\n", " "]
    assert ckpt.params["position_embedding.weight"].shape == (64, 64)
    assert ckpt.params["blocks.3.ln2.bias"].shape == (64,)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_params_are_state_dict_minus_buffers(name):
    path = fixture_path(name)
    ckpt = load_checkpoint(path)
    sd = torch_raw(path)["model_state_dict"]
    weights = {k: v for k, v in sd.items() if not k.endswith(BUFFER_SUFFIXES)}
    assert list(ckpt.params) == list(weights)  # canonical order = the book's order
    assert {k: v.shape for k, v in ckpt.params.items()} == expected_param_shapes(ckpt.config)
    for k, v in weights.items():
        assert ckpt.params[k].dtype == np.float32
        np.testing.assert_array_equal(bits(ckpt.params[k]), bits(v))
    assert not any(k.endswith(BUFFER_SUFFIXES) for k in ckpt.params)


def test_modern_fixtures_configs_and_tokenizers():
    modern = load_checkpoint(fixture_path("ch27_modern"))
    c = modern.config
    assert (c.norm, c.position, c.num_kv_heads, c.num_heads) == ("rms", "rope", 2, 4)
    assert "position_embedding.weight" not in modern.params
    assert "ln_f.bias" not in modern.params
    assert modern.params["blocks.0.mha.W_K.weight"].shape == (32, 64)
    assert modern.tokenizer == {
        "kind": "char",
        "version": 1,
        "chars": torch_raw(fixture_path("ch27_modern"))["tokenizer_chars"],
    }

    bpe = load_checkpoint(fixture_path("ch28_bpe"))
    c = bpe.config
    assert (c.vocab_size, c.embed_dim, c.num_heads, c.num_kv_heads, c.num_layers) == (
        190,
        48,
        6,
        2,
        2,
    )
    assert c.max_seq_len == 96
    tok = bpe.tokenizer
    assert tok["kind"] == "bpe" and tok["version"] == 1 and tok["pattern"] == BOOK_PATTERN
    assert BOOK_PATTERN == "\\s*\\S+|\\s+"
    assert len(tok["chars"]) == 62 and len(tok["merges"]) == 128
    assert tok["merges"][:3] == [[" ", "t"], ["h", "e"], ["o", "u"]]
    assert len(tok["chars"]) + len(tok["merges"]) == c.vocab_size
    json.dumps(tok)  # JSON-able, as the tokenizer package stores it


def test_rope_and_mask_buffers_regenerate_bit_exactly():
    from mygpt.backends.torch_io import book_rope_tables

    for name in ("ch27_modern", "ch28_bpe"):
        sd = torch_raw(fixture_path(name))["model_state_dict"]
        cos, sin = sd["blocks.0.mha.rope_cos"], sd["blocks.0.mha.rope_sin"]
        t, half = cos.shape
        my_cos, my_sin = book_rope_tables(t, 2 * half)
        assert my_cos.dtype == np.float32
        np.testing.assert_array_equal(bits(my_cos), bits(cos))
        np.testing.assert_array_equal(bits(my_sin), bits(sin))


# ---------------------------------------------------------------------------------------------
# Native format


def test_native_round_trip_is_bit_exact(tmp_path):
    cfg, params = random_native(1, num_kv_heads=2, norm="rms", position="rope")
    params["ln_f.weight"][:3] = [np.nan, -0.0, np.inf]
    rng = np.random.default_rng(2)
    opt = {f"m.{k}": rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    opt |= {f"v.{k}": rng.random(v.shape).astype(np.float32) for k, v in params.items()}
    opt["step"] = np.array(17, dtype=np.int64)
    train_state = {
        "step": 17,
        "args": {"lr": 1e-3, "schedule": "cosine"},
        "rng": {"bit_generator": "PCG64", "state": {"state": 2**100 + 3, "inc": 5}},
        "metrics": [{"step": 10, "loss": 2.5}],
    }
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, cfg, params, CHAR_TOK, train_state=train_state, optimizer_state=opt)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint) and ckpt.format == "native" and ckpt.path == path
    assert ckpt.config == cfg and ckpt.config.to_dict() == cfg.to_dict()
    assert ckpt.tokenizer == CHAR_TOK
    assert ckpt.train_state == train_state
    assert list(ckpt.params) == list(expected_param_shapes(cfg))
    for k, v in params.items():
        assert ckpt.params[k].dtype == np.float32
        np.testing.assert_array_equal(bits(ckpt.params[k]), bits(v))
    assert set(ckpt.optimizer_state) == set(opt)
    for k, v in opt.items():
        assert ckpt.optimizer_state[k].dtype == v.dtype
        np.testing.assert_array_equal(bits(ckpt.optimizer_state[k]), bits(v))
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "mygpt" and meta["format_version"] == str(FORMAT_VERSION)
    assert meta["mygpt_version"]
    assert json.loads(meta["config"]) == cfg.to_dict()
    assert "optimizer.m.ln_f.weight" in keys and "ln_f.weight" in keys


def test_weights_only_native_has_no_train_state(tmp_path):
    cfg, params = random_native()
    save_checkpoint(tmp_path / "w.safetensors", cfg, params, CHAR_TOK)
    ckpt = load_checkpoint(tmp_path / "w.safetensors")
    assert ckpt.train_state is None and ckpt.optimizer_state == {}


def test_format_is_detected_from_bytes_not_suffix(tmp_path):
    cfg, params = random_native()
    native_named_ckpt = tmp_path / "native.ckpt"
    save_checkpoint(native_named_ckpt, cfg, params, CHAR_TOK)
    assert load_checkpoint(native_named_ckpt).format == "native"
    book_named_st = tmp_path / "book.safetensors"
    book_named_st.write_bytes(fixture_path("ch27_modern").read_bytes())
    assert load_checkpoint(book_named_st).format == "book"


def test_save_rejects_params_that_do_not_match_config(tmp_path):
    cfg, params = random_native()
    params["blocks.0.mha.W_K.weight"] = np.zeros((3, 16), np.float32)
    with pytest.raises(MygptError) as e:
        save_checkpoint(tmp_path / "x.safetensors", cfg, params, CHAR_TOK)
    assert_one_line_error(e, "blocks.0.mha.W_K.weight", "(3, 16)", "(16, 16)")
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("name", FIXTURES)
def test_book_to_native_to_book_is_bit_exact(tmp_path, name):
    src = fixture_path(name)
    native = convert(src, tmp_path / f"{name}.safetensors")
    assert native == tmp_path / f"{name}.safetensors"
    assert load_checkpoint(native).format == "native"
    back = convert(native, tmp_path / f"{name}.ckpt")
    assert back.read_bytes()[:4] == b"PK\x03\x04"

    a, b = torch_raw(src), torch_raw(back)
    sa, sb = a["model_state_dict"], b["model_state_dict"]
    assert list(sa) == list(sb)  # same keys, buffers included, same order
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        np.testing.assert_array_equal(bits(sa[k]), bits(sb[k]), err_msg=k)
    assert sa._metadata == sb._metadata
    # Every field the book wrote is reproduced; Part-I files gain the Part-II fields.
    assert [k for k in b if k in a] == list(a)
    assert list(b) == [
        "model_state_dict",
        "tokenizer_chars",
        "tokenizer_kind",
        "tokenizer_state",
        "config",
    ]
    assert b["tokenizer_chars"] == a["tokenizer_chars"]
    for key in ("tokenizer_kind", "tokenizer_state"):
        if key in a:
            assert b[key] == a[key] and type(b[key]) is type(a[key])
    if "merges" in a.get("tokenizer_state", {}):
        assert all(type(m) is tuple for m in b["tokenizer_state"]["merges"])
    for k, v in a["config"].items():
        assert b["config"][k] == v
    part1_defaults = {"num_kv_heads": a["config"]["num_heads"], "norm_type": "layer"}
    part1_defaults |= {"position_type": "learned", "tokenizer_kind": "char"}
    for k, v in part1_defaults.items():
        assert b["config"][k] == a["config"].get(k, v)


def test_convert_default_destination_and_refuses_to_overwrite_source(tmp_path):
    src = tmp_path / "m.ckpt"
    src.write_bytes(fixture_path("ch28_bpe").read_bytes())
    out = convert(src)
    assert out == tmp_path / "m.safetensors" and load_checkpoint(out).format == "native"
    with pytest.raises(MygptError) as e:
        convert(src, src)
    assert_one_line_error(e, "overwrite", str(src))
    with pytest.raises(MygptError) as e:
        convert(out, tmp_path / "m.bin")
    assert_one_line_error(e, ".safetensors")
    assert load_checkpoint(convert(out, tmp_path / "m.bin", to="book")).format == "book"


def test_native_to_book_drops_training_state_but_keeps_weights(tmp_path):
    cfg, params = random_native(3)
    opt = {f"m.{k}": np.ones_like(v) for k, v in params.items()}
    save_checkpoint(tmp_path / "a.safetensors", cfg, params, CHAR_TOK, {"step": 5}, opt)
    book = load_checkpoint(convert(tmp_path / "a.safetensors", tmp_path / "a.ckpt"))
    assert book.train_state is None and book.optimizer_state == {}
    assert book.config == cfg and book.tokenizer == CHAR_TOK
    for k, v in params.items():
        np.testing.assert_array_equal(bits(book.params[k]), bits(v))


def test_bytebpe_tokenizer_cannot_be_written_in_book_format(tmp_path):
    cfg, params = random_native()
    tok = {"kind": "bytebpe", "version": 1, "merges": []}
    with pytest.raises(MygptError) as e:
        save_book_checkpoint(tmp_path / "x.ckpt", config=cfg, params=params, tokenizer=tok)
    assert_one_line_error(e, "byte-level", "book")
    assert not (tmp_path / "x.ckpt").exists()


# ---------------------------------------------------------------------------------------------
# Error cases


def rewrite_native(src: Path, dst: Path, meta=None, drop=(), replace=None) -> Path:
    tensors = load_file(src)
    with safe_open(src, framework="np") as f:
        metadata = dict(f.metadata())
    metadata.update(meta or {})
    for k in drop:
        del tensors[k]
    tensors.update(replace or {})
    save_file(tensors, dst, metadata=metadata)
    return dst


def rewrite_book(src: Path, dst: Path, config=None, drop=(), replace=None) -> Path:
    raw = torch_raw(src)
    raw["config"].update(config or {})
    for k in drop:
        del raw["model_state_dict"][k]
    for k, v in (replace or {}).items():
        raw["model_state_dict"][k] = v
    torch.save(raw, dst)
    return dst


@pytest.fixture
def native_file(tmp_path) -> Path:
    cfg, params = random_native()
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, cfg, params, CHAR_TOK, {"step": 1})
    return path


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MygptError) as e:
        load_checkpoint(tmp_path / "nope.safetensors")
    assert_one_line_error(e, "nope.safetensors", "does not exist")
    with pytest.raises(MygptError) as e:
        load_checkpoint(tmp_path)
    assert_one_line_error(e, str(tmp_path), "directory")


def test_empty_file(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(MygptError) as e:
        load_checkpoint(tmp_path / "empty.ckpt")
    assert_one_line_error(e, "empty.ckpt", "empty")


@pytest.mark.parametrize("kind", ["native", "book"])
def test_truncated_file(tmp_path, native_file, kind):
    good = native_file if kind == "native" else fixture_path("ch27_modern")
    data = good.read_bytes()
    bad = tmp_path / f"half.{kind}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, bad.name, "truncated")


@pytest.mark.parametrize(
    "content",
    [b"ROMEO: what light through yonder window breaks\n" * 20, bytes(range(256)) * 4, b"{}"],
    ids=["text", "garbage", "tiny"],
)
def test_not_a_checkpoint(tmp_path, content):
    bad = tmp_path / "notes.ckpt"
    bad.write_bytes(content)
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, "notes.ckpt", "not a checkpoint")


def test_foreign_safetensors_and_foreign_torch_zip(tmp_path):
    foreign = tmp_path / "hf_model.safetensors"
    save_file({"wte": np.zeros((4, 4), np.float32)}, foreign, metadata={"format": "pt"})
    with pytest.raises(MygptError) as e:
        load_checkpoint(foreign)
    assert_one_line_error(e, "hf_model.safetensors", "not a mygpt checkpoint")
    foreign_pt = tmp_path / "weights.ckpt"
    torch.save({"w": torch.zeros(3)}, foreign_pt)
    with pytest.raises(MygptError) as e:
        load_checkpoint(foreign_pt)
    assert_one_line_error(e, "weights.ckpt", "not a book checkpoint")


class NotATensor:
    """A pickled custom object: weights_only=True must refuse it, never execute it."""


def test_pickle_unsafe_ckpt_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"model_state_dict": {}, "config": {}, "payload": NotATensor()}, path)
    with pytest.raises(MygptError) as e:
        load_checkpoint(path)
    assert_one_line_error(e, "evil.ckpt", "weights_only")


def test_newer_format_version(tmp_path, native_file):
    bad = rewrite_native(native_file, tmp_path / "future.safetensors", {"format_version": "2"})
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, "future.safetensors", "version 2", "upgrade")


@pytest.mark.parametrize("kind", ["native", "book"])
def test_unknown_config_value(tmp_path, native_file, kind):
    if kind == "native":
        cfg = json.loads(safe_open(native_file, framework="np").metadata()["config"])
        cfg["norm_type"] = "batch"
        bad = rewrite_native(native_file, tmp_path / "bad.safetensors", {"config": json.dumps(cfg)})
    else:
        bad = rewrite_book(
            fixture_path("part1_ch18"), tmp_path / "bad.ckpt", {"norm_type": "batch"}
        )
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, bad.name, "'batch'", "layer, rms")


@pytest.mark.parametrize("kind", ["native", "book"])
def test_missing_parameter(tmp_path, native_file, kind):
    key = "blocks.1.mlp.fc1.bias"
    if kind == "native":
        bad = rewrite_native(native_file, tmp_path / "bad.safetensors", drop=[key])
    else:
        bad = rewrite_book(fixture_path("ch27_modern"), tmp_path / "bad.ckpt", drop=[key])
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, bad.name, key, "missing")


@pytest.mark.parametrize("kind", ["native", "book"])
def test_shape_mismatch(tmp_path, native_file, kind):
    key = "blocks.0.mha.W_V.weight"
    if kind == "native":
        bad = rewrite_native(
            native_file, tmp_path / "bad.safetensors", replace={key: np.zeros((8, 16), np.float32)}
        )
        expected, got = "(16, 16)", "(8, 16)"
    else:
        bad = rewrite_book(
            fixture_path("ch27_modern"), tmp_path / "bad.ckpt", replace={key: torch.zeros(64, 64)}
        )
        expected, got = "(32, 64)", "(64, 64)"
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, bad.name, key, f"shape {got}", f"expected {expected}")


def test_unexpected_parameter(tmp_path, native_file):
    bad = rewrite_native(
        native_file,
        tmp_path / "bad.safetensors",
        replace={"position_embedding.weight_x": np.zeros(3, np.float32)},
    )
    with pytest.raises(MygptError) as e:
        load_checkpoint(bad)
    assert_one_line_error(e, "position_embedding.weight_x", "unexpected")


def test_missing_torch_gives_install_hint(monkeypatch):
    from mygpt.backends import torch_io

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(MygptError) as e:
        torch_io.read_torch_checkpoint(fixture_path("part1_ch18"))
    assert_one_line_error(e, "pip install torch", "mygpt convert")
    with pytest.raises(MygptError) as e:
        load_checkpoint(fixture_path("part1_ch18"))
    assert_one_line_error(e, "pip install torch")


# ---------------------------------------------------------------------------------------------
# Crash safety

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mygpt.checkpoint import expected_param_shapes, save_checkpoint
    from mygpt.config import ModelConfig

    path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # ~209 MB of float32: a 96k x 512 embedding dominates.
    cfg = ModelConfig(vocab_size=96000, embed_dim=512, num_heads=8, num_layers=1, max_seq_len=64)
    params = {k: np.empty(s, np.float32) for k, s in expected_param_shapes(cfg).items()}
    tok = {"kind": "char", "version": 1, "chars": ["a"]}
    print("ready", flush=True)
    for step in range(start, start + count):
        for a in params.values():
            a.fill(step)
        save_checkpoint(path, cfg, params, tok, train_state={"step": step})
        print(step, flush=True)
    """
)


def _run_saver(path: Path, start: int, count: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path), str(start), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_consistent(path: Path) -> int:
    ckpt = load_checkpoint(path)
    step = ckpt.train_state["step"]
    for name, value in ckpt.params.items():
        assert value.min() == value.max() == step, f"{name} mixes content of two saves"
    return step


def _open_temp_files(pid: int, d: Path) -> list[str]:
    """The temporary files process ``pid`` has open in ``d`` right now (it is mid-write)."""
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith(str(d)) and (link.endswith(" (deleted)") or link.endswith(".tmp")):
            found.append(link)
    return found


def test_sigkill_during_save_leaves_old_or_new_file(tmp_path):
    target = tmp_path / "big.safetensors"
    proc = _run_saver(target, 0, 1)
    assert proc.wait(timeout=120) == 0
    assert _assert_consistent(target) == 0

    rng = random.Random(1234)
    interrupted = 0
    last_step = 0
    for trial in range(6):
        proc = _run_saver(target, 1000 * (trial + 1), 1000)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 1.2))
        # then wait (at most 5 s) for the writer to be inside a write, so the kill lands there
        deadline = time.monotonic() + 5
        while not (writing := _open_temp_files(proc.pid, tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        done = [int(line) for line in proc.stdout.read().split()]
        proc.stdout.close()
        interrupted += bool(writing)
        # the temporary file is unnamed (O_TMPFILE): a killed writer leaves nothing behind
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]
        step = _assert_consistent(target)
        # Either the previous file or the last completed save (or one that finished renaming
        # just before the kill and had no time to report it).
        assert step in {last_step, *done, 1000 * (trial + 1) + len(done)}, (step, done)
        last_step = step
        if trial >= 2 and interrupted:
            break
    assert interrupted, "no kill landed in the middle of a write; the test proved nothing"


# ---------------------------------------------------------------------------------------------
# With the model


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_fixture_reproduces_book_logits(tmp_path, name):
    """Book file -> native file -> model forward gives the book's own logits (end to end)."""
    from mygpt.backends import get_backend
    from mygpt.model import forward

    ref = np.load(BOOK / f"{name}.npz")
    ckpt = load_checkpoint(convert(fixture_path(name), tmp_path / "m.safetensors"))
    ops = get_backend("torch", "cpu")
    params = {k: ops.asarray(v) for k, v in ckpt.params.items()}
    logits = ops.to_numpy(forward(ops, ckpt.config, params, ops.asarray(ref["input_ids"])))
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=1e-4)


def test_model_init_params_round_trip(tmp_path):
    from mygpt.model import init_params

    cfg = ModelConfig(vocab_size=30, embed_dim=24, num_heads=6, num_kv_heads=3, num_layers=2)
    params = init_params(cfg, seed=3)
    save_checkpoint(tmp_path / "init.safetensors", cfg, params, CHAR_TOK)
    loaded = load_checkpoint(tmp_path / "init.safetensors").params
    assert list(loaded) == list(params)
    for k, v in params.items():
        np.testing.assert_array_equal(bits(loaded[k]), bits(v))
