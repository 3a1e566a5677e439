"""Real atomq binaries on free loopback ports, for the Python client's tests.

As tests/process/cluster.cc: each process gets a free port and a data dir
under a temporary directory, readiness is a successful call, and processes
are stopped by their own pid (SIGKILL, then waited for).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import grpc

from atomq.v1 import coordinator_pb2 as cpb
from atomq.v1 import coordinator_pb2_grpc as cgrpc
from atomq.v1 import participant_pb2 as ppb
from atomq.v1 import participant_pb2_grpc as pgrpc

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from ports import free_port  # noqa: E402  (shared with tests/console)
os.environ.setdefault("ATOMQ_PLAINTEXT", "1")  # the atomqctl the tests run
BIN = Path(os.environ.get("ATOMQ_BIN_DIR", ROOT / "build" / "bin"))


def make_ca(directory: Path, name: str) -> None:
    """A self-signed CA: ``name``.pem and ``name``.key in ``directory`` (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(directory / f"{name}.key"),
                    "-out", str(directory / f"{name}.pem")], check=True, capture_output=True)


def make_certificate(directory: Path, name: str, ca: str, cn: str, san: str) -> None:
    """A certificate for ``cn`` and ``san`` signed by CA ``ca``, as ``name``.pem/.key."""
    f = directory / name
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                    "-keyout", f"{f}.key", "-out", f"{f}.csr"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", f"{f}.csr", "-CA", str(directory / f"{ca}.pem"),
                    "-CAkey", str(directory / f"{ca}.key"), "-CAcreateserial", "-days", "2",
                    "-extfile", f"{f}.ext", "-out", f"{f}.pem"], check=True, capture_output=True)


