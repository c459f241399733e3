"""Drivers of the ServerApp/ClientApp pair outside Flower's engines."""

from fedshrink.runner.inprocess import InProcessGrid, RunResult, run_inprocess, simulation_node_configs

__all__ = ["InProcessGrid", "RunResult", "run_inprocess", "simulation_node_configs"]
