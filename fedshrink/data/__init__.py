"""Data sets by name, seeded splits (test / proxy / clients) and partitioners."""

from fedshrink.data.federated import Splits, SplitSpec, client_data, client_partitions, make_splits
from fedshrink.data.node import NODE_DATA_KEYS, node_split_spec
from fedshrink.data.partition import PARTITIONERS, PartitionScheme, partition_indices
from fedshrink.data.sources import HUB_DATASETS, SOURCES, LabelledArrays, SourceData, load_source

__all__ = [
    "HUB_DATASETS",
    "NODE_DATA_KEYS",
    "PARTITIONERS",
    "SOURCES",
    "LabelledArrays",
    "PartitionScheme",
    "SourceData",
    "SplitSpec",
    "Splits",
    "client_data",
    "client_partitions",
    "load_source",
    "make_splits",
    "node_split_spec",
    "partition_indices",
]
