"""The cost model against hand calculations on a tiny model, and the graph walk against torch's allocator."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fedshrink.devices import (
    DeviceModel,
    RoundCost,
    get_device,
    module_step_memory,
    round_cost,
    step_memory,
    training_memory,
)
from fedshrink.errors import ConfigError
from fedshrink.models import ModelSpec, build_model
from fedshrink.resources.flops import macs_per_sample, training_flops


def tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))  # (B, 1, 2, 2) -> (B, 2)


def test_step_memory_by_hand() -> None:
    # batch 2 of (1, 2, 2): Linear(4, 3) out 2*3*4 = 24 B, ReLU out 24 B, logits 2*2*4 = 16 B
    step = module_step_memory(tiny(), (1, 2, 2), 2)
    assert (step.params, step.param_bytes, step.prunable, step.weight_channels) == (23, 92, 18, 5)
    assert step.batch_bytes == 2 * 4 * 4 + 2 * 8  # fp32 inputs + int64 labels
    # end of forward: ReLU's output (kept by ReLU and the second Linear), the logits, the log-probs
    assert step.saved_bytes == 24 + 16 + 16 == step.forward_peak
    # backward peak at the first Linear: its output's gradient (24), the logits (16), all parameter grads (92)
    assert step.backward_peak == 24 + 16 + 92
    assert step.working_bytes == 132


def test_training_memory_by_hand() -> None:
    step = module_step_memory(tiny(), (1, 2, 2), 2)
    mem = training_memory(step, weight_bits=8, pruned=True, momentum=True, lossy_uplink=True,
                          download_bytes=100, upload_bytes=50)
    assert mem.forward_copy == math.ceil(8 * 18 / 8) + 4 * 5  # 8-bit weights + one fp32 scale per channel
    assert mem.masks == math.ceil(18 / 8)
    assert mem.step_peak == 92 + 38 + 3 + 92 + 48 + 132
    assert mem.train_peak == mem.step_peak + 92 + 92  # reference copy + error-feedback residual
    assert mem.decode_peak == 100 + 92 + 92 + 92
    assert mem.encode_peak == 92 + 3 + 92 + 92 + (2 * 92 + 50)
    assert mem.round_peak == 589
    plain = training_memory(step, weight_bits=32, pruned=False, momentum=False, lossy_uplink=False,
                            download_bytes=100, upload_bytes=50)
    assert (plain.forward_copy, plain.masks, plain.momentum, plain.residual) == (0, 0, 0, 0)
    assert plain.codec == 92 + 50
    with pytest.raises(ConfigError):
        training_memory(step, weight_bits=1, pruned=False, momentum=False, lossy_uplink=False,
                        download_bytes=0, upload_bytes=0)


def test_round_cost_by_hand() -> None:
    model = tiny()
    macs = macs_per_sample(model, (1, 2, 2))
    assert macs == 4 * 3 + 3 * 2
    flops = training_flops(macs, 10)  # 10 samples: 3 (fwd+bwd) x 2 FLOP/MAC x 18 MACs x 10
    assert flops == 1080
    # 1000 FLOP/s; 8000 bit/s down (1000 B/s), 4000 bit/s up (500 B/s); 0.5 s round trip
    dev = DeviceModel("hand", gflops=1e-6, memory_mb=1e-3, uplink_mbps=0.004, downlink_mbps=0.008, latency_s=0.5,
                      compute_w=2.0, radio_up_w=3.0, radio_down_w=1.0, availability=1.0)
    cost = round_cost(dev, train_flops=flops, download_bytes=100, upload_bytes=50, memory_bytes=589)
    assert cost.compute_s == pytest.approx(1.08)
    assert cost.download_s == pytest.approx(100 / 1000 + 0.5)
    assert cost.upload_s == pytest.approx(50 / 500 + 0.5)
    assert cost.time_s == pytest.approx(0.6 + 1.08 + 0.6)
    assert cost.compute_j == pytest.approx(2.0 * 1.08)
    assert cost.radio_j == pytest.approx(1.0 * 0.1 + 3.0 * 0.1)  # latency waits cost no radio energy
    assert cost.energy_j == pytest.approx(2.56)
    assert cost.fits(dev)  # 589 B <= 1000 B
    assert not round_cost(dev, train_flops=0, download_bytes=0, upload_bytes=0, memory_bytes=1001).fits(dev)
    assert RoundCost(**{k: v for k, v in cost.to_dict().items() if k not in ("time_s", "energy_j")}) == cost
    with pytest.raises(ConfigError):
        round_cost(dev, train_flops=-1, download_bytes=0, upload_bytes=0, memory_bytes=0)


def test_memory_model_refuses_ops_it_does_not_cover() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="Sigmoid"):
        module_step_memory(model, (1, 2, 2), 2)


def _measured_step_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Peak live tensor bytes of one steady-state SGD step above the weights, momentum and batch (allocator events)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    memory = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    # the step's own thread (the one with most events): another test's leftover thread must not count
    own = Counter(e.start_thread_id() for e in memory).most_common(1)[0][0]
    events = sorted((e.start_ns(), e.nbytes()) for e in memory if e.start_thread_id() == own)
    live = peak = 0
    for _, nbytes in events:  # frees of the previous step's gradients are not reported: they net out
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_case(name: str) -> int:
    """The allocator's peak for one step of ``name`` at width 0.5 (run in a fresh process by the test below)."""
    spec = ModelSpec(name, (1, 8, 8), 10, width=0.5, norm="batch")
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    torch.backends.mkldnn.enabled = False  # the native im2col convolution the model describes
    return _measured_step_bytes(build_model(spec), x, y)


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_graph_walk_matches_torch_allocator(name: str) -> None:
    # measured on its own, in a fresh process: the profiler sees every allocation of the process it runs in
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
            f"torch.set_num_threads(1); from test_devices_cost import measure_case; print(measure_case({name!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    measured = int(out.stdout.strip().splitlines()[-1])
    modelled = step_memory(ModelSpec(name, (1, 8, 8), 10, width=0.5, norm="batch"), 16).working_bytes
    assert modelled == pytest.approx(measured, rel=0.05)


def test_shipped_devices_cost_orders() -> None:
    step = step_memory(ModelSpec("cnn", (1, 8, 8), 10), 16)
    flops = training_flops(macs_per_sample(build_model(ModelSpec("cnn", (1, 8, 8), 10)), (1, 8, 8)), 1000)
    times = {n: round_cost(get_device(n), train_flops=flops, download_bytes=1e5, upload_bytes=1e4,
                           memory_bytes=step.working_bytes).compute_s for n in ("iot", "phone", "edge", "laptop")}
    assert times["iot"] > times["edge"] > times["phone"] > times["laptop"]
