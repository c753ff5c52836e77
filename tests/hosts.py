"""A real two-host Ray cluster on one machine, for tests/test_cluster_hosts.py.

The "worker host" is a network namespace joined to this one by a veth pair (each end its own IP), with its own
hostname (``unshare --uts``) and, where a test asks, its own mounts (``unshare --mount``). Ray is started the way
users start it: ``ray start --head`` here, ``ray start --address`` there, each node with its own ``--temp-dir``.
Storage is an S3 server (moto) listening on this end of the veth pair, reached through ``AWS_ENDPOINT_URL``.

Every process is started in a process group of its own and ended by that group; the namespace and the veth pair
are removed at the end. Only loopback and the addresses of the namespace made here are used. Needs root.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


BIN = Path(sys.executable).parent
WORKER_HOSTNAME = "adder-worker-host"


def prerequisites() -> Optional[str]:
    """Why this machine cannot build the cluster, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("nsenter", "util-linux"),
                          ("mount", "mount")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` ({package})"
    if not (BIN / "moto_server").exists():
        return "needs moto_server (pip install 'moto[server]': the dev extra)"
    try:
        import aiohttp  # noqa: F401  ray[default]: the job server of `ray job submit`
    except ImportError:
        return "needs ray[default] (the dev extra) for the job server"
    return None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


@dataclass
class Proc:
    """A process started in its own process group; ``stop`` ends the whole group."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> None:
        if self.popen.poll() is not None and not self._group_alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        deadline = time.time() + timeout
        while time.time() < deadline and self._group_alive():
            time.sleep(0.3)
        if self._group_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a lost machine)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        deadline = time.time() + 20
        while time.time() < deadline and self._group_alive():
            time.sleep(0.2)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text()[-n:]
        except OSError:
            return ""


@dataclass
class TwoHosts:
    """The namespace, the S3 server, the head node (this host) and the worker node (the namespace)."""

    base: Path
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    subnet: int = field(default_factory=lambda: 100 + os.getpid() % 150)
    procs: list = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    head: Optional[Proc] = None
    worker: Optional[Proc] = None
    s3: Optional[Proc] = None
    # Ray's node temp dirs: short, as Ray's unix sockets live there and their paths must stay under 108 bytes
    ray_tmp: Path = field(default_factory=lambda: Path(__import__("tempfile").mkdtemp(prefix="adr", dir="/tmp")))

    @property
    def ns(self) -> str:
        return f"adder-w{self.tag}"

    @property
    def host_ip(self) -> str:
        return f"10.231.{self.subnet}.1"

    @property
    def worker_ip(self) -> str:
        return f"10.231.{self.subnet}.2"

    @property
    def token_file(self) -> Path:
        return self.base / "cluster_token"

    # -- the network ---------------------------------------------------------------------------------------------
    def make_network(self) -> None:
        host_if, ns_if = f"avh{self.tag}", f"avn{self.tag}"
        _sh("ip", "netns", "add", self.ns)
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", self.ns)
        _sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.worker_ip}/24", "dev", ns_if)
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", ns_if, "up")
        _sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        # A real host has a default route; Ray's C++ side finds its own IP by routing towards a public address
        # and, without a route, advertises 127.0.0.1 -- which the other host cannot call back. Nothing is sent.
        _sh("ip", "netns", "exec", self.ns, "ip", "route", "add", "default", "via", self.host_ip)

    def set_link(self, up: bool) -> None:
        """Cut the worker host off (``up`` False) or connect it again: this host's end of the veth pair down or
        up. Packets between the hosts are then dropped -- the worker host sees its calls time out, as across a
        failed switch -- while this host keeps its own addresses (the GCS, S3)."""
        _sh("ip", "link", "set", f"avh{self.tag}", "up" if up else "down")

    def remove_network(self) -> None:
        subprocess.run(["ip", "link", "del", f"avh{self.tag}"], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    # -- environments ----------------------------------------------------------------------------------------------
    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host_ip}:{self.s3_port}"

    def env(self, **extra: str) -> dict:
        """The environment of every process of the cluster and its drivers: S3 through AWS_ENDPOINT_URL, the
        cluster's token file, nothing of the user's ~/.ray."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.s3_endpoint,
                    "RAY_AUTH_TOKEN_PATH": str(self.token_file), "PATH": f"{BIN}:{env.get('PATH', '')}",
                    "PYTHONUNBUFFERED": "1", "RAY_AIR_NEW_OUTPUT": "0"})
        env.pop("PYTHONPATH", None)
        env.update(extra)
        return env

    def spawn(self, name: str, cmd: list[str], env: dict, cwd: Optional[Path] = None) -> Proc:
        log = self.base / f"{name}.log"
        f = open(log, "ab")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(cwd or self.base),
                             start_new_session=True)
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def worker_host_command(self, shell: str, mount_private: Optional[Path] = None) -> list[str]:
        """The command line that starts the worker host: its network namespace, its own hostname, process table
        (Ray drivers find their node by listing processes) and mounts -- with ``mount_private``, an empty tmpfs
        over that path that only this host sees -- then runs ``shell`` as the host's first process."""
        prefix = f"hostname {WORKER_HOSTNAME}; "
        if mount_private is not None:
            prefix += f"mount -t tmpfs tmpfs {mount_private}; "
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--pid", "--fork", "--mount-proc",
                "sh", "-c", prefix + shell]

    def in_worker_host(self, shell: str) -> list[str]:
        """A command line that runs ``shell`` on the running worker host (all of its namespaces)."""
        return ["nsenter", "--target", str(self.worker_init_pid()), "--net", "--uts", "--pid", "--mount", "--",
                "sh", "-c", shell]

    def worker_init_pid(self) -> int:
        """The worker host's first process, as this host sees it (the child of ``unshare --fork``)."""
        assert self.worker is not None
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                kids = Path(f"/proc/{self.worker.popen.pid}/task/{self.worker.popen.pid}/children").read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.1)
        raise RuntimeError("the worker host has no first process")

    # -- services ----------------------------------------------------------------------------------------------------
    def start_s3(self) -> None:
        self.s3_port = free_port(self.host_ip)
        self.s3 = self.spawn("moto", [str(BIN / "moto_server"), "-H", self.host_ip, "-p", str(self.s3_port)],
                             self.env())
        self._wait_tcp(self.host_ip, self.s3_port, 60, self.s3)
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.s3_endpoint, access_key="testing", secret_key="testing",
                               region="us-east-1", allow_bucket_creation=True)
        fs.create_dir("studies")

    def s3_fs(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.s3_endpoint, access_key="testing", secret_key="testing",
                                 region="us-east-1")

    def start_head(self) -> None:
        self.token_file.write_text(self.token)
        self.gcs_port = free_port(self.host_ip)
        self.dashboard_port = free_port(self.host_ip)
        temp = self.ray_tmp / "h"
        temp.mkdir(exist_ok=True)
        self.head = self.spawn("head", [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", self.host_ip,
            "--port", str(self.gcs_port), "--num-cpus", "1", "--temp-dir", str(temp),
            "--include-dashboard", "true", "--dashboard-host", self.host_ip,
            "--dashboard-port", str(self.dashboard_port), "--disable-usage-stats",
            # this host may run other Rays (the tests' embedded one): no fixed default ports
            "--dashboard-agent-listen-port", str(free_port(self.host_ip)),
            "--ray-client-server-port", str(free_port(self.host_ip)),
            "--metrics-export-port", str(free_port(self.host_ip))],
            self.env(RAY_AUTH_MODE="token", RAY_JOB_STOP_WAIT_TIME_S="30"))
        self._wait_tcp(self.host_ip, self.gcs_port, 90, self.head)
        self._wait_tcp(self.host_ip, self.dashboard_port, 90, self.head)

    @property
    def address(self) -> str:
        return f"{self.host_ip}:{self.gcs_port}"

    def worker_python(self) -> Path:
        """A Python that has every dependency but not adder-sweep: a second venv whose .pth file points at this
        venv's site-packages, where the editable install's own .pth is then never processed."""
        venv = self.base / "worker-venv"
        if not venv.exists():
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
            import sysconfig

            site = Path(sysconfig.get_paths()["purelib"])
            ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
            (venv / "lib" / ver / "site-packages" / "main_venv.pth").write_text(str(site) + "\n")
        return venv / "bin" / "python"

    def start_worker(self, mount_private: Optional[Path] = None) -> None:
        """Start the worker host's node and wait until the cluster is the head and this node: a node lost just
        before (SIGKILLed) stays listed alive until its health checks fail, and a driver's probe refuses it."""
        before = self.alive_node_ids()
        temp = self.ray_tmp / f"w{len(self.procs)}"
        temp.mkdir(exist_ok=True)
        py = self.worker_python()
        ray_start = (f"exec {py} -c 'from ray.scripts.scripts import main; main()' start --block "
                     f"--address {self.address} --node-ip-address {self.worker_ip} --num-cpus 1 "
                     f"--temp-dir {temp} --disable-usage-stats")
        self.worker = self.spawn("worker", self.worker_host_command(ray_start, mount_private),
                                 self.env(RAY_AUTH_MODE="token"), cwd=Path("/"))
        deadline = time.time() + 150
        while time.time() < deadline:
            if self.worker.popen.poll() is not None:
                raise RuntimeError(f"worker node exited: {self.worker.tail()}")
            alive = self.alive_node_ids()
            if len(alive) == 2 and alive - before:
                return
            time.sleep(1)
        raise RuntimeError(f"worker node did not join, or a lost one stayed listed: {self.worker.tail()}")

    def alive_node_ids(self) -> set[str]:
        out = subprocess.run([str(BIN / "python"), "-c", (
            "import ray, json; ray.init(address=%r, logging_level='ERROR');"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))") % self.address],
            capture_output=True, text=True, env=self.env(RAY_AUTH_MODE="token"), timeout=120)
        try:
            return set(json.loads(out.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return set()

    def _wait_tcp(self, host: str, port: int, timeout: float, proc: Proc) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited: {proc.tail()}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{proc.name} did not listen on {host}:{port}: {proc.tail()}")

    # -- drivers -------------------------------------------------------------------------------------------------------
    def adder_sweep(self, *args: str, env: Optional[dict] = None, on_worker_host: bool = False,
                    timeout: float = 400) -> subprocess.CompletedProcess:
        """Run the CLI as a user would (this venv's ``adder-sweep``), on this host or the worker host."""
        cmd = [str(BIN / "adder-sweep"), *args]
        if on_worker_host:
            cmd = self.in_worker_host("exec " + " ".join(_quote(c) for c in cmd))
        return subprocess.run(cmd, capture_output=True, text=True, env=env or self.env(), cwd=str(self.base),
                              timeout=timeout, start_new_session=True)

    def start_driver(self, name: str, *args: str) -> Proc:
        return self.spawn(name, [str(BIN / "adder-sweep"), *args], self.env())

    def close(self) -> None:
        """SIGKILL every process group (a throwaway cluster: nothing in it needs a graceful end, and `ray start
        --block` takes ~30 s to wind down after SIGTERM), then remove the network."""
        for p in reversed(self.procs):
            p.kill()
        self.remove_network()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def read_json_lines(fs, path: str) -> list[dict]:
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError):
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
