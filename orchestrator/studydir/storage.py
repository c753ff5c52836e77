"""Where studies live: a local directory or a pyarrow-supported URI (s3://, gs://, file://, ...).

All reads and writes of study records go through pyarrow.fs, so a shared path and object storage behave alike.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import UserError

if TYPE_CHECKING:
    import pyarrow.fs as pafs


def _pafs():
    """pyarrow.fs, imported on first use: commands that never touch storage (--help) skip its import time."""
    import pyarrow.fs

    return pyarrow.fs

STUDY_RECORD = "adder_study.json"


DEFAULT_STORAGE = "./results"


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/dir?endpoint_override=...`` -> (``s3://bucket/dir``, ``endpoint_override=...``)."""
    base, _, query = uri.partition("?")
    return base.rstrip("/"), query


@dataclass
class Storage:
    """A storage root. ``root`` is what the user gave (for messages, records and commands to type); ``fs`` and
    ``path`` are what pyarrow -- and Ray, given ``fs`` as its ``storage_filesystem`` -- read and write, so the
    query form of a URI (``?endpoint_override=...&region=...``) never ends up inside a path."""

    root: str  # an absolute local path, or a URI as given (query included)
    fs: pafs.FileSystem
    path: str  # root inside fs: a local path, or bucket/dir for an object store
    query: str = ""

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Storage":
        root = str(root)
        if "://" in root:
            try:
                fs, path = _pafs().FileSystem.from_uri(root)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with its own text
                raise UserError(f"--storage {root}: cannot open ({str(exc).splitlines()[0]})") from None
            if isinstance(fs, _pafs().LocalFileSystem):  # file:///abs/path is a local path
                return cls(str(Path(path).resolve()), fs, str(Path(path).resolve()))
            return cls(root, fs, path.rstrip("/"), split_uri(root)[1])
        path = str(Path(root).expanduser().resolve())
        return cls(path, _pafs().LocalFileSystem(), path)

    def flag(self) -> str:
        """`` --storage ROOT`` to repeat in a suggested command, or nothing for the default ``./results``."""
        if self.is_local and self.root == str(Path(DEFAULT_STORAGE).resolve()):
            return ""
        return f" --storage {self.root}" if "?" not in self.root else f" --storage '{self.root}'"

    @property
    def ray_path(self) -> str:
        """``storage_path`` for Ray Tune beside ``storage_filesystem=ray_filesystem``."""
        return self.path

    @property
    def ray_filesystem(self) -> Optional[pafs.FileSystem]:
        """None for a local path (Ray's default filesystem), else this pyarrow filesystem object."""
        return None if self.is_local else self.fs

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, _pafs().LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def uri(self, *parts: str) -> str:
        """``parts`` under the root as the user would write it: a local path, or a URI (query kept at the end)."""
        base, query = split_uri(self.root) if not self.is_local else (self.root, "")
        joined = "/".join([base.rstrip("/"), *parts])
        return f"{joined}?{query}" if query else joined

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != _pafs().FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == _pafs().FileType.Directory

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
        infos = self.fs.get_file_info(_pafs().FileSelector(self.path, recursive=False))
        return sorted(i.base_name for i in infos if i.type == _pafs().FileType.Directory)

    def is_full(self, below: int = 1 << 20) -> bool:
        """Whether a local storage has less than ``below`` bytes left for its user (False for object stores: they
        do not fill up this way)."""
        if not self.is_local:
            return False
        import shutil

        try:
            return shutil.disk_usage(self.path).free < below
        except OSError:
            return False

    def full_message(self, name: str) -> str:
        """The one line for a study whose storage filled up: where, that the study is saved, what to do."""
        return (f"the study storage {self.root} is full (no space left on device); the study is saved up to its "
                f"trials' last checkpoints -- free space there, then `adder-sweep resume {name}{self.flag()}`")

    def check_writable(self) -> Optional[str]:
        """Fail before anything starts if studies cannot be written here. A missing local directory is created
        with its parents, as Ray, MLflow and TensorBoard create theirs, and said on stderr; returns the topmost
        directory it created (None if it made none), so that a launch refused later can take it back."""
        if self.is_local:
            from .records import check_writable_dir

            path = Path(self.path)
            if path.exists() and not path.is_dir():
                raise UserError(f"--storage {self.root}: is a file, not a directory")
            check_writable_dir(path, "--storage")
            top = _topmost_missing(path)
            # as root, permission bits say little: write a probe file for real
            probe = path / f".adder-sweep-probe-{uuid.uuid4().hex}"
            try:
                path.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"ok")
                probe.unlink()
            except OSError as exc:
                self.remove_if_empty(top)
                what = "cannot create it" if top else "not writable"
                raise UserError(f"--storage {self.root}: {what} ({exc.strerror})") from None
            if top is not None:
                print(f"adder-sweep: created the storage folder {self.root}", file=sys.stderr)
            return top
        probe = self.join(f".adder-sweep-probe-{uuid.uuid4().hex}")
        try:
            self.fs.create_dir(self.path, recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as exc:
            raise UserError(f"--storage {self.root}: not writable ({exc})") from None
        return None

    def remove_if_empty(self, top: Optional[str]) -> None:
        """Take back the directories ``check_writable`` created (``top`` and below), if nothing was written there."""
        if top is None or not self.is_local:
            return
        for folder in sorted((p for p in Path(top).rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                folder.rmdir()
            except OSError:
                return
        try:
            Path(top).rmdir()
        except OSError:
            pass


def _topmost_missing(path: Path) -> Optional[str]:
    """The highest directory of ``path`` (itself included) that does not exist yet, or None."""
    top = None
    while not path.exists():
        top, path = path, path.parent
    return None if top is None else str(top)


def generation_parts(name: str, gen_path: str, *parts: str) -> list[str]:
    """Path parts of ``parts`` inside one generation of a study: the study root for generation 0 (gen_path ""),
    ``<study>/gen-K`` for later ones (``adder-sweep extend``)."""
    return [name, *([gen_path] if gen_path else []), *parts]


def study_location(name_or_path: str, storage_root: str) -> tuple[Storage, str]:
    """(storage, study name) for a study given by name under ``storage_root``, or by its path/URI."""
    from ..spec.space import valid_study_name

    if "://" in name_or_path or os.sep in name_or_path or name_or_path.startswith("."):
        if "://" in name_or_path:
            base, query = split_uri(name_or_path)
            parent, _, name = base.rpartition("/")
            parent = f"{parent}?{query}" if query else parent
        else:
            full = os.path.abspath(name_or_path)
            parent, name = os.path.dirname(full), os.path.basename(full)
        return Storage.open(parent), name
    if not valid_study_name(name_or_path):
        raise UserError(f"study name {name_or_path!r}: use letters, digits, '-', '_', '.' (no '/' or '..')")
    return Storage.open(storage_root), name_or_path


def read_record(storage: Storage, name: str) -> dict:
    """The study record (``adder_study.json``); UserError if the study does not exist or the record is damaged."""
    import json

    path = storage.join(name, STUDY_RECORD)
    if not storage.exists(storage.join(name)):
        raise UserError(f"no study {name!r} under {storage.root}; `adder-sweep status{storage.flag()}` lists the "
                        "studies there, `adder-sweep sweep FILE` starts one")
    if not storage.exists(path):
        raise UserError(f"{storage.uri(name)}: not an adder-sweep study (no {STUDY_RECORD})")
    try:
        record = json.loads(storage.read_text(path))
    except ValueError as exc:
        raise UserError(f"{storage.uri(name, STUDY_RECORD)}: unreadable ({exc}); the study record is damaged") from None
    if not isinstance(record, dict) or "spec" not in record:
        raise UserError(f"{storage.uri(name, STUDY_RECORD)}: damaged study record (no 'spec')")
    return record


def record_or_none(storage: Storage, name: str) -> Optional[dict]:
    """The study record, or None when it is missing or damaged: for readers that fall back to what Ray wrote
    (the tables of a study whose record is gone are still worth building); ``read_record`` says what is wrong."""
    try:
        return read_record(storage, name)
    except UserError:
        return None


def write_record(storage: Storage, name: str, record: dict) -> None:
    import json

    storage.write_text(storage.join(name, STUDY_RECORD), json.dumps(record, indent=2) + "\n")
