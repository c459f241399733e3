"""Run the app on Flower's own simulation engine (``flwr run``) and clean up after it.

``flwr run`` on a local connection starts a detached SuperLink that outlives
the command, exits 0 even when the ServerApp crashed, and, unless told not to,
installs the app's dependencies at run time. :class:`LocalSimulation` fixes
all three: it starts that SuperLink itself (same command, chosen ports, its
own ``FLWR_HOME``) so it knows the PID, runs ``flwr run --stream``, reads the
run's real status with ``flwr ls --run-id ID --format json``, and stops every
process it started, by PID, when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fedshrink.errors import ConfigError, FedShrinkError

FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


# Flower's simulation engine runs on Ray, a large install that the in-process engine and deployment do
# without; it comes with this extra (as with Flower's own ``flwr[simulation]``)
SIMULATION_EXTRA = "pip install 'fedshrink[simulation]'"


class FlowerRunError(FedShrinkError):
    """``flwr run`` did not finish with status ``finished:completed``."""


def require_ray(key: str, value: object) -> None:
    """Fail at start with one line naming ``key`` when what it asks for needs Ray and Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(key, value, f"only with Flower's simulation engine (Ray) installed: {SIMULATION_EXTRA}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """Environment for every Flower process fedshrink starts: no runtime installs, no telemetry."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["FLWR_HOME"] = str(flwr_home)
    bin_dir = str(Path(sys.executable).parent)  # the CLIs find flower-superexec via PATH
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


@dataclass(frozen=True)
class FlowerRun:
    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed"
    details: dict[str, Any]  # the run's entry in `flwr ls --format json`
    output: str  # what `flwr run --stream` printed


class LocalSimulation:
    """A simulation-mode SuperLink on 127.0.0.1 that this object starts and stops.

    Use as a context manager; :meth:`run` submits the app with ``flwr run``.
    """

    def __init__(self, flwr_home: Path | None = None, *, startup_timeout: float = 30.0,
                 ray_address: str = "") -> None:
        self._own_home = flwr_home is None
        self.flwr_home = Path(flwr_home or tempfile.mkdtemp(prefix="fedshrink-flwr-"))
        self.http_port = free_port()
        self.control_port = free_port()
        self.startup_timeout = startup_timeout
        self.env = flower_env(
            self.flwr_home,
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(self.http_port),
            FLWR_LOCAL_CONTROL_API_PORT=str(self.control_port),
        )
        if ray_address:  # Flower's Ray backend calls ray.init(), which joins the cluster RAY_ADDRESS names
            self.env["RAY_ADDRESS"] = ray_address
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.flwr_home / "local-superlink" / "superlink.log"

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> LocalSimulation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            flwr_cli("flower-superlink"),
            "--insecure", "--simulation", "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
            "--control-api-address", f"127.0.0.1:{self.control_port}",
            "--host", "127.0.0.1", "--port", str(self.http_port),
            "--log-file", str(self.log_path),
            "--database", str(self.log_path.parent / "state.db"),
        ]
        self.process = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while not self._healthy():
            if self.process.poll() is not None:
                raise FlowerRunError(f"flower-superlink exited with code {self.process.returncode}; "
                                     f"see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise FlowerRunError(f"flower-superlink not healthy after {self.startup_timeout:.0f}s")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=0.5).is_success
        except httpx.HTTPError:
            return False

    def pids(self) -> list[int]:
        """The SuperLink and every process below it (superexec, ServerApp, Ray ...)."""
        if self.process is None:
            return []
        return [p.pid for p in process_tree(self.process.pid)]

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the SuperLink's whole process tree: SIGTERM, then SIGKILL after ``timeout``."""
        if self.process is None:
            return
        stop_processes(process_tree(self.process.pid), timeout=timeout)
        self.process.wait(timeout=5)
        self.process = None
        if self._own_home:
            shutil.rmtree(self.flwr_home, ignore_errors=True)

    # -- runs ------------------------------------------------------------------------
    def run(
        self,
        app_dir: Path,
        overrides: Mapping[str, Any],
        *,
        num_supernodes: int,
        cpus_per_client: int = 1,
        timeout: float = 1800.0,
        echo: bool = True,
    ) -> FlowerRun:
        """``flwr run APP --stream`` on this SuperLink; the real status comes from ``flwr ls``."""
        with staged_app(app_dir) as app:
            cmd = [flwr_cli(), "run", str(app), "--stream"]
            if overrides:
                cmd += ["--run-config", run_config_arg(overrides)]
            cmd += ["--federation-config",
                    f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}"]
            returncode, output = stream_command(cmd, self.env, app, timeout=timeout, echo=echo)
        run_id = parse_run_id(output, returncode)
        details = self.run_details(run_id)
        return FlowerRun(run_id=run_id, status=str(details.get("status", "unknown")), details=details,
                         output=output)

    def run_details(self, run_id: int, *, settle: float = 30.0) -> dict[str, Any]:
        """The run's entry in ``flwr ls --run-id ID --format json``, once it has finished."""
        return flwr_run_details(self.env, run_id, settle=settle)


# -- helpers shared with fedshrink.deploy ----------------------------------------------


def flwr_cli(name: str = "flwr") -> str:
    """A Flower command from this interpreter's environment (``flwr``, ``flower-superlink`` ...)."""
    return str(Path(sys.executable).parent / name)


def stream_command(cmd: list[str], env: Mapping[str, str], cwd: Path, *, timeout: float,
                   echo: bool) -> tuple[int, str]:
    """Run ``cmd``, echoing its output as it comes; kill it after ``timeout`` s. Returns (exit code, output)."""
    lines: list[str] = []
    proc = subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
        if time.monotonic() > deadline:
            proc.kill()
            break
    proc.wait()
    return proc.returncode, "".join(lines)


@contextlib.contextmanager
def staged_app(app_dir: Path) -> Iterator[Path]:
    """A copy of the Flower app in ``app_dir`` without what its ``.gitignore`` leaves out, for ``flwr run``.

    ``flwr run DIR`` lists every file under ``DIR`` before it drops the ignored ones, and fedshrink's app
    directory is its checkout, with the virtual environment and the runs inside (about 69,000 files here):
    that listing took 11 s of CPU per ``flwr run`` here, against 0.15 s for this copy and its FAB. The copy
    never enters an ignored directory (nor ``.git``, which holds no app source), so it holds the files Flower
    would have packed, the root ``.gitignore`` included (Flower applies it again), and the FAB is the same.
    Removed when the block ends.
    """
    import pathspec

    root = Path(app_dir).resolve()
    gitignore = root / ".gitignore"
    spec = pathspec.GitIgnoreSpec.from_lines(gitignore.read_text().splitlines() if gitignore.is_file() else [])
    with tempfile.TemporaryDirectory(prefix="fedshrink-app-") as tmp:
        dest = Path(tmp) / root.name
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            rel = Path(dirpath).relative_to(root)
            dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__")  # symlinks: never entered
                           and not spec.match_file(f"{(rel / d).as_posix()}/")]
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_symlink() or spec.match_file((rel / name).as_posix()):
                    continue
                (dest / rel).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest / rel / name)
        yield dest


