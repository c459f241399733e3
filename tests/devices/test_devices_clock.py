"""Fleet clock: availability, memory, deadline and over-selection semantics (table-driven)."""

from __future__ import annotations

import pytest

from fedshrink.devices import (
    STATUS_CODES,
    Candidate,
    RoundCost,
    client_metrics,
    get_device,
    parse_over_select,
    run_round,
    sample_size,
)
from fedshrink.errors import ConfigError

ALWAYS = get_device("laptop").replace(availability=1.0, memory_mb=1.0)


def cand(client: int, time_s: float, *, energy: float = 1.0, memory: int = 1000, availability: float = 1.0
         ) -> Candidate:
    cost = RoundCost(download_s=0.0, compute_s=time_s, upload_s=0.0, compute_j=energy, radio_j=0.0,
                     memory_bytes=memory)
    return Candidate(client, ALWAYS.replace(availability=availability), cost)


@pytest.mark.parametrize(
    ("times", "wanted", "deadline", "accepted", "late", "surplus", "duration"),
    [
        # no deadline, no over-selection: everyone is accepted, the round lasts as long as the slowest
        ((3.0, 1.0, 2.0), 3, 0.0, (1, 2, 0), (), (), 3.0),
        # a deadline drops the straggler; the round waited for the deadline
        ((3.0, 1.0, 2.0), 3, 2.5, (1, 2), (0,), (), 2.5),
        # over-selection: 3 sampled for 2 wanted, the first two to finish are kept, the round ends at the 2nd
        ((3.0, 1.0, 2.0), 2, 0.0, (1, 2), (), (0,), 2.0),
        # both: the deadline never binds once enough arrived
        ((3.0, 1.0, 2.0), 2, 2.5, (1, 2), (0,), (), 2.0),
        # ties in time go by client id
        ((1.0, 1.0, 1.0), 2, 0.0, (0, 1), (), (2,), 1.0),
        # nobody on time
        ((3.0, 4.0), 2, 1.0, (), (0, 1), (), 1.0),
    ],
)
def test_deadline_and_over_selection(times: tuple, wanted: int, deadline: float, accepted: tuple, late: tuple,
                                     surplus: tuple, duration: float) -> None:
    out = run_round([cand(i, t) for i, t in enumerate(times)], wanted=wanted, server_round=1, seed=0,
                    deadline_s=deadline)
    assert out.accepted == accepted
    assert out.dropped("deadline") == late and out.dropped("surplus") == surplus
    assert out.duration_s == duration
    # every client that trained spent its energy, accepted or not
    assert out.energy_j == pytest.approx(len(times))
    assert out.accepted_energy_j == pytest.approx(len(accepted))


def test_unavailable_and_memory_spend_nothing() -> None:
    cands = [cand(0, 1.0, availability=0.0), cand(1, 2.0, memory=2_000_000), cand(2, 5.0, energy=3.0)]
    out = run_round(cands, wanted=3, server_round=4, seed=9)
    assert out.dropped("unavailable") == (0,) and out.dropped("memory") == (1,) and out.accepted == (2,)
    assert out.duration_s == 5.0 and out.energy_j == 3.0
    by_id = {c.client: c for c in out.clients}
    assert by_id[0].time_s == by_id[0].energy_j == 0.0 and by_id[1].energy_j == 0.0
    assert run_round([cand(0, 1.0, availability=0.0)], wanted=1, server_round=1, seed=0).duration_s == 0.0


def test_availability_draws_follow_the_seed() -> None:
    cands = [cand(c, 1.0, availability=0.5) for c in range(40)]
    a = run_round(cands, wanted=40, server_round=2, seed=5)
    assert a == run_round(cands, wanted=40, server_round=2, seed=5)
    assert a.dropped("unavailable") != run_round(cands, wanted=40, server_round=3, seed=5).dropped("unavailable")
    assert 0 < len(a.dropped("unavailable")) < 40


@pytest.mark.parametrize(("wanted", "over", "n"), [(10, 0.0, 10), (10, 0.3, 13), (10, 0.25, 13), (10, 2, 12),
                                                   (0, 0.5, 0), (7, 1, 8)])
def test_sample_size(wanted: int, over: float, n: int) -> None:
    assert sample_size(wanted, over) == n


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True])
def test_over_select_errors(bad: float) -> None:
    with pytest.raises(ConfigError, match="over-select"):
        parse_over_select(bad)


def test_round_argument_errors() -> None:
    with pytest.raises(ConfigError, match="round-deadline"):
        run_round([cand(0, 1.0)], wanted=1, server_round=1, seed=0, deadline_s=-1)
    with pytest.raises(ConfigError, match="each client sampled once"):
        run_round([cand(0, 1.0), cand(0, 2.0)], wanted=1, server_round=1, seed=0)
    with pytest.raises(ConfigError, match="drop-reason"):
        run_round([cand(0, 1.0)], wanted=1, server_round=1, seed=0).dropped("tired")


def test_metrics_are_numbers_under_device_keys() -> None:
    cands = [cand(0, 3.0, energy=2.0), cand(1, 1.0), cand(2, 1.0, availability=0.0)]
    out = run_round(cands, wanted=1, server_round=1, seed=0)
    m = out.metrics()
    assert m["device-round-s"] == 1.0 and m["device-fleet-energy-j"] == 3.0 and m["device-accepted-energy-j"] == 1.0
    assert (m["device-accepted"], m["device-dropped-surplus"], m["device-dropped-unavailable"]) == (1, 1, 1)
    assert all(k.startswith("device-") and isinstance(v, float) for k, v in m.items())
    surplus = client_metrics(cands[0].cost, "surplus")
    assert surplus["device-status"] == STATUS_CODES["surplus"] and surplus["device-energy-j"] == 2.0
    off = client_metrics(cands[2].cost, "unavailable")
    assert off["device-time-s"] == off["device-energy-j"] == 0.0 and off["device-memory-mb"] == 1000 / 1e6
    with pytest.raises(ConfigError):
        client_metrics(cands[0].cost, "asleep")
