"""Data sets by name, seeded splits (test / proxy / clients) and partitioners."""

from fedshrink.data.federated import Splits, SplitSpec, client_data, client_partitions, make_splits, max_clients
from fedshrink.data.fleet import FLEETS, Fleet, FleetSpec
from fedshrink.data.hub import HUB_DATASETS
from fedshrink.data.node import NODE_DATA_KEYS, node_split_spec
from fedshrink.data.partition import PARTITIONERS, PartitionScheme, partition_indices
from fedshrink.data.sources import (
    SOURCES,
    LabelledArrays,
    SourceData,
    SourceRequest,
    dataset_names,
    known_dataset,
    load_source,
    register_source,
)

__all__ = [
    "FLEETS",
    "HUB_DATASETS",
    "NODE_DATA_KEYS",
    "PARTITIONERS",
    "SOURCES",
    "Fleet",
    "FleetSpec",
    "LabelledArrays",
    "PartitionScheme",
    "SourceData",
    "SourceRequest",
    "SplitSpec",
    "Splits",
    "client_data",
    "client_partitions",
    "dataset_names",
    "known_dataset",
    "load_source",
    "make_splits",
    "max_clients",
    "node_split_spec",
    "partition_indices",
    "register_source",
]
