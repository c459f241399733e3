"""The ServerApp: Flower's entry point on the server side; wiring only.

:func:`main` reads the run settings, plays the rounds
(:func:`fedshrink.server.loop.serve`) and builds the report from the run
directory afterwards (unless ``report = false``).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedshrink.config import RunConfig
from fedshrink.server.loop import serve

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_mapping(context.run_config)
    summary = serve(grid, cfg)
    if cfg.output.report:
        from pathlib import Path

        from fedshrink.report import build_report

        build_report(Path(summary["run-dir"]))
