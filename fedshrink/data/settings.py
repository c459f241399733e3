"""Settings of the data layer: which data set, how it is split and partitioned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.data.federated import SplitSpec
from fedshrink.data.partition import PARTITIONERS, PartitionScheme
from fedshrink.data.sources import SOURCES
from fedshrink.settings import Section, at_least, between, greater_than, one_of, option, satisfies


@dataclass(frozen=True)
class DataSettings(Section):
    title: ClassVar[str] = "data"

    dataset: str = option("digits", "data set (see fedshrink.data.sources)", rule=one_of(lambda: SOURCES))
    data_dir: str = option("", "a data set saved with `datasets`' `save_to_disk` (for hub data sets without network)",
                           rule=satisfies(lambda v: True, "a path, or '' (none)"))
    partitioner: str = option("dirichlet", "how client partitions are drawn", rule=one_of(lambda: PARTITIONERS))
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration (smaller = more skewed)", rule=greater_than(0))
    classes_per_client: int = option(2, "pathological partitioner: classes per client", rule=at_least(1))
    test_fraction: float = option(0.2, "server test split (when the data set has no official test split)",
                                  rule=between(0, 1, lo_open=True, hi_open=True))
    proxy_fraction: float = option(0.1, "server proxy split, kept unlabeled for distillation and fusion",
                                   rule=between(0, 1, hi_open=True))

    def split_spec(self, seed: int) -> SplitSpec:
        return SplitSpec(self.dataset, self.data_dir, self.test_fraction, self.proxy_fraction, seed)

    def partition_scheme(self) -> PartitionScheme:
        return PartitionScheme(self.partitioner, self.dirichlet_alpha, self.classes_per_client)
