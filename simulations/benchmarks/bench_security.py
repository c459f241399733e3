"""The attacks of an outside security review, run against a version of fedshrink, before and after their fixes.

Each attack runs in a child process whose ``PYTHONPATH`` is a checkout of fedshrink
(``--code DIR``, repeatable: e.g. a worktree of the version the review examined and
this one), so both versions are exercised by the same attack code. Attacks on the
server's reply path are malicious ClientApps wrapped around the real one and run
through ``fedshrink.runner.run_inprocess`` (the real ServerApp, ClientApp and
Strategy); the others call the deployment and checkpoint code directly. Nothing is
sent to any address but loopback: no network at all, in fact.

    python simulations/benchmarks/bench_security.py --code-at 473a17d --code . \\
        --out simulations/results/security.md

``--code-at REV`` attacks a commit of this repository, checked out for the
run with ``git worktree`` into a temporary directory and removed afterwards
(473a17d is the version the review examined).

Each attack prints one JSON object (its measured outcome); the table puts the
versions side by side. ``--fuzz N`` also runs the reply-path fuzz test of the
newest version (``tests/robust/test_robust_fuzz.py``) with N mutated replies
(the test suite runs fewer) and records the line it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RUN = {"num-server-rounds": 2, "local-epochs": 1, "distill": False, "quiet": True, "checkpoint": False,
       "profile-mix": ""}


# -- helpers that run inside the child -------------------------------------------------------------------
def _wrap(mutate: Callable[[Any, Any], None], only: int = 0) -> Any:
    """The real ClientApp, with partition ``only``'s train replies changed by ``mutate(reply, context)``."""
    from flwr.clientapp import ClientApp

    from fedshrink.client_app import app as real

    evil = ClientApp()

    def train(msg: Any, context: Any) -> Any:
        reply = real(msg, context)
        if context.node_config["partition-id"] == only:
            mutate(reply, context)
        return reply

    evil.train()(train)
    for name in ("hello", "profile"):  # the query this version asks (hello now, profile before)
        evil.query(name)(lambda msg, context: real(msg, context))
    return evil


def _run(client_app: Any = None, **settings: Any) -> dict[str, Any]:
    """A short in-process run; its status, rounds and what was dropped (or the exception that ended it)."""
    from fedshrink.report import RunDirectory
    from fedshrink.runner import run_inprocess

    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = run_inprocess({**RUN, "output-dir": tmp, **settings}, num_clients=5, client_app=client_app)
        except BaseException as exc:  # the attack ended the run: that is the outcome
            return {"status": "run aborted", "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        rounds = RunDirectory(result.run_dir).read_rounds()
        text = (result.run_dir / "metrics.jsonl").read_text()
        try:
            for line in text.splitlines():
                json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            valid = True
        except ValueError:
            valid = False
    reasons = sorted({d["reason"][:90] for r in rounds for d in r["dropped"]})
    out = {"status": result.summary["status"], "rounds": len(rounds), "accuracy": result.summary["accuracy"],
           "dropped": sum(r["clients-dropped"] for r in rounds), "reasons": reasons[:2],
           "metrics-jsonl-valid-json": valid}
    capped = [(c, r.get("train", {}).get("num-examples", 0)) for r in rounds for c in r.get("examples-capped", [])]
    if capped:  # what the server did with outlying sample-count claims, and the weight it gave them
        out["claims-capped"] = [f"{c['claimed']:.3g} -> {c['accepted']}" for c, _ in capped][:3]
        out["capped-share-of-round-weight"] = [round(c["accepted"] / total, 3) for c, total in capped if total][:3]
    return out


def _hwm_mb() -> float:
    text = Path("/proc/self/status").read_text()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("VmHWM"))) / 1024


def _metric(key: str, value: Any) -> Callable[[Any, Any], None]:
    def mutate(reply: Any, context: Any) -> None:
        reply.content["metrics"][key] = value
    return mutate


# -- the attacks -------------------------------------------------------------------------------------------
def attack_nan_partition_id() -> dict[str, Any]:
    """A reply whose metrics carry partition-id = NaN (one client, every round)."""
    return _run(_wrap(_metric("partition-id", float("nan"))))


