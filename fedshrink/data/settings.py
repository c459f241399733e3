"""Settings of the data layer: which data set, how it is read, split and partitioned."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from fedshrink.data.federated import SplitSpec
from fedshrink.data.fleet import FLEETS, FleetSpec, parse_samples
from fedshrink.data.partition import PARTITIONERS, PartitionScheme
from fedshrink.data.sources import known_dataset, unknown_words
from fedshrink.errors import ConfigError
from fedshrink.settings import Section, accepted_by, at_least, between, greater_than, one_of, option, satisfies

_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # safe in a run directory's name, but for '/'
_NAME_WORDS = ("a registered data set or fleet, a Hugging Face id 'owner/name', or any name of your own "
               "(letters, digits, '.', '_', '-') with data-dir set")

_COLUMN = satisfies(lambda v: True, "a column name, or ''")


@dataclass(frozen=True)
class DataSettings(Section):
    title: ClassVar[str] = "data"

    dataset: str = option(
        "digits", "data set: registered (`digits`, `glyphs`, `mnist`, ...), a generated fleet (`writers`), "
        "a Hugging Face id `owner/name`, or any name for the copy in data-dir (see docs/data.md)",
        rule=satisfies(lambda v: bool(_NAME.match(v)), _NAME_WORDS))
    data_dir: str = option("", "a data set saved with `datasets`' `save_to_disk` (for hub data sets without network)",
                           rule=satisfies(lambda v: True, "a path, or '' (none)"))
    image_column: str = option("", "image column of a `datasets` data set ('' = the Image feature, else "
                               "'image'/'img'/'pixels'/'picture')", rule=_COLUMN)
    label_column: str = option("", "label column of a `datasets` data set ('' = the ClassLabel feature, else "
                               "'label'/'labels'/'class')", rule=_COLUMN)
    client_column: str = option("", "client id column of a `datasets` data set (e.g. 'writer_id'), for the "
                                "`natural` partitioner", rule=_COLUMN)
    partitioner: str = option("dirichlet", "how client partitions are drawn (`natural`: the data set's own "
                              "clients; required by a generated fleet)", rule=one_of(lambda: PARTITIONERS))
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration (smaller = more skewed)", rule=greater_than(0))
    classes_per_client: int = option(2, "pathological partitioner: classes per client", rule=at_least(1))
    test_fraction: float = option(0.2, "server test split (when the data set has no official test split)",
                                  rule=between(0, 1, lo_open=True, hi_open=True))
    proxy_fraction: float = option(0.1, "server proxy split, kept unlabeled for distillation and fusion "
                                   "(a fleet: 0 = none, else held-out writers)", rule=between(0, 1, hi_open=True))
    fleet_writers: int = option(1000, "generated fleet: writers in the population (client i is writer i)",
                                rule=at_least(1))
    samples_per_writer: str = option("16-64", "generated fleet: images per writer, 'N' or 'LO-HI'",
                                     rule=accepted_by(parse_samples, "'N' or 'LO-HI' with 1 <= LO <= HI"))

    def check(self) -> None:
        if not known_dataset(self.dataset, self.data_dir):
            raise ConfigError("dataset", self.dataset, unknown_words())
        if self.data_dir and self.dataset in FLEETS:
            raise ConfigError("data-dir", self.data_dir, f"'' for the generated fleet {self.dataset!r}")
        if self.dataset in FLEETS and self.partitioner != "natural":
            raise ConfigError("partitioner", self.partitioner,
                              f"'natural' for the generated fleet {self.dataset!r} (client i is writer i)")
        if self.partitioner == "natural" and self.dataset not in FLEETS and not self.client_column:
            raise ConfigError("partitioner", self.partitioner,
                              "'natural' only with client-column set or a generated fleet "
                              f"({', '.join(map(repr, sorted(FLEETS)))})")

    def split_spec(self, seed: int) -> SplitSpec:
        fleet = FleetSpec(self.fleet_writers, parse_samples(self.samples_per_writer))
        return SplitSpec(self.dataset, self.data_dir, self.test_fraction, self.proxy_fraction, seed,
                         self.image_column, self.label_column, self.client_column, fleet)

    def partition_scheme(self) -> PartitionScheme:
        return PartitionScheme(self.partitioner, self.dirichlet_alpha, self.classes_per_client)
