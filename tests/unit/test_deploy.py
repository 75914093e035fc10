"""Deployment helpers that need no running federation: credentials, run config, CLI checks."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import tomli
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
)

from fedbatch.config import ConfigError
from fedbatch.deploy.federation import LocalFederation, free_port
from fedbatch.deploy.security import make_node_keys, make_tls
from fedbatch.engine.deployment import RunDirectory, run_config_toml
from fedbatch.metrics.sink import ROW_LINE, SUMMARY_LINE
from tests.conftest import read_rows, tiny_config


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    files = make_tls(tmp_path, ["127.0.0.1", "superlink.example"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature does not check out
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_node_keys_are_an_openssh_ec_pair(tmp_path):
    keys = make_node_keys(tmp_path, "node-0")
    private = load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # what Flower's node auth reads
    public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    assert keys.public_key.read_bytes() == public
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600


def test_run_config_carries_the_config_exactly(tmp_path):
    cfg = tiny_config(engine={"app_dir": 'a "b" \\ ü'})
    parsed = tomli.loads(run_config_toml(cfg, tmp_path))
    assert parsed == {"fedbatch-config": cfg.to_json(), "output-dir": "", "resume": False}
    assert json.loads(parsed["fedbatch-config"])["engine"]["app_dir"] == 'a "b" \\ ü'


def test_a_shared_run_directory_is_where_the_server_writes_and_resumes(tmp_path):
    cfg = tiny_config(engine={"name": "deployment", "shared_dir": True})
    run_dir = tmp_path / 'a "run" ü'
    parsed = tomli.loads(run_config_toml(cfg, run_dir, resume=True))
    assert parsed["output-dir"] == str(run_dir.resolve())
    assert parsed["resume"] is True
    streamed = RunDirectory(tmp_path, rounds=1, shared=True)  # the ServerApp writes the files
    assert streamed.take(ROW_LINE + json.dumps({"round": 1, "test_accuracy": 0.5}) + "\n")
    assert streamed.take(SUMMARY_LINE + json.dumps({"rounds_completed": 1}))
    streamed.close()
    assert streamed.summary == {"rounds_completed": 1}
    assert list(tmp_path.iterdir()) == []


def test_streamed_rows_and_summary_become_the_run_directory_files(tmp_path, capsys):
    rows = [{"round": 0, "test_accuracy": None}, {"round": 1, "test_accuracy": 0.5}]
    run_dir = RunDirectory(tmp_path, rounds=1)
    lines = [ROW_LINE + json.dumps(r) + "\n" for r in rows]
    lines += ["INFO: something else\n", SUMMARY_LINE + json.dumps({"rounds_completed": 1})]
    kept = [run_dir.take(line) for line in lines]
    run_dir.close()
    assert kept == [True, True, False, True]
    assert read_rows(tmp_path) == rows
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rounds_completed": 1}
    assert "round 1/1: test accuracy 0.5000" in capsys.readouterr().out


def test_deployment_engine_settings_are_checked():
    cfg = tiny_config(engine={"name": "deployment", "federation": "lab", "round_timeout": 30})
    assert (cfg.engine.federation, cfg.engine.round_timeout) == ("lab", 30.0)
    with pytest.raises(ConfigError, match=r"engine\.round_timeout"):
        tiny_config(engine={"name": "deployment", "round_timeout": 0})


def test_free_ports_can_be_bound():
    for _ in range(5):
        port = free_port()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if the port were taken
        assert 1024 <= port < 65536


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "2", "num_clients=3"], "num_clients is set by the launcher"),
        (["--nodes", "0"], "--nodes=0 is invalid"),
        (["--nodes", "2", "client.bogus=1"], "client.bogus is not a key"),
        (["--insecure", "--tls"], "--insecure turns TLS and SuperNode authentication off"),
        (["--insecure", "--auth"], "leave out --tls, --auth"),
        (["--device", "gpu"], "--device=gpu is invalid: allowed auto, cpu, or cuda[:i]"),
    ],
)
def test_local_launcher_rejects_bad_input_before_starting_anything(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "fedbatch.deploy", "local", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_credentials_are_made_once_and_replaced_only_with_force(tmp_path):
    def credentials(*extra: str) -> subprocess.CompletedProcess[str]:
        args = ["credentials", "--out", str(tmp_path), "--host", "10.0.0.5", "--nodes", "2"]
        return subprocess.run(
            [sys.executable, "-m", "fedbatch.deploy", *args, *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert credentials().returncode == 0
    ca = (tmp_path / "certs" / "ca.crt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [
        "node-0", "node-0.pub", "node-1", "node-1.pub"
    ]  # fmt: skip
    again = credentials()
    assert again.returncode == 2 and "--force" in again.stderr
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == ca  # nothing overwritten
    assert credentials("--force").returncode == 0
    assert (tmp_path / "certs" / "ca.crt").read_bytes() != ca


@pytest.mark.parametrize(
    ("out", "extra", "message"),
    [
        ("afile/creds", [], "--out {tmp}/afile/creds cannot be written: Not a directory"),
        ("creds", ["--nodes", "-1"], "--nodes=-1 is invalid: allowed an integer >= 0"),
    ],
)
def test_credentials_that_cannot_be_made_are_one_line(tmp_path, out, extra, message):
    (tmp_path / "afile").write_text("")
    args = ["credentials", "--out", str(tmp_path / out), "--host", "10.0.0.5", *extra]
    done = subprocess.run(
        [sys.executable, "-m", "fedbatch.deploy", *args], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "fedbatch.deploy: error: "
        + message.format(tmp=tmp_path)
        + (f" ({tmp_path}/afile/creds/certs)" if "afile" in out else "")
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible here")
def test_a_cuda_device_without_cuda_is_refused_before_anything_starts(tmp_path):
    args = ["local", "--device", "cpu", "--device", "cuda:0", "--workdir", str(tmp_path / "w")]
    done = subprocess.run(
        [sys.executable, "-m", "fedbatch.deploy", *args], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "fedbatch.deploy: error: --device=cuda:0 is invalid: allowed auto, cpu, or cuda[:i] "
        "on a machine with CUDA (none is visible here)"
    ]
    assert not (tmp_path / "w").exists()


def test_credentials_and_work_dirs_are_private_whatever_the_umask(tmp_path):
    federation = LocalFederation(tmp_path / "work", nodes=1)
    previous = os.umask(0)
    try:
        federation.prepare()  # the work dir, logs, TLS credentials, FLWR_HOME
        keys = make_node_keys(tmp_path / "work" / "keys", "node-0")
    finally:
        os.umask(previous)
    assert federation.credentials is not None
    work = tmp_path / "work"
    modes = {
        path: stat.S_IMODE(path.stat().st_mode)
        for path in [work, *work.iterdir(), *(work / "certs").iterdir(), *(work / "keys").iterdir()]
    }
    assert modes == {
        work: 0o700,
        work / "logs": 0o700,
        work / "certs": 0o700,
        work / "keys": 0o700,
        federation.home: 0o700,
        federation.credentials.ca_cert: 0o644,
        federation.credentials.server_cert: 0o644,
        federation.credentials.server_key: 0o600,
        keys.public_key: 0o644,
        keys.private_key: 0o600,
    }
