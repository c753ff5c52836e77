"""Where studies live: a local directory or a pyarrow-supported URI (s3://, gs://, file://, ...).

All reads and writes of study records go through pyarrow.fs, so a shared path and object storage behave alike.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from .errors import UserError

STUDY_RECORD = "adder_study.json"


@dataclass
class Storage:
    root: str  # what Ray gets as storage_path: an absolute local path or a URI
    fs: pafs.FileSystem
    path: str  # root inside fs

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Storage":
        root = str(root)
        if "://" in root:
            try:
                fs, path = pafs.FileSystem.from_uri(root)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with its own text
                raise UserError(f"--storage {root}: cannot open ({exc})") from None
            return cls(root, fs, path.rstrip("/"))
        path = str(Path(root).expanduser().resolve())
        return cls(path, pafs.LocalFileSystem(), path)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def uri(self, *parts: str) -> str:
        """A location Ray understands (local path or URI) for ``parts`` under the root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode())

    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic on local disks (temp + rename); object stores replace objects whole anyway."""
        if self.is_local:
            from .records import write_atomic

            write_atomic(path, data)
            return
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    def list_dirs(self) -> list[str]:
        if not self.is_dir(self.path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def check_writable(self, create: bool = False) -> None:
        """Fail before anything starts if studies cannot be written here. A local path must exist unless
        ``create`` (the default storage): a mistyped --storage should not grow a new tree silently."""
        if self.is_local:
            from .records import check_writable_dir

            path = Path(self.path)
            if path.exists() and not path.is_dir():
                raise UserError(f"--storage {self.root}: is a file, not a directory")
            if not path.exists() and not create:
                raise UserError(f"--storage {self.root}: no such directory; create it (mkdir -p {self.root}) "
                                "or choose an existing one")
            check_writable_dir(path, "--storage")
            # as root, permission bits say little: write a probe file for real
            probe = path / f".adder-sweep-probe-{uuid.uuid4().hex}"
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"ok")
                probe.unlink()
            except OSError as exc:
                raise UserError(f"--storage {self.root}: not writable ({exc.strerror})") from None
            return
        probe = self.join(f".adder-sweep-probe-{uuid.uuid4().hex}")
        try:
            self.fs.create_dir(self.path, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as exc:
            raise UserError(f"--storage {self.root}: not writable ({exc})") from None
