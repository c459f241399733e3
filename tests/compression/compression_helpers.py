"""Shared helpers for the compression tests (tiny tensors, hypothesis strategies)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FINITE = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


def float_arrays(max_dims: int = 4, max_side: int = 9, min_side: int = 1) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=min_side, max_side=max_side)
    return hnp.arrays(np.float32, shapes, elements=FINITE)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
