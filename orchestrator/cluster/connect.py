"""Connecting a study's driver to Ray, and making sure the cluster can run its trials before anything launches.

* **Which Ray.** ``--address``, else ``RAY_ADDRESS`` (what ``ray job submit`` and KubeRay's RayJob set for the
  driver), else a fresh embedded local Ray on this machine's cores.
* **Auth.** Ray 2.5x clusters may or may not use token authentication, and a driver must match: a driver that
  sends no token to a token cluster is refused, and one that turns token mode on against a cluster without it
  connects but loses every actor. Unless the user chose with ``RAY_AUTH_MODE``, the driver connects without a token
  first and, if the cluster asks for one, again with this machine's token (``RAY_AUTH_TOKEN``,
  ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); with none to offer it says which variable to set.
* **Code on the workers.** For a cluster, the ``trainables`` package is shipped with Ray's ``runtime_env``
  (``py_modules``), so trials run on nodes that do not have adder-sweep installed; ``--runtime-env`` adds what a
  user needs (pip packages, env vars). Inside a Ray job the job's own runtime_env is merged in, never overridden.
* **Probe.** Before Tune starts, one zero-CPU task per alive node, under the trials' runtime_env, imports the
  training loop and reads a marker file the driver wrote to the storage path with the filesystem object trials
  will use. A probe that fails or times out is one clear error naming the node and the likely cause.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trainables.errors import first_line

from ..errors import UserError
from ..studydir.storage import Storage

PROBE_TIMEOUT_S = float(os.environ.get("ADDER_SWEEP_PROBE_TIMEOUT_S", "120"))
CONNECT_TIMEOUT_S = 10.0
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager for a submitted job's driver
TOKEN_HINT = ("set RAY_AUTH_TOKEN to the cluster's token (the content of ~/.ray/auth_token on its head node, or "
              "`ray get-auth-token` there), or RAY_AUTH_TOKEN_PATH to a file holding it")


@dataclass
class Connection:
    address: Optional[str]  # None: the embedded local Ray
    started: bool  # we started Ray (embedded)
    auth: str  # "token" or "none"
    runtime_env: dict = field(default_factory=dict)
    owned: bool = True  # this call started Ray or connected to the cluster, so it disconnects; False: the caller's

    @property
    def embedded(self) -> bool:
        return self.address is None

    def where(self) -> str:
        return "the embedded local Ray" if self.embedded else f"the Ray cluster at {self.address}"


def resolve_address(flag: Optional[str]) -> Optional[str]:
    """The cluster to use: ``--address``, else ``RAY_ADDRESS``; None means a fresh embedded local Ray."""
    if flag:
        return flag
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or None


def _host_port(address: str) -> Optional[tuple[str, int]]:
    """(host, port) of a GCS or client address, or None for ``auto`` and forms without a port."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, socket.timeout):
            reason = f"no answer within {CONNECT_TIMEOUT_S:g}s"
        raise UserError(f"--address {address}: cannot reach {hp[0]}:{hp[1]} ({reason}); is the cluster up "
                        "(`ray status` on its head node), and is that port open from this machine (firewall)?"
                        ) from None


