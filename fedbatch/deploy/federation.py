"""A Flower federation on this machine: one SuperLink and N SuperNodes on loopback.

Each process runs in its own session, so stopping the federation ends it with everything
it started (the SuperExec and the ServerApp/ClientApp processes), on failure and Ctrl-C
too. Ports are picked free; credentials, `FLWR_HOME` and logs live in one work directory,
for its owner only. TLS and SuperNode authentication are on unless turned off.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedbatch.deploy.security import NodeKeys, TlsFiles, make_node_keys, make_tls, private_dir

HOST = "127.0.0.1"
CONNECTION = "local"  # the SuperLink connection's name in $FLWR_HOME/config.toml
STOP_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often a SuperNode's SuperExec looks for work (`compat.SUPEREXEC_POLL_ENV`; Flower's
# default is 1 s). Set in the environment already, it is left as it is.
TASK_POLL_SECONDS = "0.1"


class FederationError(RuntimeError):
    """The federation could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def flower_command(name: str) -> str:
    """A Flower executable of this Python environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def wait_for_port(port: int, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FederationError(f"the SuperLink exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError(f"the SuperLink did not listen on port {port} within {timeout:g} s")


@dataclass
class LocalFederation:
    """`with LocalFederation(workdir, nodes=2) as federation: ...` (TLS, node auth on)."""

    workdir: Path
    nodes: int
    tls: bool = True
    auth: bool = True  # a SuperNode without a registered key cannot join
    devices: tuple[str, ...] = ()  # each SuperNode's `device`, round-robin; () = the config's
    worker: bool = True  # False: each message trains in its own process (`worker=false`)
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)
    credentials: TlsFiles | None = None

    @property
    def home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def env(self) -> dict[str, str]:
        """The environment in which `flwr` commands reach this federation as `local`.

        Flower starts its helpers (`flower-superexec`) by name: this environment's first.
        """
        from fedbatch.compat import SUPEREXEC_POLL_ENV

        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return (
            {SUPEREXEC_POLL_ENV: TASK_POLL_SECONDS}
            | os.environ
            | {
                "FLWR_HOME": str(self.home),
                "PATH": path,
            }
        )

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.prepare()
        link = self._spawn("superlink", self._superlink_args())
        wait_for_port(self.port, 60.0, link)
        for partition in range(self.nodes):
            keys = self.register(f"node-{partition}") if self.auth else None
            self.start_node(partition, keys=keys)

    def prepare(self) -> None:
        """The work directory: logs, TLS credentials and `FLWR_HOME` (no process yet)."""
        if not self.workdir.exists():  # one given that exists keeps its mode
            private_dir(self.workdir)
        private_dir(self.workdir / "logs")
        if self.tls:
            self.credentials = make_tls(self.workdir / "certs", [HOST, "localhost"])
        self._write_connection()

    def _superlink_args(self) -> list[str]:
        args = [flower_command("flower-superlink"), "--host", HOST, "--port", str(self.port)]
        args.append("--disable-runtime-dependency-installation")
        if self.credentials is None:
            args.append("--insecure")
        else:
            tls = self.credentials
            args += ["--ssl-ca-certfile", str(tls.ca_cert)]
            args += ["--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)]
        if self.auth:
            args.append("--enable-supernode-auth")
        return args

    def _write_connection(self) -> None:
        trust = (
            "insecure = true"
            if self.credentials is None
            else f'root-certificates = "{self.credentials.ca_cert.resolve()}"'
        )
        private_dir(self.home)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{HOST}:{self.port}"\n{trust}\n',
            encoding="utf-8",
        )

    def register(self, name: str) -> NodeKeys:
        """A new SuperNode key pair, registered with the SuperLink (`flwr supernode register`)."""
        keys = make_node_keys(self.workdir / "keys", name)
        command = [flower_command("flwr"), "supernode", "register", str(keys.public_key)]
        done = subprocess.run(
            [*command, CONNECTION], env=self.env, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise FederationError(f"registering {name} failed: {done.stdout}{done.stderr}")
        return keys

    def start_node(
        self,
        partition: int,
        *,
        keys: NodeKeys | None = None,
        tls: bool | None = None,
        max_retries: int | None = None,
        name: str | None = None,
    ) -> subprocess.Popen:
        """A SuperNode holding `partition`; `tls=False` on a TLS federation tries plain text.

        Its log is `logs/<name>.log` (default `node-<partition>`); its prepared data is
        kept in `nodes/node-<partition>/` (`data-cache`: built by its first ClientApp
        process, loaded by the next). Its messages run in its worker process
        (`fedbatch.federated.node_app`) unless `worker` is off.
        """
        config = f"partition-id={partition} num-partitions={self.nodes}"
        config += f" data-cache={json.dumps(str(self.node_dir(partition)))}"
        if self.devices:
            config += f' device="{self.devices[partition % len(self.devices)]}"'
        if not self.worker:
            config += " worker=false"
        args = [flower_command("flower-supernode"), "--superlink", f"{HOST}:{self.port}"]
        args += ["--port", str(free_port()), "--node-config", config]
        use_tls = self.credentials is not None if tls is None else tls
        if use_tls and self.credentials is not None:
            args += ["--root-certificates", str(self.credentials.ca_cert)]
        else:
            args.append("--insecure")
        if keys is not None:
            args += ["--auth-supernode-private-key", str(keys.private_key)]
        if max_retries is not None:
            args += ["--max-retries", str(max_retries)]
        return self._spawn(name or f"node-{partition}", args)

    def node_dir(self, partition: int) -> Path:
        return self.workdir / "nodes" / f"node-{partition}"

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with self.log(name).open("ab") as log:
            process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """End every process this federation started: SIGTERM, then SIGKILL. A second
        Ctrl-C meanwhile does not cut the cleanup short."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self) -> None:
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # stragglers in the group, if any
            process.wait()
        self.processes.clear()
        # Flower starts its ServerApp/ClientApp processes in sessions of their own; they
        # exit when they notice their parent is gone, but only after retrying a while.
        # A killed process stays readable in /proc until the kernel has torn it down, and
        # one may start another meanwhile: kill until none is left.
        deadline = time.monotonic() + STOP_SECONDS
        while (stragglers := federation_processes(self.home)) and time.monotonic() < deadline:
            for pid in stragglers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


def federation_processes(home: Path) -> list[int]:
    """Live processes started with `FLWR_HOME=home` (Linux: read from /proc; else none)."""
    marker = f"FLWR_HOME={home}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def kill_node(process: subprocess.Popen) -> None:
    """Kill a SuperNode and the processes it started, at once (a crash, not a shutdown)."""
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