class Cluster:
    """One coordinator (c1) and participants p1..pN."""

    def __init__(self, participants: int = 2, coordinator_args: Optional[List[str]] = None,
                 participant_args: Optional[List[str]] = None, tls: bool = False,
                 roles: Optional[List[str]] = None,
                 tokens: Optional[Dict[str, str]] = None, replicas: int = 1) -> None:
        """``tls``: mTLS on every link (a CA and certificates for c1, p1.. and
        "client" made with openssl in ``tls_dir``); else every process runs
        --plaintext. ``roles`` ("IDENTITY ROLES [QUEUES]" lines) turn access
        control on: every server gets a roles file with them plus c1 and each
        participant as peer and "admin" with every role, and a tokens file
        with ``tokens`` (identity -> token) plus theirs; servers dial with
        their own token, and readiness probes carry admin's. ``replicas`` > 1
        makes each participant a group (replica j of pI is process "pI-rJ")."""
        self.dir = Path(tempfile.mkdtemp(prefix="atomq-py-"))
        self.tls = tls
        self.n = participants
        self.coordinator_port = free_port()
        self.ports = {f"p{i}": free_port() for i in range(1, participants + 1)}
        self.replicas = replicas
        # pI -> [(client port, peer port)] of its replicas, when replicated.
        self.replica_ports = {p: [(free_port(), free_port()) for _ in range(replicas)]
                              for p in self.ports} if replicas > 1 else {}
        self.coordinator_args = coordinator_args or []
        self.participant_args = participant_args or []
        self.procs: Dict[str, subprocess.Popen] = {}
        if tls:
            make_ca(self.tls_dir, "ca")
            for name in ["c1", *self.ports]:
                make_certificate(self.tls_dir, name, "ca", name, f"IP:127.0.0.1,DNS:{name}")
            make_certificate(self.tls_dir, "client", "ca", "client", "DNS:client")

        self.roles = roles or []
        self.admin_token = "admin-token-0123456789abcdef" if self.roles else ""
        if self.roles:
            self._write_access_files(tokens or {})

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    def tls_args(self, name: str) -> List[str]:
        """The flags server ``name`` speaks TLS (or plaintext) with."""
        if not self.tls:
            return ["--plaintext"]
        t = self.tls_dir
        return [f"--tls_cert={t / name}.pem", f"--tls_key={t / name}.key", f"--tls_ca={t}/ca.pem",
                "--tls_client_auth=require", "--tls_reload_s=1",
                *([] if self.roles else ["--allow_anyone"])]

    def client_tls(self, name: str = "client") -> Tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) PEMs of client ``name``."""
        t = self.tls_dir
        return ((t / "ca.pem").read_bytes(), (t / f"{name}.pem").read_bytes(),
                (t / f"{name}.key").read_bytes())
    def _write_access_files(self, tokens: Dict[str, str]) -> None:
        servers = ["c1", *self.ports]
        roles = ["admin producer,consumer,operator,peer", *(f"{s} peer" for s in servers),
                 *self.roles]
        all_tokens = {"admin": self.admin_token, **{s: f"{s}-token-0123456789abcdef"
                                                    for s in servers}, **tokens}
        for name, text in [("roles", roles), ("tokens", [f"{i} {t}" for i, t in all_tokens.items()])]:
            path = self.dir / name
            path.write_text("\n".join(text) + "\n")
            path.chmod(0o600)
        for s in servers:
            path = self.dir / f"{s}.token"
            path.write_text(all_tokens[s] + "\n")
            path.chmod(0o600)

    def _access_args(self, name: str) -> List[str]:
        if not self.roles:
            return []
        return [f"--roles_file={self.dir / 'roles'}", f"--tokens_file={self.dir / 'tokens'}",
                f"--token_file={self.dir / (name + '.token')}"]

    def _metadata(self):
        return (("authorization", f"Bearer {self.admin_token}"),) if self.admin_token else ()

    @property
    def coordinator(self) -> str:
        return f"127.0.0.1:{self.coordinator_port}"

    @property
    def participants(self) -> Dict[str, str]:
        if self.replicas > 1:
            return {p: "|".join(f"127.0.0.1:{c}" for c, _ in ports)
                    for p, ports in self.replica_ports.items()}
        return {p: f"127.0.0.1:{port}" for p, port in self.ports.items()}

    def replica_address(self, p: str, j: int) -> str:
        return f"127.0.0.1:{self.replica_ports[p][j - 1][0]}"

    def leader_of(self, p: str, timeout: float = 15.0) -> int:
        """The replica of ``p`` that serves (answers ListQueues); 0 if none does."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for j in range(1, self.replicas + 1):
                if f"{p}-r{j}" not in self.procs:
                    continue
                with self._channel(self.replica_address(p, j)) as channel:
                    try:
                        pgrpc.QueueStub(channel).ListQueues(ppb.ListQueuesRequest(), timeout=0.3,
                                                            metadata=self._metadata())
                        return j
                    except grpc.RpcError:
                        pass
            time.sleep(0.02)
        return 0

    def env(self) -> Dict[str, str]:
        """Environment for a process that uses this cluster (Client.from_env)."""
        parts = ",".join(f"{p}={a}" for p, a in self.participants.items())
        return {**os.environ, "ATOMQ_COORDINATOR": self.coordinator, "ATOMQ_PARTICIPANTS": parts}

    def start_all(self) -> "Cluster":
        for p in self.ports:
            self.start_participant(p)
        self.start_coordinator()
        return self

    def _participant_args(self, p: str) -> List[str]:
        peers = ",".join(f"{q}={a}" for q, a in self.participants.items() if q != p)
        return [f"--id={p}", *self.tls_args(p), f"--coordinators=c1={self.coordinator}",
                *([f"--peers={peers}"] if peers else []),
                "--in_doubt_after_ms=300", "--resend_initial_ms=50", "--resend_max_ms=300",
                "--rpc_timeout_ms=1000", "--lease_sweep_ms=50", *self._access_args(p),
                *self.participant_args]

    def start_participant(self, p: str) -> None:
        if self.replicas > 1:
            for j in range(1, self.replicas + 1):
                self.start_replica(p, j)
            if self.leader_of(p) == 0:
                raise RuntimeError(f"{p} elected no serving leader:\n{self.logs()}")
            return
        self.kill(p)
        self._spawn(p, "atomq-participant", [
            *self._participant_args(p), f"--listen={self.participants[p]}",
            f"--data_dir={self.dir / p}"])
        self._wait(p, self.participants[p], lambda ch: pgrpc.QueueStub(ch).ListQueues(
            ppb.ListQueuesRequest(), timeout=0.3, metadata=self._metadata()))

    def start_replica(self, p: str, j: int) -> None:
        name = f"{p}-r{j}"
        self.kill(name)
        group = ",".join(f"{k}=127.0.0.1:{c}/127.0.0.1:{peer}"
                         for k, (c, peer) in enumerate(self.replica_ports[p], start=1))
        self._spawn(name, "atomq-participant", [
            *self._participant_args(p), f"--listen={self.replica_address(p, j)}",
            f"--data_dir={self.dir / name}", f"--group={group}", f"--member_id={j}",
            "--election_timeout_ms=300", "--heartbeat_ms=50"])

    def start_coordinator(self) -> None:
        self.kill("c1")
        parts = ",".join(f"{p}={a}" for p, a in self.participants.items())
        self._spawn("c1", "atomq-coordinator", [
            "--id=c1", *self.tls_args("c1"), f"--listen={self.coordinator}", f"--data_dir={self.dir / 'c1'}",
            f"--participants={parts}", "--resend_initial_ms=20", "--resend_max_ms=300",
            "--rpc_timeout_ms=1000", "--txn_timeout_ms=3000", *self._access_args("c1"),
            *self.coordinator_args])
        self._wait("c1", self.coordinator, lambda ch: cgrpc.CoordinatorStub(ch).ListTransactions(
            cpb.ListTransactionsRequest(), timeout=0.3, metadata=self._metadata()))

    def kill(self, name: str) -> None:
        """SIGKILLs one process (c1, p1, ...) by its pid and reaps it."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, keep: bool = False) -> None:
        for name in list(self.procs):
            self.kill(name)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for f in sorted(self.dir.glob("*.log")):
            text = f.read_text(errors="replace")
            out.append(f"==== {f.name}\n{text[-4000:]}")
        return "\n".join(out)

    def _spawn(self, name: str, binary: str, args: List[str]) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([str(BIN / binary), *args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def _channel(self, address: str) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(address)
        ca, cert, key = self.client_tls()
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))

    def _wait(self, name: str, address: str, probe) -> None:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited at start:\n{self.logs()}")
            # A new channel each time: a failed one waits out gRPC's backoff.
            with self._channel(address) as channel:
                try:
                    probe(channel)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"{name} did not answer within 15 s:\n{self.logs()}")