def attack_inf_partition_id() -> dict[str, Any]:
    return _run(_wrap(_metric("partition-id", float("inf"))))


def attack_weight_hijack() -> dict[str, Any]:
    """One client of five claims 10**12 examples and sends its update sign-flipped, at its honest size."""

    def mutate(reply: Any, context: Any) -> None:
        reply.content["metrics"]["num-examples"] = 10**12
        _reencode(reply, lambda v: -v)

    clean = _run(**{"profile-mix": ""})
    attacked = _run(_wrap(mutate), **{"profile-mix": ""})
    return {**attacked, "clean-accuracy": clean.get("accuracy")}


def _reencode(reply: Any, change: Callable[[Any], Any]) -> None:
    """The reply's update decoded, changed, and encoded again as the instruction asked (chain, round, fragment)."""
    from fedshrink.compression import encode_state
    from fedshrink.compression.flower import read_update

    header = read_update(reply.content["arrays"])
    update = {k: change(v) for k, v in header.tensors.items()}
    reply.content["arrays"], _ = encode_state(update, header.chain, fragment=header.fragment, round=header.round,
                                              direction="uplink")


def attack_huge_claims() -> dict[str, Any]:
    """Three clients claim 2**63 - 1 examples each."""
    from flwr.clientapp import ClientApp

    from fedshrink.client_app import app as real

    evil = ClientApp()

    def train(msg: Any, context: Any) -> Any:
        reply = real(msg, context)
        if context.node_config["partition-id"] < 3:
            reply.content["metrics"]["num-examples"] = 2**63 - 1
        return reply

    evil.train()(train)
    for name in ("hello", "profile"):
        evil.query(name)(lambda msg, context: real(msg, context))
    return _run(evil)


def _sparse_bomb(names: list[str]) -> Any:
    """Two sparse tensors declaring 2**26 float64 elements each, about 272 bytes on the wire."""
    from flwr.app import Array, ArrayRecord

    from fedshrink.compression import encode_state
    from fedshrink.v1 import compression_pb2 as pb

    record, _ = encode_state({}, "raw", direction="uplink")  # a valid header record to build on
    out = ArrayRecord({k: record[k] for k in record.keys()})
    for name in names:
        ct = pb.CompressedTensor(name=name, shape=[2**26], dtype="float64")
        stage = ct.stages.add()
        stage.codec, stage.version, stage.ratio = "topk", 1, 1e-6
        ct.sparse.encoding = pb.INDEX_ENCODING_DELTA_VARINT
        ct.sparse.count, ct.sparse.nbytes = 1, 1
        ct.payload = b"\x00" + b"\x00" * 8
        ct.raw_nbytes = 9
        out[name] = Array(dtype="float64", shape=(2**26,), stype="fedshrink.v1", data=ct.SerializeToString())
    return out


def attack_allocation_before_checks() -> dict[str, Any]:
    """A 272-byte reply whose two sparse tensors declare 2**26 float64 elements: how much the server allocates."""
    before = _hwm_mb()

    def mutate(reply: Any, context: Any) -> None:
        reply.content["arrays"] = _sparse_bomb(["bomb-a", "bomb-b"])

    result = _run(_wrap(mutate))
    return {**result, "server-peak-rss-growth-mb": round(_hwm_mb() - before, 1)}


def attack_absurd_update() -> dict[str, Any]:
    """One finite update of 3e38 in every coordinate, under the default settings."""

    import torch

    return _run(_wrap(lambda reply, context: _reencode(reply, lambda v: torch.full_like(v, 3e38))),
                **{"profile-mix": ""})


def attack_nan_train_loss() -> dict[str, Any]:
    """A reply with train-loss = NaN: is metrics.jsonl still JSON?"""
    return _run(_wrap(_metric("train-loss", float("nan"))))