def _local_token() -> Optional[str]:
    """This machine's Ray token, where Ray itself looks: RAY_AUTH_TOKEN, the file at RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def gcs_auth(gcs_address: str, token: Optional[str], timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Ask the cluster's GCS for its id, with ``token`` or without: "ok", "unauthenticated" or "unreachable".
    One RPC through Ray's own generated stub; decides the auth mode before ray.init, which would otherwise retry
    for 20 s and report only "Failed to connect"."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
            return "ok"
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return "unauthenticated"
            return "unreachable"


def _gcs_address(address: str) -> Optional[str]:
    """host:port of the GCS for ``auto`` or a GCS address; None for a Ray Client address (ray://)."""
    if address.startswith("ray://"):
        return None
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            return canonicalize_bootstrap_address_or_die("auto")
        except Exception as exc:  # ConnectionError: no local cluster
            raise UserError(f"--address auto: no Ray cluster started on this machine ({first_line(exc)}); start "
                            "one with `ray start --head`, or give its address") from None
    return address.split("://", 1)[-1]


def choose_auth(address: str) -> str:
    """The auth mode to connect with ("token" or "disabled"), decided by asking the cluster (module docstring);
    UserError with the variable to set when it cannot work."""
    gcs = _gcs_address(address)
    user_mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower() or None
    if gcs is None:  # Ray Client: no GCS to ask; Ray's own rule (the user's RAY_AUTH_MODE) applies
        return user_mode or "disabled"
    without = gcs_auth(gcs, None)
    if without == "unreachable":
        raise UserError(f"--address {address}: the Ray cluster's GCS at {gcs} does not answer; is the cluster up "
                        "(`ray status` on its head node), and is the port open from this machine (firewall)?")
    if without == "ok":
        if user_mode == "token":
            raise UserError(f"--address {address}: the cluster does not use token authentication, but "
                            "RAY_AUTH_MODE=token here, which would make every trial's worker die; unset "
                            "RAY_AUTH_MODE (or set it to disabled)")
        return "disabled"
    if user_mode == "disabled":
        raise UserError(f"--address {address}: the cluster uses token authentication, but RAY_AUTH_MODE=disabled "
                        f"here; unset RAY_AUTH_MODE and {TOKEN_HINT}")
    token = _local_token()
    if token is None:
        raise UserError(f"--address {address}: the cluster uses token authentication and this machine has no "
                        f"token; {TOKEN_HINT}")
    if gcs_auth(gcs, token) != "ok":
        raise UserError(f"--address {address}: the cluster rejected this machine's token (a different cluster's "
                        f"token?); {TOKEN_HINT}")
    return "token"


def _set_auth_mode(mode: str) -> None:
    """Switch this process's Ray auth mode; Ray caches its config, so refresh it (as Ray's own setup does)."""
    os.environ["RAY_AUTH_MODE"] = mode
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def _init(address: Optional[str], runtime_env: dict) -> None:
    import ray

    ray.init(address=address or "local", runtime_env=runtime_env or None, include_dashboard=False,
             logging_level="WARNING", log_to_driver=True)


def _check_token_file() -> None:
    """A local Ray with RAY_AUTH_TOKEN_PATH naming a missing or empty file refuses to start (with a traceback):
    name the variable and what to do, before Ray starts."""
    path, mode = os.environ.get("RAY_AUTH_TOKEN_PATH"), os.environ.get("RAY_AUTH_MODE")
    if not path or os.environ.get("RAY_AUTH_TOKEN") or (mode is not None and mode.strip().lower() != "token"):
        return  # Ray reads RAY_AUTH_TOKEN first; unset, the mode is token for a local Ray
    try:
        has_token = bool(Path(path).expanduser().read_text().strip())
    except (OSError, UnicodeDecodeError):
        has_token = False
    if not has_token:
        raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: no token in that file (missing, unreadable or empty), and Ray "
                        "will not start without one; unset the variable (a local Ray then makes its own token), or "
                        "write a token into the file, e.g. python -c 'import secrets; print(secrets.token_hex(32))' "
                        f"> {path}")


def connect(address: Optional[str], runtime_env: Optional[dict] = None) -> Connection:
    """Start an embedded local Ray (``address`` None) or connect to a cluster with the auth mode it needs (module
    docstring). UserError with one line if it cannot."""
    import ray

    runtime_env = dict(runtime_env or {})
    if ray.is_initialized():  # tests and notebooks that brought their own Ray
        return Connection(address, False, os.environ.get("RAY_AUTH_MODE") or "disabled", runtime_env, owned=False)
    if address is None:
        _check_token_file()
        try:
            _init(None, runtime_env)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            raise UserError(f"local Ray: cannot start ({first_line(exc)})") from None
        return Connection(None, True, os.environ.get("RAY_AUTH_MODE") or "disabled", runtime_env)
    _check_reachable(address)
    mode = choose_auth(address)
    _set_auth_mode(mode)
    try:
        _init(address, runtime_env)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError (runtime_env), AuthenticationError
        _shutdown_quietly()
        raise UserError(f"--address {address}: cannot connect ({first_line(exc)}); is the cluster up "
                        "(`ray status`), with the same Ray and Python versions as here?") from None
    return Connection(address, False, mode, runtime_env)


