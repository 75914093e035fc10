"""`python -m fedbatch.deploy`: Flower deployments of fedbatch.

local --nodes N [--insecure] [--device cuda:0 ...] [Hydra overrides | resume=<run dir>]
    Start a SuperLink and N SuperNodes on loopback, run the experiment on them with
    `engine=deployment` (same run directory files as `simulate`, checkpoints included;
    `hydra.run.dir=` works), and stop them all, on failure and Ctrl-C too. `resume=`
    continues an interrupted run on a fresh federation of as many nodes. TLS (a fresh
    local CA) and SuperNode authentication (one registered key pair per node) are on: a
    process that the launcher did not start cannot join. `--insecure` turns both off
    (plain text, anyone may join).
credentials --out DIR --host HOST [--host ...] --nodes N
    Make a CA, a SuperLink certificate for HOST(s) and N SuperNode key pairs for a
    deployment across machines (README, "Run on many machines").
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import NoReturn

import yaml

from fedbatch.deploy.federation import CONNECTION, FederationError, LocalFederation
from fedbatch.deploy.security import make_node_keys, make_tls
from fedbatch.run_dir import RESUME_COMMAND

SET_BY_LAUNCHER = ("num_clients", "engine", "engine.federation", "engine.shared_dir")
DEFAULT_NODES = 2
SAVE_TIMEOUT = 60.0  # seconds an interrupted run may take to save itself


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedbatch.deploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    local = commands.add_parser("local", help="a federation on this machine, for one run")
    local.add_argument(
        "--nodes",
        type=int,
        help=f"SuperNodes (= num_clients; default {DEFAULT_NODES}, or the resumed run's)",
    )
    local.add_argument(
        "--insecure", action="store_true", help="no TLS, no SuperNode authentication"
    )
    local.add_argument("--tls", action="store_true", help="TLS: the default now (a no-op)")
    local.add_argument("--auth", action="store_true", help="node auth: the default now (a no-op)")
    local.add_argument(
        "--device", action="append", default=[], help="SuperNode devices, round-robin"
    )
    local.add_argument(
        "--no-worker",
        action="store_true",
        help="each message trains in a process of its own (Flower's way; slower)",
    )
    local.add_argument("--workdir", type=Path, help="for logs, keys, FLWR_HOME (default: temp)")
    local.add_argument("--keep", action="store_true", help="keep the work dir (logs, keys)")
    credentials = commands.add_parser("credentials", help="TLS certificates and node keys")
    credentials.add_argument("--out", type=Path, required=True)
    credentials.add_argument("--host", action="append", required=True, help="SuperLink host")
    credentials.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs")
    credentials.add_argument("--force", action="store_true", help="replace existing ones")
    return parser


def _fail(message: str) -> NoReturn:
    print(f"fedbatch.deploy: error: {message}", file=sys.stderr)
    sys.exit(2)


def _simulate_args(nodes: int, overrides: list[str]) -> list[str]:
    keys = {arg.partition("=")[0] for arg in overrides}
    for key in SET_BY_LAUNCHER:
        if key in keys:
            _fail(f"{key} is set by the launcher (--nodes {nodes}): leave it out")
    launcher = ["engine=deployment", f"engine.federation={CONNECTION}", f"num_clients={nodes}"]
    launcher.append("engine.shared_dir=true")  # the ServerApp runs here: it writes the run
    if "clients_per_round" not in keys:
        launcher.append(f"clients_per_round={nodes}")
    return [sys.executable, "-m", "fedbatch.simulate", *launcher, *overrides]


def _resume_args(nodes: int | None, overrides: list[str]) -> tuple[int, list[str]]:
    """`resume=<run dir>` (alone): the nodes the run was started with, and the command."""
    if len(overrides) != 1:
        _fail("resume=<run dir> takes no other override: a run continues as it began")
    config = Path(overrides[0].partition("=")[2]) / "config.yaml"
    try:
        started = int(yaml.safe_load(config.read_text(encoding="utf-8"))["num_clients"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        _fail(f"{overrides[0]} holds no readable config.yaml: not a fedbatch run directory")
    if nodes not in (None, started):
        _fail(f"--nodes={nodes} is invalid: the run was started with --nodes {started}")
    return started, [sys.executable, "-m", "fedbatch.simulate", *overrides]


def _check_devices(devices: list[str]) -> None:
    """Refused here, not by every client once the federation has started."""
    gpus = 0
    if any(device.startswith("cuda") for device in devices):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in devices:
        match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", device)
        if match and (not device.startswith("cuda") or int(match[1] or 0) < gpus):
            continue
        where = f"with i < {gpus}" if gpus else "on a machine with CUDA (none is visible here)"
        _fail(f"--device={device} is invalid: allowed auto, cpu, or cuda[:i] {where}")


class Stopped(Exception):
    """SIGINT or SIGTERM to the launcher."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)  # unwinds through the federation's cleanup


