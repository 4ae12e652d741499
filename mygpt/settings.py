"""Settings declared once: a dataclass field carries its default, its help and its choices, and
the command line is built from the fields.

``setting()`` declares a field; ``click_options(cls)`` turns fields into click options (a nested
dataclass field, such as ``TrainConfig.model``, contributes its own fields' flags);
``backend_option``/``device_option``/``precision_option`` are the one declaration of the flags
every command that runs a model shares. ``Given`` records which fields a caller actually passed,
so "did the user ask for this?" never means "is it different from the default?".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

from mygpt.backends import BACKENDS, DEVICES

BACKEND_CHOICES = ("auto", *BACKENDS)
PRECISIONS = ("auto", "fp32", "bf16")
ENCODING_ERRORS = ("strict", "replace", "ignore")


def setting(default: Any = dataclasses.MISSING, help: str = "", **option: Any) -> Any:
    """A settings field: its default and its ``--flag``'s help, plus click details (``choices``;
    ``type`` where the default is None; ``cli=False`` for a field with no flag)."""
    return dataclasses.field(default=default, metadata={"help": help, **option})


def track_given(cls: type) -> type:
    """Class decorator: ``obj.given`` is the set of field names the constructor was passed.

    ``TrainConfig(steps=12).given == {"steps"}``. ``dataclasses.replace`` passes every field, so
    a replaced object counts all of them as given; the class's ``replace`` method (which this
    adds) keeps the record (plus the changed fields), and lets a field derived from others
    (``derived=True`` in its metadata, such as ``num_kv_heads``) be derived again unless it was
    given.
    """
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))

    derived = [f.name for f in dataclasses.fields(cls) if f.metadata.get("derived")]

    def replace(self, **changes: Any):
        unset = {k: None for k in derived if k not in self.given and k not in changes}
        new = dataclasses.replace(self, **unset, **changes)
        return with_given(new, self.given | frozenset(changes))

    cls.__init__ = __init__
    cls.given = property(lambda self: getattr(self, "_given", frozenset()))
    cls.replace = replace
    return cls


def with_given(obj: Any, names: Iterable[str]) -> Any:
    """``obj`` (a ``track_given`` instance) recording ``names`` as the fields its caller passed."""
    object.__setattr__(obj, "_given", frozenset(names))
    return obj


def nested(cls: type, help: str) -> Any:
    """A field holding a settings dataclass whose own fields are flags (``TrainConfig.model``)."""
    return dataclasses.field(default_factory=cls, metadata={"help": help, "nested": cls})


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line flags, nested dataclass fields expanded."""
    out: list[dataclasses.Field] = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        nested = f.metadata.get("nested")
        out.extend(cli_fields(nested) if nested else [f])
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def declared_defaults(cls: type) -> dict[str, Any]:
    """Every flag's declared default (None for one derived from others, such as num_kv_heads)."""
    return {f.name: _default(f) for f in cli_fields(cls)}


def click_options(cls: type, names: Iterable[str] | None = None, *, defaults: bool = True):
    """A decorator adding one click option per flag field of ``cls`` (or those in ``names``),
    with its help, choices and (unless ``defaults`` is False) its default."""
    import click

    wanted = set(names) if names is not None else None
    chosen = [f for f in cli_fields(cls) if wanted is None or f.name in wanted]

    def decorate(fn: Callable) -> Callable:
        for f in reversed(chosen):
            meta, default = f.metadata, _default(f)
            kw: dict[str, Any] = {"help": meta["help"]}
            if isinstance(default, bool):
                kw["is_flag"] = True
            elif "choices" in meta:
                kw["type"] = click.Choice(meta["choices"])
            else:
                kw["type"] = meta.get("type") or type(default)
            if defaults and default is not None:
                kw.update(default=default, show_default=True)
            else:
                kw["default"] = None
            fn = click.option("--" + f.name.replace("_", "-"), f.name, **kw)(fn)
        return fn

    return decorate


def _option(name: str, choices: tuple[str, ...], default: str, help: str):
    import click

    return click.option(
        name, type=click.Choice(choices), default=default, show_default=True, help=help
    )


BACKEND_HELP = "auto: MLX on Apple Silicon, else torch if installed, else MLX."
DEVICE_HELP = "auto: the backend's GPU (CUDA, Metal, MPS) if it has one, else the CPU."
PRECISION_HELP = "Compute dtype; auto: bf16 where the hardware runs it natively and it pays."


def backend_option(fn: Callable) -> Callable:
    """``--backend``, as every command that runs a model declares it."""
    return _option("--backend", BACKEND_CHOICES, "auto", BACKEND_HELP)(fn)


def device_option(fn: Callable) -> Callable:
    """``--device``, as every command that runs a model declares it."""
    return _option("--device", DEVICES, "auto", DEVICE_HELP)(fn)


def precision_option(fn: Callable) -> Callable:
    """``--precision`` for inference commands (fp32 by default: exact, and fast on CPUs)."""
    return _option("--precision", PRECISIONS, "fp32", PRECISION_HELP)(fn)


ENCODING_ERRORS_HELP = "What to do with bytes in the input text that are not UTF-8."


def encoding_errors_option(fn: Callable) -> Callable:
    """``--encoding-errors``, as every command that reads a text declares it."""
    return _option("--encoding-errors", ENCODING_ERRORS, "strict", ENCODING_ERRORS_HELP)(fn)