def _shutdown_quietly() -> None:
    try:
        import ray

        ray.shutdown()
    except Exception:
        pass


def disconnect(conn: Connection) -> None:
    """Undo what ``connect`` did: shut down a Ray it started, leave a cluster it connected to; a Ray the caller
    had initialized before (a notebook, the tests) stays connected, as Ray Tune leaves it."""
    import ray

    if conn.owned and ray.is_initialized():
        ray.shutdown()


# -- runtime_env -----------------------------------------------------------------------------------------------
def load_runtime_env(value: Optional[str]) -> Optional[dict]:
    """``--runtime-env``: a JSON object, or a path to a JSON or YAML file holding one."""
    if value is None:
        return None
    text, where = value, "--runtime-env"
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise UserError(f"--runtime-env {value}: neither a JSON object nor a file")
        text, where = path.read_text(), str(path)
    try:
        import yaml

        env = yaml.safe_load(text)  # JSON is YAML
    except Exception as exc:
        raise UserError(f"{where}: not valid JSON/YAML ({first_line(exc)})") from None
    if not isinstance(env, dict):
        raise UserError(f"{where}: a runtime_env is a mapping such as {{\"pip\": [\"scipy\"]}}, got "
                        f"{type(env).__name__}")
    known = ("pip", "uv", "conda", "env_vars", "py_modules", "working_dir", "excludes", "container", "image_uri",
             "py_executable", "config", "nsight", "mpi", "java_jars")
    unknown = [k for k in env if k not in known]
    if unknown:
        from trainables.config import did_you_mean

        raise UserError(f"{where}: unknown runtime_env field {unknown[0]!r}{did_you_mean(unknown[0], known)}")
    return env


def project_modules() -> list[str]:
    """The packages trials import on a worker: ``trainables`` (the loop, the model, the Tune adapter)."""
    import trainables

    return [str(Path(trainables.__file__).resolve().parent)]


def job_runtime_env() -> dict:
    """The runtime_env of the Ray job this driver runs in (``ray job submit``), or {}."""
    raw = os.environ.get(JOB_CONFIG_VAR)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


def trial_runtime_env(user: Optional[dict], ship_code: bool) -> dict:
    """The runtime_env of the driver's Ray job (so of every trial and probe): the user's, plus the project's code
    when ``ship_code``, merged field by field with the job's own runtime_env when there is one."""
    env = json.loads(json.dumps(user or {}))
    if ship_code:
        mods = [m for m in env.get("py_modules", []) if m not in project_modules()]
        env["py_modules"] = mods + project_modules()
        env["excludes"] = sorted(set(env.get("excludes", [])) | {"__pycache__", "*.pyc", "*.so", "*.o"})
    job = job_runtime_env()
    if not job:
        return env
    merged = dict(job)
    for key, value in env.items():
        if key not in job:
            merged[key] = value
        elif key in ("py_modules", "excludes"):
            merged[key] = list(job[key]) + [v for v in value if v not in job[key]]
        elif key == "env_vars":
            merged[key] = {**job[key], **value}  # --runtime-env is the more specific; it wins per variable
        elif key == "pip" and isinstance(job[key], list) and isinstance(value, list):
            merged[key] = list(job[key]) + [v for v in value if v not in job[key]]
        elif job[key] != value:
            raise UserError(f"--runtime-env {key}: the Ray job this driver runs in sets {key} too "
                            f"({job[key]!r}); give it in one place (the job's runtime_env or --runtime-env)")
    # Ray refuses a ray.init runtime_env that repeats a field of the job's; ours is a superset of the job's.
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    return merged


