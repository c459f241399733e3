"""Bad tensors are refused at encode time with an EncodeError naming the tensor and the fault."""

from __future__ import annotations

import pytest
import torch

from fedshrink.compression import Chain, decode_tensor
from fedshrink.errors import EncodeError

BAD_VALUES = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("text", ["raw", "zstd", "topk:0.1|q4|zlib", "int8"])
def test_non_finite_values_are_refused(text: str, dtype: torch.dtype) -> None:
    for bad in BAD_VALUES:
        for where in (0, 57, 99):
            x = torch.randn(100).to(dtype)
            x[where] = bad
            with pytest.raises(EncodeError, match="non-finite") as info:
                Chain(text).encode("w", x)
            assert info.value.tensor == "w"


def test_finite_extremes_are_accepted() -> None:
    x = torch.tensor([3.0e38, -3.0e38, 1e-45, 0.0])
    assert Chain("raw").encode("w", x).nbytes > 0
    overflowing_sum = torch.full((4,), 3.0e38)  # finite values whose float32 sum is inf
    assert torch.equal(decode_tensor(Chain("raw").encode("w", overflowing_sum).data), overflowing_sum)
    assert Chain("raw").encode("w", torch.tensor([1e300, -1e300], dtype=torch.float64)).nbytes > 0


def test_other_faults_are_named() -> None:
    with pytest.raises(EncodeError, match="0s and 1s"):
        Chain("bitmap").encode("m", torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(EncodeError, match="unsupported dtype"):
        Chain("raw").encode("c", torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(EncodeError, match="exceeds float32"):
        Chain("int8").encode("d", torch.tensor([1e300, -1e300], dtype=torch.float64))
    with pytest.raises(EncodeError, match=r"torch\.Tensor"):
        Chain("raw").encode("l", [1.0, 2.0])  # type: ignore[arg-type]
