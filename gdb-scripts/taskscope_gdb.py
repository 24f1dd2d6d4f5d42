"""taskscope support for gdb: async tasks of a tokio program, live or post-mortem.

Commands:
    info async-tasks      table of tasks: id, state, task, where parked, awaiting
    async-bt ID|all       logical backtraces (await file:line, leaf resource)
    async-hazards         deadlocks, lost wakers, leaked tasks found in memory
    async-report          the whole `taskscope dump` report
    set taskscope-path P  the taskscope binary (default: $TASKSCOPE_BIN, PATH)

Pretty-printers: `print fut` of an async state machine
(`crate::f::{async_fn_env#0}`) shows where it is suspended and what it
awaits; a tokio JoinHandle / task header shows the task it refers to.

Decoding happens in the taskscope binary (taskscope_core.py explains the
protocol); this file only serves it memory and registers, read-only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

import gdb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taskscope_core as core  # noqa: E402


def _execute(command: str) -> str:
    try:
        out = gdb.execute(command, to_string=True)
        return out if isinstance(out, str) else ""
    except gdb.error:
        return ""


class GdbBackend:
    """The program gdb holds, read-only."""

    def __init__(self) -> None:
        inferior = gdb.selected_inferior()
        if inferior is None or inferior.pid == 0:
            raise core.TaskscopeError(
                "no process and no core file: run, attach to or open a core of a tokio program first"
            )
        self.inferior = inferior

    def _is_core(self) -> bool:
        conn = getattr(self.inferior, "connection", None)
        if conn is not None and getattr(conn, "type", None) == "core":
            return True
        return core.parse_core_path(_execute("info target")) is not None

    def _threads(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        selected = gdb.selected_thread()
        try:
            frame = gdb.selected_frame()
        except gdb.error:
            frame = None
        try:
            for t in sorted(self.inferior.threads(), key=lambda t: t.ptid[1] or t.ptid[0]):
                if not t.is_valid() or t.is_running():
                    continue
                t.switch()
                newest = gdb.newest_frame()
                regs: Dict[str, int] = {}
                for name in core.REGISTERS:
                    try:
                        regs[name] = int(newest.read_register(name)) & 0xFFFFFFFFFFFFFFFF
                    except (gdb.error, ValueError):
                        pass
                tid = t.ptid[1] or t.ptid[0]
                out.append({"tid": tid, "registers": regs})
        finally:
            if selected is not None and selected.is_valid():
                selected.switch()
                if frame is not None and frame.is_valid():
                    frame.select()
        return out

    def target(self, full: bool = True) -> Dict[str, Any]:
        progspace = self.inferior.progspace
        exe = progspace.filename if progspace is not None else None
        if not exe:
            raise core.TaskscopeError("gdb has no executable for this program (use `file PATH`)")
        is_core = self._is_core()
        entry = core.parse_auxv_entry(_execute("info auxv"))
        return {
            "kind": "core" if is_core else "process",
            "debugger": "gdb " + gdb.VERSION,
            "executable": os.path.abspath(exe),
            "core": core.parse_core_path(_execute("info target")) if is_core else None,
            "pid": self.inferior.pid,
            "entry": entry,
            "threads": self._threads() if full else [],
            # Without the entry point the mappings give the load bias.
            "mappings": (
                core.parse_mappings(_execute("info proc mappings"))
                if full or entry is None
                else []
            ),
        }

    def read_memory(self, addr: int, length: int) -> Optional[bytes]:
        try:
            return bytes(self.inferior.read_memory(addr, length))
        except (gdb.MemoryError, gdb.error, ValueError, OverflowError):
            return None


def _run(command: str, **args: Any) -> None:
    try:
        text = core.run(GdbBackend(), command, **args)
    except core.TaskscopeError as e:
        raise gdb.GdbError("taskscope: " + str(e)) from None
    gdb.write(text if text.endswith("\n") else text + "\n")


class InfoAsyncTasks(gdb.Command):
    """List the program's async tasks: id, state, task, where it is parked, what it awaits.

Usage: info async-tasks
Works on a stopped process and on a core file (tokio runtimes)."""

    def __init__(self) -> None:
        super().__init__("info async-tasks", gdb.COMMAND_STATUS)

    def invoke(self, arg: str, from_tty: bool) -> None:
        _run("tasks")


class AsyncBt(gdb.Command):
    """Logical backtrace of an async task: each await with file:line, innermost first, and the resource it waits on.

Usage: async-bt ID|all"""

    def __init__(self) -> None:
        super().__init__("async-bt", gdb.COMMAND_STACK)

    def invoke(self, arg: str, from_tty: bool) -> None:
        _run("bt", task=arg.strip() or "all")


class AsyncHazards(gdb.Command):
    """Hazards found in the program's memory: deadlock cycles, lost wakers, leaked tasks.

Usage: async-hazards"""

    def __init__(self) -> None:
        super().__init__("async-hazards", gdb.COMMAND_STATUS)

    def invoke(self, arg: str, from_tty: bool) -> None:
        _run("hazards")


class AsyncReport(gdb.Command):
    """The whole `taskscope dump` report of the program gdb holds.

Usage: async-report"""

    def __init__(self) -> None:
        super().__init__("async-report", gdb.COMMAND_STATUS)

    def invoke(self, arg: str, from_tty: bool) -> None:
        _run("report")


class TaskscopePath(gdb.Parameter):
    """Path of the taskscope binary the async commands run (default: $TASKSCOPE_BIN, then PATH)."""

    set_doc = "Set the taskscope binary used by the async commands."
    show_doc = "Show the taskscope binary used by the async commands."

    def __init__(self) -> None:
        super().__init__("taskscope-path", gdb.COMMAND_FILES, gdb.PARAM_OPTIONAL_FILENAME)
        self.value = ""

    def get_set_string(self) -> str:
        core.set_taskscope_path(str(self.value or ""))
        return ""

    def get_show_string(self, svalue: str) -> str:
        return svalue or "(not set: $TASKSCOPE_BIN, then PATH)"


class AsyncValuePrinter:
    """Shows an async state machine or tokio task handle as the analyzer describes it."""

    def __init__(self, value: Any, type_name: str) -> None:
        self.value = value
        self.type_name = type_name

    def to_string(self) -> str:
        address = self.value.address
        if address is None:
            return f"<{self.type_name} not in memory>"
        try:
            text = core.run(
                GdbBackend(),
                "describe",
                address=int(address),
                type_name=self.type_name,
            )
        except core.TaskscopeError as e:
            return f"<{self.type_name}: {e}>"
        return f"{self.type_name}: {text.rstrip()}"


def lookup_printer(value: Any) -> Optional[AsyncValuePrinter]:
    try:
        ty = value.type.strip_typedefs()
        name = ty.name or ty.tag
    except gdb.error:
        return None
    if not name or not core.wants_description(str(name)):
        return None
    return AsyncValuePrinter(value, str(name))


_REGISTERED = getattr(gdb, "_taskscope_registered", False)
if not _REGISTERED:
    gdb.write(core.BANNER + " (info async-tasks, async-bt, async-hazards, async-report)\n")
    InfoAsyncTasks()
    AsyncBt()
    AsyncHazards()
    AsyncReport()
    TaskscopePath()
    gdb.pretty_printers.append(lookup_printer)
    setattr(gdb, "_taskscope_registered", True)