# -- probe -----------------------------------------------------------------------------------------------------
def probe(conn: Connection, storage: Storage, *, fused: bool = False, cuda: bool = False,
          timeout: float = PROBE_TIMEOUT_S) -> list[dict]:
    """Run the node check (``trainables.tune_adapter.node_check``) on every alive node; UserError naming the
    first node that fails, with the likely cause. Returns each node's answer. ``fused``: trials build the fused
    kernel (a compiler and ninja needed); ``cuda``: trials train on CUDA, so every node that offers GPUs must have
    a torch that sees them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainables.tune_adapter import node_check

    marker_name = f".adder-sweep-probe-{uuid.uuid4().hex}"
    marker = storage.join(marker_name)
    token = uuid.uuid4().hex
    try:
        storage.write_text(marker, token)
    except Exception as exc:
        raise UserError(f"--storage {storage.root}: cannot write there ({first_line(exc)})") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        check = ray.remote(num_cpus=0, max_retries=0)(node_check)
        pending = {}
        for n in nodes:
            ref = check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                storage.fs, marker, token, fused, cuda and (n.get("Resources") or {}).get("GPU", 0) > 0)
            pending[ref] = n
        answers, deadline = [], time.monotonic() + timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                n = next(iter(pending.values()))
                raise UserError(f"cluster probe: node {_node_name(n)} did not answer within {timeout:g}s; likely "
                                "causes: its runtime_env is still being set up or failed (see the node's "
                                "runtime_env_setup logs), or the node cannot reach the head (firewall)")
            n = pending.pop(ready[0])
            try:
                answer = ray.get(ready[0])
            except Exception as exc:
                raise UserError(f"cluster probe: node {_node_name(n)} cannot run trials: {_cause(exc, conn)}") \
                    from None
            if answer.get("problem"):
                raise UserError(f"cluster probe: node {_node_name(n)} ({answer.get('host')}) cannot run trials: "
                                f"{answer['problem']}")
            _check_versions(n, answer)
            answers.append(answer)
        return answers
    finally:
        storage.delete(marker)


def _node_name(node: dict) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeID', '?')[:8]})"


def _check_versions(node: dict, answer: dict) -> None:
    import platform

    import ray

    mine = (platform.python_version_tuple()[:2], ray.__version__)
    theirs = (tuple(answer.get("python", "").split(".")[:2]), answer.get("ray"))
    if tuple(mine[0]) != theirs[0] or mine[1] != theirs[1]:
        raise UserError(f"cluster probe: node {_node_name(node)} runs Python {answer.get('python')} and Ray "
                        f"{answer.get('ray')}, this driver Python {platform.python_version()} and Ray "
                        f"{ray.__version__}; Ray needs the same versions on every node and the driver")


def _cause(exc: BaseException, conn: Connection) -> str:
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1] if lines else "")
    if "ModuleNotFoundError" in text or "ImportError" in text:
        return (f"{last[:300]}; the project's code or one of its dependencies (torch, pyarrow) is not importable "
                "there -- install them on the node, or add them with --runtime-env '{\"pip\": [...]}'")
    if "RuntimeEnvSetupError" in type(exc).__name__ or "runtime_env" in text.lower():
        return f"its runtime_env could not be set up ({last[:300]})"
    if "not schedulable" in text:
        return ("the cluster lists it as alive but it takes no tasks -- most likely it was just lost (Ray declares a "
                "lost node dead once its health checks fail, within about a minute); see `ray status`, and retry "
                "when the node is back or gone")
    if "ActorDied" in text or "died unexpectedly" in text or "WorkerCrashed" in text or "cancelled" in text:
        return f"its worker died before running the check ({last[:200]}); see the node's Ray logs"
    return last[:400] or type(exc).__name__