def parse_run_id(output: str, returncode: int) -> int:
    """The run id ``flwr run`` printed, else :class:`FlowerRunError` with the end of its output."""
    match = re.search(r"Successfully started run (\d+)", output)
    if match is None:
        raise FlowerRunError(f"flwr run did not start a run (exit {returncode}):\n{output[-2000:]}")
    return int(match.group(1))


def flwr_json(args: list[str], env: Mapping[str, str], *, timeout: float = 60.0) -> dict[str, Any]:
    """``flwr ARGS --format json`` parsed; :class:`FlowerRunError` when it prints no JSON object."""
    out = subprocess.run([flwr_cli(), *args, "--format", "json"], env=dict(env), capture_output=True, text=True,
                         timeout=timeout)
    start = out.stdout.find("{")
    try:
        parsed = json.loads(out.stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise FlowerRunError(f"flwr {' '.join(args)} gave no JSON (exit {out.returncode}): "
                             f"{out.stdout[-500:]} {out.stderr[-500:]}")
    return parsed


def flwr_run_details(env: Mapping[str, str], run_id: int, *, connection: str | None = None,
                     settle: float = 30.0) -> dict[str, Any]:
    """The run's entry in ``flwr ls [CONNECTION] --run-id ID --format json``, once it has finished
    (or after ``settle`` s)."""
    args = ["ls", *([connection] if connection else []), "--run-id", str(run_id)]
    deadline = time.monotonic() + settle
    while True:
        runs = flwr_json(args, env).get("runs", [])
        entry: dict[str, Any] = next((r for r in runs if str(r.get("run-id")) == str(run_id)), {})
        if str(entry.get("status", "")).startswith("finished") or time.monotonic() > deadline:
            return dict(entry)
        time.sleep(1.0)


def process_tree(pid: int, create_time: float | None = None) -> list[psutil.Process]:
    """Process ``pid`` and every process below it; empty when it is gone (or, given ``create_time``,
    when the PID now belongs to another process)."""
    try:
        root = psutil.Process(pid)
        if create_time is not None and abs(root.create_time() - create_time) > 0.01:
            return []
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_processes(procs: list[psutil.Process], *, timeout: float = 15.0) -> None:
    """SIGTERM each process, SIGKILL those still alive after ``timeout`` s, and reap them."""
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
