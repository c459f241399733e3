"""ResourceLedger: totals per client and per profile, round keys, server costs, clients.csv."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from flwr.app import MetricRecord

from fedshrink.errors import ConfigError, ReplyError
from fedshrink.resources import CSV_COLUMNS, ResourceLedger, ResourceRecord
from fedshrink.resources.energy import METHOD_ESTIMATED, METHOD_RAPL
from fedshrink.resources.ledger import ExactSum


def rec(**kw: float) -> ResourceRecord:
    base: dict = dict(wall_seconds=1.0, cpu_seconds=2.0, peak_rss_bytes=1000, rss_start_bytes=500,
                      gpu_peak_bytes=0, bytes_received=300, bytes_sent=100, bytes_sent_fp32=400,
                      parameters=50, macs_per_sample=70, samples=10, train_flops=6.0 * 70 * 10,
                      energy_joules=24.0, energy_method=METHOD_ESTIMATED)
    base.update(kw)
    return ResourceRecord(**base)


def filled() -> ResourceLedger:
    led = ResourceLedger()
    led.add(1, 0, rec(), profile="phone", node_id=11)
    led.add(1, 1, rec(peak_rss_bytes=5000, bytes_sent=200, bytes_sent_fp32=0), profile="laptop", node_id=12)
    led.add(2, 0, rec(wall_seconds=3.0), profile="phone", node_id=11)
    led.add(2, 1, rec(energy_method=METHOD_RAPL, energy_joules=1.5), profile="laptop", node_id=12)
    led.add_server(1, aggregation_seconds=0.25, bytes_down=700)
    led.add_server(1, distillation_seconds=2.0)
    return led


def test_round_record_and_totals() -> None:
    led = filled()
    r1 = led.round_record(1)
    assert r1["bytes-up"] == 300
    assert r1["bytes-up-uncompressed"] == 400 + 200  # an unmeasured fp32 size counts as sent
    assert r1["bytes-down"] == 700  # measured by the server
    assert led.round_record(2)["bytes-down"] == 600  # else what the clients received
    assert r1["energy-j"] == 48.0 and r1["energy-estimated"] is True
    assert r1["aggregation-s"] == 0.25 and r1["distillation-s"] == 2.0
    assert r1["client-peak-rss-bytes-max"] == 5000
    assert led.round_record(2)["energy-estimated"] is True  # one of the two clients estimated
    per_client = led.per_client()
    assert per_client[0].wall_seconds == 4.0 and per_client[0].rounds == 2
    assert per_client[1].peak_rss_bytes == 5000 and per_client[1].bytes_up == 300
    per_profile = led.per_profile()
    assert set(per_profile) == {"phone", "laptop"}
    assert per_profile["laptop"].energy_joules == 25.5 and per_profile["laptop"].energy_estimated
    summary = led.summary()
    assert summary["server"] == {"aggregation-s": 0.25, "distillation-s": 2.0, "bytes-down": 700}
    assert summary["clients"]["records"] == 4
    assert summary["energy-methods"] == ["estimated:cpu-time x W/core", "measured:rapl"]


def test_csv_round_trip(tmp_path: Path) -> None:
    led = filled()
    path = led.write_csv(tmp_path)
    assert path == tmp_path / "clients.csv"
    header = path.read_text().splitlines()[0].split(",")
    assert tuple(header) == CSV_COLUMNS
    assert "estimated:cpu-time x W/core" in path.read_text()
    back = ResourceLedger.read_csv(path)
    assert sorted(back.records, key=lambda r: (r.round, r.partition_id)) == \
        sorted(led.records, key=lambda r: (r.round, r.partition_id))
    (tmp_path / "bad.csv").write_text("round,partition-id\n1,2\n")
    with pytest.raises(ConfigError):
        ResourceLedger.read_csv(tmp_path / "bad.csv")


def test_add_reply_reads_a_metric_record() -> None:
    led = ResourceLedger()
    metrics = MetricRecord({"partition-id": 3, "num-examples": 10, **rec().to_metrics()})
    row = led.add_reply(4, metrics, profile="phone", node_id=9)
    assert row is not None and row.partition_id == 3 and row.resources == rec()
    assert led.add_reply(4, MetricRecord({"partition-id": 3})) is None  # no record: nothing added
    with pytest.raises(ReplyError):
        led.add_reply(4, {**rec().to_metrics()})  # no partition-id
    with pytest.raises(ReplyError):
        led.add_reply(4, {"partition-id": 1, **rec().to_metrics(), "res-bytes-up": -5})


def test_validation() -> None:
    led = ResourceLedger()
    with pytest.raises(ConfigError):
        led.add(1, -1, rec())
    with pytest.raises(ConfigError):
        led.add(1, 0, rec(), profile="a,b")
    with pytest.raises(ConfigError):
        led.add_server(1, aggregation_seconds=float("nan"))


def test_a_spooled_ledger_keeps_only_the_open_round_and_totals_equal_the_file(tmp_path: Path) -> None:
    spool = tmp_path / "clients.csv"
    led, whole = ResourceLedger(spool=spool), filled()
    for rnd in (1, 2):
        for row in whole.in_round(rnd)[::-1]:  # out of partition order within the round
            led.add(row.round, row.partition_id, row.resources, profile=row.profile, node_id=row.node_id)
        assert len(led.in_round(rnd)) == 2
        led.close_round()
        assert led._kept == [] and led.spooled == 2 * rnd  # nothing of a closed round stays in memory
    assert [r.round for r in led.in_round(1)] == [1, 1]  # read back from the file
    back = ResourceLedger.read_csv(spool)
    assert back.records == sorted(whole.records, key=lambda r: (r.round, r.partition_id))
    assert led.summary()["clients"] == back.summary()["clients"] == whole.summary()["clients"]
    assert led.per_client() == whole.per_client() and led.per_profile() == whole.per_profile()
    assert led.write_csv(tmp_path) == spool and ResourceLedger.read_csv(spool).records == back.records


def test_a_resumed_spool_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    spool = tmp_path / "clients.csv"
    led = ResourceLedger(spool=spool)
    for rnd in (1, 2, 3):
        led.add(rnd, 0, rec(wall_seconds=float(rnd)))
        led.close_round()
    again = ResourceLedger(spool=spool)
    again.resume_spool(2)  # the checkpoint was written after round 2
    assert [r.round for r in ResourceLedger.read_csv(spool).records] == [1, 2]
    assert again.per_client()[0].wall_seconds == 3.0 and again.spooled == 2
    with pytest.raises(ConfigError, match=r"clients\.csv"):
        ResourceLedger(spool=spool).resume_spool(5)


def test_running_totals_equal_fsum_of_every_term() -> None:
    terms = [1e16, 1.0, -1e16, 0.1, 0.2, 0.3, 1e-300, 3.5e7]
    acc = ExactSum()
    for t in terms:
        acc.add(t)
    assert acc.value == math.fsum(terms) != sum(terms)