def _run_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the experiment; on SIGINT or SIGTERM pass that one signal on and wait for it to
    save the run (its ServerApp writes the checkpoint and summary) before the federation
    stops. Its own session: a terminal's Ctrl-C reaches it only through here, once."""
    run = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        return run.wait()
    except Stopped as stopped:
        run.send_signal(stopped.signal_number)
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=SAVE_TIMEOUT)
        raise
    finally:
        if run.poll() is None:  # it did not save in time, or a second signal came
            run.kill()


def run_local(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.nodes is not None and args.nodes < 1:
        _fail(f"--nodes={args.nodes} is invalid: allowed an integer >= 1")
    if args.insecure and (args.tls or args.auth):
        _fail("--insecure turns TLS and SuperNode authentication off: leave out --tls, --auth")
    _check_devices(args.device)
    if any(arg.startswith("resume=") for arg in overrides):
        args.nodes, command = _resume_args(args.nodes, overrides)
    else:
        from fedbatch.simulate import check_overrides

        args.nodes = args.nodes or DEFAULT_NODES
        command = _simulate_args(args.nodes, overrides)
        check_overrides(command[3:])
    # Ctrl-C and SIGTERM unwind through the federation's cleanup, even where the shell
    # started this process with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedbatch-deploy-"))
    code = 1
    try:
        secure = not args.insecure
        with LocalFederation(
            workdir,
            args.nodes,
            tls=secure,
            auth=secure,
            devices=tuple(args.device),
            worker=not args.no_worker,
        ) as federation:
            env = federation.env | {RESUME_COMMAND: "python -m fedbatch.deploy local"}
            code = _run_until_stopped(command, env)
    except FederationError as error:
        print(f"fedbatch.deploy: error: {error} (logs in {workdir / 'logs'})", file=sys.stderr)
        return 1
    except Stopped as stopped:
        print("fedbatch.deploy: interrupted; the federation is stopped", file=sys.stderr)
        return 128 + stopped.signal_number
    finally:
        if code == 0 and not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if code != 0 or args.keep:
        print(f"fedbatch.deploy: logs of the federation in {workdir / 'logs'}", file=sys.stderr)
    return code


def make_credentials(args: argparse.Namespace) -> int:
    if args.nodes < 0:
        _fail(f"--nodes={args.nodes} is invalid: allowed an integer >= 0")
    if (args.out / "certs").exists() and not args.force:
        _fail(f"{args.out / 'certs'} exists: a new CA would lock out deployed nodes (--force)")
    try:
        tls = make_tls(args.out / "certs", args.host)
        node_keys = [make_node_keys(args.out / "keys", f"node-{i}") for i in range(args.nodes)]
    except OSError as error:
        _fail(f"--out {args.out} cannot be written: {error.strerror} ({error.filename})")
    print(f"CA certificate (give to SuperNodes and flwr): {tls.ca_cert}")
    print(f"SuperLink certificate and key: {tls.server_cert} {tls.server_key}")
    for i, keys in enumerate(node_keys):
        print(f"SuperNode {i} keys: {keys.private_key} (register {keys.public_key})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, rest = _parser().parse_known_args(argv)
    if args.command == "credentials":
        if rest:
            _fail(f"unknown arguments {' '.join(rest)}")
        return make_credentials(args)
    return run_local(args, rest)


if __name__ == "__main__":
    sys.exit(main())