def attack_key_files() -> dict[str, Any]:
    """Make certificates under umask 0: the mode every key file had while it held the key, before any chmod."""
    import stat

    from fedshrink.deploy import certs

    seen: dict[str, int] = {}
    real_chmod = os.chmod

    def spy_chmod(path: Any, mode: int, *a: Any, **k: Any) -> None:
        if Path(path).is_file():  # the mode it had until now, with the key already written
            seen.setdefault(Path(path).name, stat.S_IMODE(Path(path).stat().st_mode))
        real_chmod(path, mode, *a, **k)

    old = os.umask(0)
    os.chmod = spy_chmod  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            certs.make_certificates(Path(tmp) / "c", ["localhost"], 1)
            for p in (Path(tmp) / "c").rglob("*"):  # files never chmodded: the mode they were created with
                if p.is_file():
                    seen.setdefault(p.name, stat.S_IMODE(p.stat().st_mode))
    finally:
        os.chmod = real_chmod  # type: ignore[assignment]
        os.umask(old)
    keys = {k: oct(m) for k, m in sorted(seen.items()) if not k.endswith((".pub", ".crt", ".pem"))}
    return {"key-file-modes-while-holding-the-key": keys,
            "readable-by-others": any(int(m, 8) & 0o044 for m in keys.values())}


def attack_bad_hosts() -> dict[str, Any]:
    from fedshrink.deploy.certs import check_host

    out = {}
    for host in ("1.2.3.999", "256.1.1.1", "fl.example.org"):
        try:
            check_host(host)
            out[host] = "accepted"
        except Exception as exc:
            out[host] = f"refused ({type(exc).__name__})"
    return out


def attack_control_api() -> dict[str, Any]:
    """Where a default deployment's SuperLink (which serves the unauthenticated Control API) listens, per the
    commands ``fedshrink deploy plan`` prints (nothing is started)."""
    import contextlib
    import io

    from fedshrink.cli import main as cli
    from fedshrink.deploy.certs import make_certificates

    with tempfile.TemporaryDirectory() as tmp:
        make_certificates(Path(tmp) / "c", ["fl.example.org"], 3)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli(["deploy", "plan", "--nodes", "3", "--certs", str(Path(tmp) / "c"), "--host", "fl.example.org"])
    text = out.getvalue()
    superlink = next((line for line in text.splitlines() if "flower-superlink" in line), "")
    host = superlink.split("--host", 1)[1].split()[0] if "--host" in superlink else "(default)"
    return {"superlink --host": host, "a Fleet gateway in front": "gateway" in text,
            "Control API only on loopback": host in ("127.0.0.1", "localhost", "::1")}


def attack_malformed_checkpoint() -> dict[str, Any]:
    import torch

    from fedshrink.robust import checkpoint

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, payload in (("no array_keys", {"format": 1, "round": 1, "arrays": {}, "strategy": "{}",
                                                 "rng": {}, "ledger": "{}"}),
                              ("array_keys not JSON", {"format": 1, "round": 1, "arrays": {}, "array_keys": "[",
                                                       "strategy": "{}", "rng": {}, "ledger": "{}"})):
            torch.save(payload, Path(tmp) / checkpoint.CHECKPOINT)
            try:
                checkpoint.load_checkpoint(Path(tmp))
                out[name] = "loaded"
            except Exception as exc:
                out[name] = type(exc).__name__
    return out


ATTACKS: dict[str, Callable[[], dict[str, Any]]] = {
    "1 NaN partition-id": attack_nan_partition_id,
    "1 Inf partition-id": attack_inf_partition_id,
    "2 weight hijack (10^12 examples, update sign-flipped)": attack_weight_hijack,
    "2 three claims of 2^63-1 examples": attack_huge_claims,
    "3 allocation before checks (272 B, 2 x 2^26 float64)": attack_allocation_before_checks,
    "5 key files under umask 0": attack_key_files,
    "5 host names 1.2.3.999, 256.1.1.1": attack_bad_hosts,
    "6 Control API of a default deployment": attack_control_api,
    "7 NaN train-loss": attack_nan_train_loss,
    "7 one finite 3e38 update": attack_absurd_update,
    "7 malformed checkpoints": attack_malformed_checkpoint,
}


