"""Resource metering on the client, records and totals on the server.

* :mod:`~fedshrink.resources.meter`: :class:`ResourceMeter` (time, CPU, peak
  RSS, GPU peak, energy of a block) and :class:`ResourceRecord` (one client's
  round, as MetricRecord numbers), exact reply sizes.
* :mod:`~fedshrink.resources.energy`: RAPL / NVML readings or the CPU-time estimate.
* :mod:`~fedshrink.resources.flops`: MACs per sample by forward hooks, training FLOPs.
* :mod:`~fedshrink.resources.ledger`: :class:`ResourceLedger` on the server, ``clients.csv``.
"""

from fedshrink.resources.energy import (
    DEFAULT_WATTS_PER_CORE,
    ENERGY_METHODS,
    EnergyProbe,
    EnergyReading,
    estimate_cpu_energy_j,
    is_estimated,
    method_label,
)
from fedshrink.resources.flops import layer_macs, macs_per_sample, training_flops
from fedshrink.resources.ledger import CLIENTS_CSV, CSV_COLUMNS, ClientRound, ResourceLedger, Totals, totals
from fedshrink.resources.meter import (
    DEFAULT_SAMPLE_INTERVAL,
    METRIC_KEYS,
    MeterReading,
    ResourceMeter,
    ResourceRecord,
    fp32_equivalent_nbytes,
    message_size,
    reply_with_record,
)

__all__ = [
    "CLIENTS_CSV",
    "CSV_COLUMNS",
    "DEFAULT_SAMPLE_INTERVAL",
    "DEFAULT_WATTS_PER_CORE",
    "ENERGY_METHODS",
    "METRIC_KEYS",
    "ClientRound",
    "EnergyProbe",
    "EnergyReading",
    "MeterReading",
    "ResourceLedger",
    "ResourceMeter",
    "ResourceRecord",
    "Totals",
    "estimate_cpu_energy_j",
    "fp32_equivalent_nbytes",
    "is_estimated",
    "layer_macs",
    "macs_per_sample",
    "message_size",
    "method_label",
    "reply_with_record",
    "totals",
    "training_flops",
]
