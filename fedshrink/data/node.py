"""Where a SuperNode's training data lives: its node config, not the server.

In deployment each SuperNode is started with ``--node-config``; besides
``partition-id`` and ``num-partitions`` it may name its data:

* ``dataset``: the data set's name (``digits``, ``mnist``, a name of your
  own with ``data-dir``, ...). It must be the run's data set, because the
  server builds the model for that one.
* ``data-dir``: a copy saved on that machine with ``datasets``' ``save_to_disk``.

The node's split is computed with the run's seed and fractions, so every node
(and the server) agrees on which samples are test, proxy and client data.
A node that names neither inherits the run's settings, as in simulation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fedshrink.data.federated import SplitSpec
from fedshrink.data.sources import known_dataset, unknown_words
from fedshrink.errors import ConfigError

NODE_DATA_KEYS = ("dataset", "data-dir")


def node_split_spec(run_spec: SplitSpec, node_config: Mapping[str, object]) -> SplitSpec:
    """``run_spec`` with the data set and data directory the node config names (if any)."""
    spec = run_spec
    if "dataset" in node_config:
        name = str(node_config["dataset"])
        if not known_dataset(name, str(node_config.get("data-dir", ""))):
            raise ConfigError("node-config dataset", name, unknown_words())
        if name != run_spec.dataset:
            raise ConfigError("node-config dataset", name,
                              f"the run's data set {run_spec.dataset!r} (the server builds the model for it)")
        # a node naming its data set reads it from its own disk or the hub, never from the run's data-dir
        spec = dataclasses.replace(spec, data_dir="")
    if "data-dir" in node_config:
        spec = dataclasses.replace(spec, data_dir=str(node_config["data-dir"]))
    return spec
