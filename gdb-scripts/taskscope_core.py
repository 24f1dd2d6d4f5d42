"""Debugger-independent half of taskscope's gdb and lldb support.

The debugger front ends (taskscope_gdb.py, taskscope_lldb.py) decode
nothing themselves.  For each command they start ``taskscope
debugger-serve``, send it a description of the program the debugger holds
(executable, threads with their registers, mapped files) and then answer
its memory reads until it sends back the text to print.  The analysis is the
one ``taskscope dump`` runs on a core or a pid, so both always agree.

Protocol (one JSON object per line, both ways):

* front end -> analyzer: ``{"command": ..., "target": {...}}``
* analyzer -> front end: ``{"read": [[addr, len], ...]}``, answered with
  ``{"data": ["<hex>" | null, ...]}``; repeated as often as needed
* analyzer -> front end, last: ``{"done": {"text": ...}}`` or
  ``{"error": ...}``

Reads only: the front ends never write the program's memory or registers.
This module is pure Python 3 (no gdb or lldb import) so both share it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Protocol

BANNER = "loading taskscope support"

#: Largest single range answered (the analyzer asks for pages; this only
#: bounds a corrupt request).
MAX_READ = 1 << 24


class TaskscopeError(Exception):
    """Something the user should see as one line: missing binary, failed
    analysis, a task id that does not exist."""


class Backend(Protocol):
    """What a debugger front end provides."""

    def target(self, full: bool = True) -> Dict[str, Any]:
        """The program: kind, executable, pid, core, entry, threads, mappings
        (threads and mappings only when ``full``)."""
        ...

    def read_memory(self, addr: int, length: int) -> Optional[bytes]:
        """``length`` bytes at ``addr``, or None when unreadable."""
        ...


_configured_path: Optional[str] = None


def set_taskscope_path(path: Optional[str]) -> None:
    """The ``taskscope-path`` setting of the front ends."""
    global _configured_path
    _configured_path = path or None


def find_taskscope() -> str:
    """The taskscope binary: $TASKSCOPE_BIN, the taskscope-path setting, the
    binary that wrote these scripts (``taskscope_bin.txt`` next to them),
    then PATH."""
    candidates: List[str] = []
    env = os.environ.get("TASKSCOPE_BIN")
    if env:
        candidates.append(env)
    if _configured_path:
        candidates.append(_configured_path)
    recorded = os.path.join(os.path.dirname(os.path.abspath(__file__)), "taskscope_bin.txt")
    try:
        with open(recorded, encoding="utf-8") as f:
            line = f.read().strip()
            if line:
                candidates.append(line)
    except OSError:
        pass
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which("taskscope")
    if found:
        return found
    tried = ", ".join(candidates) if candidates else "no TASKSCOPE_BIN, no taskscope-path"
    raise TaskscopeError(
        "cannot find the taskscope binary (tried " + tried + ", and PATH); "
        "install it (cargo install taskscope-cli) or set TASKSCOPE_BIN"
    )


def _hex_or_none(backend: Backend, addr: Any, length: Any) -> Optional[str]:
    if not isinstance(addr, int) or not isinstance(length, int):
        return None
    if addr < 0 or length <= 0 or length > MAX_READ or addr + length > 1 << 64:
        return None
    data = backend.read_memory(addr, length)
    if data is None or len(data) != length:
        return None
    return data.hex()


def run(backend: Backend, command: str, **args: Any) -> str:
    """Runs one analyzer command against the debugger's program and returns
    the text to print.  Raises TaskscopeError with the reason on failure."""
    # A future is decoded from its own memory: no thread needs unwinding.
    full = not (command == "describe" and is_future_type(str(args.get("type_name", ""))))
    request: Dict[str, Any] = {"command": command, "target": backend.target(full)}
    request.update({k: v for k, v in args.items() if v is not None})
    exe = find_taskscope()
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                [exe, "debugger-serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                bufsize=1,
            )
        except OSError as e:
            raise TaskscopeError(f"cannot start {exe}: {e}") from e
        assert proc.stdin is not None and proc.stdout is not None
        try:
            answer = _converse(backend, proc, request)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if answer is None:
            errors.seek(0)
            detail = errors.read().decode("utf-8", "replace").strip()
            raise TaskscopeError(
                f"{exe} debugger-serve stopped without an answer"
                + (f": {detail}" if detail else f" (exit status {proc.returncode})")
            )
    if "error" in answer:
        raise TaskscopeError(str(answer["error"]))
    done = answer.get("done")
    if not isinstance(done, dict) or not isinstance(done.get("text"), str):
        raise TaskscopeError("malformed answer from taskscope debugger-serve")
    text: str = done["text"]
    return text


def _converse(
    backend: Backend, proc: "subprocess.Popen[str]", request: Dict[str, Any]
) -> Optional[Dict[str, Any]]:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
    except OSError:
        return None
    while True:
        line = proc.stdout.readline()
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError as e:
            raise TaskscopeError(f"malformed line from taskscope debugger-serve: {e}") from e
        if not isinstance(message, dict):
            raise TaskscopeError("malformed line from taskscope debugger-serve")
        if "read" not in message:
            return message
        ranges = message["read"]
        data = [
            _hex_or_none(backend, r[0], r[1]) if isinstance(r, list) and len(r) == 2 else None
            for r in (ranges if isinstance(ranges, list) else [])
        ]
        try:
            proc.stdin.write(json.dumps({"data": data}) + "\n")
            proc.stdin.flush()
        except OSError:
            return None


def parse_mappings(text: str) -> List[Dict[str, Any]]:
    """Parses gdb's ``info proc mappings`` (live or core; with or without
    the Perms column) into file mappings."""
    out: List[Dict[str, Any]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].startswith("0x") or not parts[1].startswith("0x"):
            continue
        path = parts[-1]
        if not path.startswith("/"):
            continue
        try:
            start = int(parts[0], 16)
            end = int(parts[1], 16)
            offset = int(parts[3], 16)
        except ValueError:
            continue
        out.append({"start": start, "end": end, "offset": offset, "path": path})
    return out


def parse_auxv_entry(text: str) -> Optional[int]:
    """AT_ENTRY from gdb's ``info auxv``."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "AT_ENTRY":
            try:
                return int(parts[-1], 16)
            except ValueError:
                return None
    return None


