"""Provenance: what was made from which inputs, and whether it is still fresh.

One mechanism for everything tskd makes once and reuses (a trained stage, a transfer set, the teacher cache, a
grid cell's record): an ``Artifact`` is a folder whose manifest records a key — the hash of its inputs' content —
and the digests of the files that make it. It is asked "fresh?" in one place (``Artifact.fresh``), written
atomically with its manifest (``Artifact.finish``, ``write_json``), and built by one process at a time
(``Artifact.lock``, ``FolderLock``): a second run started into the same folder waits for the first or is refused
with one line naming the holder; the two never interleave writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import socket
import sys
import time
from typing import Any

from common.errors import TskdError, disk_full_error, is_write_failure

__all__ = ["Artifact", "FolderLock", "LockedError", "content_key", "cpu_name", "hidden_lock", "file_sha256",
           "module_digest", "machine", "read_json", "save_torch", "tensor_bytes", "write_json", "check_writable"]


def content_key(inputs: Any) -> str:
    """A short, stable hash of JSON-able inputs (dict keys sorted)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_bytes(tensor) -> bytes:
    """A tensor's raw values (on the CPU, contiguous), for hashing."""
    import torch

    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def module_digest(module) -> str:
    """sha256 of a module's state (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and, where ``/proc/cpuinfo`` gives them (x86 Linux), its family and model numbers, else
    what ``platform`` knows. One model name can cover several CPU generations ("AMD EPYC" did on the machines this
    project ran on), whose kernels round differently, so the numbers are part of a result's machine."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), " ".join(value.split()))
    except OSError:
        pass
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine() or "unknown CPU"
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine() -> str:
    """What a result was computed on, in one line: the CPU model, torch's thread count, the torch version and,
    where CUDA is available, the GPU. Training the same seed on another CPU or with another thread count does
    not give the same weights bit for bit (other kernels, other rounding, and a short training run amplifies
    the difference), so every record that compares runs keeps this beside its numbers."""
    import torch

    threads = torch.get_num_threads()
    line = f"{cpu_name()}, {threads} thread{'s' * (threads != 1)}, torch {torch.__version__}"
    if torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name()}"
    return line


def read_json(path: str) -> dict:
    """A small JSON record of ours, or {} when it is absent or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: str, value: Any) -> None:
    """Write JSON atomically: readers see the old file or the whole new one, never half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def save_torch(obj: Any, path: str) -> str:
    """``torch.save`` atomically: a kill or a full disk leaves the old file or none, never half of one; a failed
    write is one error naming the file, the space left on its disk and the fix."""
    import torch

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        # Through a file object, so the archive's inner folder is "archive", not the temporary file's name (which
        # holds the process id): the same weights then make the same bytes, and done.json's sha256 of them (the
        # grid's `teacher_sha256`) names the weights, not the process that wrote them.
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if is_write_failure(e):
            raise disk_full_error(e, path) from e
        raise
    return path


def check_writable(folder: str, flag: str = "--out", error: type[TskdError] = TskdError, what: str = "") -> str:
    """Create ``folder`` if needed and check a file can be written in it; returns its absolute path, or one
    error naming the folder (``what`` it is) and the option that sets it."""
    folder = os.path.abspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".tskd-write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise error(f"cannot write to {what + ' ' if what else ''}'{folder}' ({e.strerror or type(e).__name__}); choose a folder you can write "
                    f"to with {flag}.") from None
    return folder


def hidden_lock(folder: str) -> str:
    """The lock file of a folder that is replaced as a whole: ``.<name>.lock`` beside it."""
    parent, name = os.path.split(os.path.abspath(folder).rstrip("/"))
    return os.path.join(parent, f".{name}.lock")


class LockedError(TskdError):
    """Another process holds the lock of a folder this run would write."""


class FolderLock:
    """An exclusive lock on a folder (``fcntl.flock`` on ``<folder>/.tskd.lock``, or ``lock_file``), held by one
    process at a time.

    The lock file names its holder (pid, host, command, start time) for the message a second process gets.
    ``wait``: wait for the holder to finish (a shared stage another worker is building) instead of refusing.
    Re-entrant within a process: a grid holding its output folder runs pipelines into it.
    """

    _held: dict[str, int] = {}

    def __init__(self, folder: str, wait: bool = False, what: str = "this folder", lock_file: str = "") -> None:
        self.folder, self.wait, self.what = os.path.abspath(folder), wait, what
        self.path = os.path.abspath(lock_file) if lock_file else os.path.join(self.folder, ".tskd.lock")
        self._fd: int | None = None

    def holder(self) -> str:
        info = read_json(self.path)
        if not info:
            return "another process"
        return (f"process {info.get('pid')} on {info.get('host')} (`{info.get('command')}`, started "
                f"{info.get('started')})")

    def __enter__(self) -> "FolderLock":
        if FolderLock._held.get(self.path):
            FolderLock._held[self.path] += 1
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                os.close(fd)
                raise LockedError(f"{self.what} '{self.folder}' is being written by {self.holder()}. Wait for it to "
                                  "finish, or choose another output folder.") from None
            print(f"--- waiting for {self.holder()}, which is writing {self.folder}", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        FolderLock._held[self.path] = 1
        return self

    def __exit__(self, *exc) -> None:
        FolderLock._held[self.path] -= 1
        if FolderLock._held[self.path]:
            return
        del FolderLock._held[self.path]
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Artifact:
    """A folder made from ``inputs``: fresh when its manifest holds the same key and its ``outputs`` (paths
    relative to the folder) still have the digests recorded when it was finished.

    ``begin()`` marks the folder as being made with these inputs (removing the manifest, so a half-made folder is
    never taken as finished); ``resumable()`` says whether an interrupted build of the same inputs can continue;
    ``finish(**facts)`` writes the manifest atomically.
    """

    def __init__(self, folder: str, inputs: Any, outputs: tuple[str, ...] = (), manifest: str = "done.json") -> None:
        self.folder, self.inputs, self.outputs = os.path.abspath(folder), inputs, tuple(outputs)
        self.key = content_key(inputs)
        self.manifest_path = os.path.join(self.folder, manifest)
        self.pending_path = os.path.join(self.folder, "pending.json")

    def record(self) -> dict:
        return read_json(self.manifest_path)

    def _digests(self) -> dict[str, str]:
        return {name: file_sha256(os.path.join(self.folder, name)) if os.path.isfile(os.path.join(self.folder, name))
                else "" for name in self.outputs}

    def fresh(self) -> bool:
        record = self.record()
        if record.get("key") != self.key:
            return False
        digests = self._digests()
        return all(digests.values()) and record.get("digests") == digests

    def changed_since_finished(self) -> bool:
        """Finished with these inputs, but its outputs were overwritten since (e.g. by another, interrupted run)."""
        return self.record().get("key") == self.key and not self.fresh()

    def resumable(self) -> bool:
        return read_json(self.pending_path).get("key") == self.key

    def begin(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        if os.path.isfile(self.manifest_path):
            os.remove(self.manifest_path)  # from here on the folder is this build's, unfinished
        write_json(self.pending_path, {"key": self.key})

    def finish(self, **facts) -> dict:
        record = {"key": self.key, "inputs": self.inputs, "digests": self._digests(), **facts}
        write_json(self.manifest_path, record)
        if os.path.isfile(self.pending_path):
            os.remove(self.pending_path)
        return record

    def output_key(self) -> str:
        """A key for what is made from this artefact: its inputs and its outputs' content."""
        return content_key({"artifact": self.key, "digests": self.record().get("digests", {})})

    def lock(self, wait: bool = True) -> FolderLock:
        """The lock of this artefact: a hidden file beside its folder (``.<name>.lock``; a build may replace the
        folder as a whole)."""
        return FolderLock(self.folder, wait=wait, what="the folder", lock_file=hidden_lock(self.folder))