def child(name: str) -> None:
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    try:
        result = ATTACKS[name]()
    except BaseException as exc:
        result = {"status": "attack failed to run", "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    result["seconds"] = round(time.time() - t0, 1)
    print("RESULT " + json.dumps(result, default=str))


def run_child(code: Path, name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run([sys.executable, __file__, "--child", name], env=env, capture_output=True, text=True,
                          cwd=code, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    return {"status": "child crashed", "stderr": proc.stderr[-300:]}


def describe(code: Path) -> str:
    rev = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    rev_text = rev.stdout.strip() or "?"
    if code.is_relative_to(tempfile.gettempdir()):  # --code-at
        return f"commit {rev_text}"
    return f"{'this checkout' if code == ROOT else code} @ {rev_text}"


@contextlib.contextmanager
def worktrees(revs: list[str]) -> Iterator[list[Path]]:
    """A temporary ``git worktree`` of this repository at each of ``revs``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="fedshrink-security-") as tmp:
        paths: list[Path] = []
        try:
            for i, rev in enumerate(revs):
                path = Path(tmp) / f"code-{i}"
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(path), rev],
                               check=True)
                paths.append(path)
            yield paths
        finally:
            for path in paths:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code-at", action="append", default=[],
                    help="a commit of this repository to attack, before the --code checkouts (repeatable)")
    ap.add_argument("--code", type=Path, action="append", help="a fedshrink checkout to attack (repeatable)")
    ap.add_argument("--attacks", nargs="*", default=list(ATTACKS))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child")
    ap.add_argument("--fuzz", type=int, default=0, help="also run the reply-path fuzz test with this many replies")
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    with worktrees(args.code_at) as at:
        attack([*at, *(c.resolve() for c in (args.code or [ROOT]))], args)


def attack(codes: list[Path], args: argparse.Namespace) -> None:
    """Run every attack against every version in ``codes``; print, and write ``--out``."""
    results = {name: {str(c): run_child(c, name) for c in codes} for name in args.attacks}
    for name, by_code in results.items():
        for code, res in by_code.items():
            print(f"{name} | {code}: {json.dumps(res, default=str)}", flush=True)
    fuzz = run_fuzz(codes[-1], args.fuzz) if args.fuzz else []
    print("\n".join(fuzz))
    if args.out:
        write(args.out, codes, results, shlex.join(sys.argv[1:]), fuzz)


def run_fuzz(code: Path, replies: int) -> list[str]:
    """The reply-path fuzz test of ``code`` with ``replies`` mutated replies: its verdict, summary line and time."""
    env = {**os.environ, "PYTHONPATH": str(code), "FEDSHRINK_FUZZ_REPLIES": str(replies)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           "tests/robust/test_robust_fuzz.py"], env=env, cwd=code, capture_output=True, text=True,
                          timeout=7200)
    summary = [line for line in proc.stdout.splitlines() if "replies in" in line]
    failed = [line.strip() for line in proc.stdout.splitlines() if line.startswith("E ")][:4]
    verdict = "passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}): {' / '.join(failed)}"
    return ["## Reply-path fuzz", "",
            f"`FEDSHRINK_FUZZ_REPLIES={replies} python -m pytest -s tests/robust/test_robust_fuzz.py` on "
            f"{describe(code)}: {verdict} in {time.time() - t0:.0f} s (host wall time). The test asserts that no "
            "reply raises anything but a drop with its reason, that every malformed kind is dropped, that the "
            "aggregate stays finite and near the global model, and that the server's peak RSS grows by under 50 MB "
            "after warm-up. It printed:", "", *(f"    {line.strip()}" for line in summary), ""]


def write(out: Path, codes: list[Path], results: dict[str, dict[str, dict[str, Any]]], argv: str,
          fuzz: list[str]) -> None:
    lines = ["# Security: the review's attacks, before and after", "",
             f"Command: `python simulations/benchmarks/bench_security.py {argv}`", "",
             "Versions attacked: " + "; ".join(f"**{chr(65 + i)}** = {describe(c)}" for i, c in enumerate(codes)),
             "", "| finding | " + " | ".join(f"outcome on {chr(65 + i)}" for i in range(len(codes))) + " |",
             "|---|" + "---|" * len(codes)]
    for name, by_code in results.items():
        cells = [json.dumps({k: v for k, v in by_code[str(c)].items() if k != "seconds"}, default=str)
                 .replace("|", "\\|") for c in codes]
        lines.append(f"| {name} | " + " | ".join(f"`{cell}`" for cell in cells) + " |")
    out.write_text("\n".join([*lines, "", *fuzz]) + "\n")


if __name__ == "__main__":
    main()