def parse_core_path(text: str) -> Optional[str]:
    """The core file from gdb's ``info target`` ("Local core dump file:")."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Local core dump file" in line and i + 1 < len(lines):
            nxt = lines[i + 1].strip()
            if nxt.startswith("`") and "'" in nxt:
                return nxt[1 : nxt.index("'")]
    return None


#: Registers the analyzer unwinds with (x86-64).
REGISTERS = ("rip", "rsp", "rbp", "rbx", "r12", "r13", "r14", "r15", "fs_base")

#: Type-name fragments the pretty-printers / summary providers handle.
ASYNC_MARKERS = ("{async_fn_env#", "{async_block_env#")
TASK_HANDLE_TYPES = (
    "tokio::runtime::task::join::JoinHandle<",
    "tokio::runtime::task::abort::AbortHandle",
    "tokio::runtime::task::raw::RawTask",
    "tokio::runtime::task::core::Header",
)


def is_future_type(type_name: str) -> bool:
    """True for an async state machine (`crate::f::{async_fn_env#0}<T>`)."""
    base = type_name.split("<", 1)[0]
    return any(m in base for m in ASYNC_MARKERS)


def wants_description(type_name: str) -> bool:
    """True for values the analyzer can describe: async state machines and
    tokio task handles."""
    if is_future_type(type_name):
        return True
    return any(type_name.startswith(t) for t in TASK_HANDLE_TYPES)
