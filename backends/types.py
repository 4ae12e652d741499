"""The array types shared code names: a backend's own arrays, opaque to everything above it."""

from __future__ import annotations

from typing import Any

Array = Any  # mx.array or torch.Tensor
Params = dict[str, Array]  # a model's parameters by checkpoint name
