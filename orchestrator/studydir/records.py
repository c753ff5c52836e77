"""What makes a run or study reproducible: versions, command line, and atomic writes of records."""
from __future__ import annotations

import errno
import json
import os
import platform
import shlex
import socket
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

PACKAGES = ("adder-sweep", "torch", "ray", "pyarrow", "numpy", "pandas", "tensorboard", "pyyaml", "optuna", "matplotlib")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results (read from metadata, nothing imported)."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> dict[str, Any]:
    """The code that ran: the git commit and whether the checkout had uncommitted changes, when adder-sweep runs
    from a checkout; else the installed package version."""
    import subprocess

    root = Path(__file__).resolve().parents[2]  # the checkout: orchestrator/studydir/records.py
    out: dict[str, Any] = {}
    try:
        out["package"] = metadata.version("adder-sweep")
    except metadata.PackageNotFoundError:
        pass
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10)
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            if commit.returncode == 0:
                out["commit"] = commit.stdout.strip()
                out["dirty"] = bool(status.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


def command_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    prog = "adder-sweep" if argv and Path(argv[0]).name in ("adder-sweep", "__main__.py", "cli.py") else argv[0]
    return shlex.join([prog, *argv[1:]])


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | os.PathLike, data: bytes | str, *more: bytes, chunks: Iterable[bytes] = (),
                 keep_if: Optional[Callable[[Path], bool]] = None) -> Optional[Path]:
    """Write a file so readers see the old or the new content, never a half-written one; ``more`` chunks, then
    those ``chunks`` yields, follow ``data`` (so a large file need not be held in memory). ``keep_if``: given the new
    file (still under a temporary name) once all is written; if it says False, that file is dropped, the old one
    kept, and None returned."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            for chunk in more:
                f.write(chunk)
            for chunk in chunks:
                f.write(chunk)
        if keep_if is not None and not keep_if(Path(tmp)):
            Path(tmp).unlink(missing_ok=True)
            return None
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            from ..errors import StorageFull

            raise StorageFull(f"{path}: not written: no space left on device (the file as it was is kept); free "
                              "space there, then run the command again") from None
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def parquet_bytes(table) -> bytes:
    """A pyarrow Table serialised as a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_parquet_atomic(table, path: str | os.PathLike) -> Path:
    """Write a pyarrow Table through a temp file and a rename."""
    return write_atomic(path, parquet_bytes(table))


def check_writable_dir(path: Path, what: str) -> None:
    """Raise UserError unless ``path`` exists as a directory we can write, or can be created."""
    from ..errors import UserError

    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {probe} is not writable")
