"""taskscope support for lldb (lldb-19 with python3-lldb-19): async tasks of
a tokio program, live or post-mortem.

Load with `command script import /path/to/taskscope_lldb.py` (see
`taskscope lldb-init`).  Commands:

    async tasks           table of tasks: id, state, task, where parked, awaiting
    async bt ID|all       logical backtraces (await file:line, leaf resource)
    async hazards         deadlocks, lost wakers, leaked tasks found in memory
    async report          the whole `taskscope dump` report
    async path PATH       the taskscope binary (default: $TASKSCOPE_BIN, PATH)
    async-bt, async-hazards   the same as top-level commands, like gdb's

A summary provider shows async state machines (`{async_fn_env#N}`) and tokio
task handles (JoinHandle, AbortHandle, RawTask, the task Header) as the
analyzer describes them.

lldb decodes Rust enums wrongly and cannot find generic types by name, so
nothing here decodes: the taskscope binary does (taskscope_core.py explains
the protocol); this file serves it memory and registers, read-only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

import lldb  # type: ignore[import-not-found]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taskscope_core as core  # noqa: E402

INVALID_ADDRESS = 0xFFFFFFFFFFFFFFFF


class LldbBackend:
    """The program lldb holds, read-only."""

    def __init__(self, target: Any) -> None:
        if target is None or not target.IsValid():
            raise core.TaskscopeError("no target: open a tokio program or its core first")
        process = target.GetProcess()
        if process is None or not process.IsValid():
            raise core.TaskscopeError(
                "no process and no core file: launch, attach to or open a core of a tokio program first"
            )
        self.target_ = target
        self.process = process

    def _threads(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for i in range(self.process.GetNumThreads()):
            thread = self.process.GetThreadAtIndex(i)
            frame = thread.GetFrameAtIndex(0)
            if not frame.IsValid():
                continue
            regs: Dict[str, int] = {}
            for name in core.REGISTERS:
                reg = frame.FindRegister(name)
                if reg is not None and reg.IsValid():
                    err = lldb.SBError()
                    value = reg.GetValueAsUnsigned(err, 0)
                    if err.Success():
                        regs[name] = value
            out.append({"tid": thread.GetThreadID(), "registers": regs})
        out.sort(key=lambda t: int(t["tid"]))
        return out

    def _mappings(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for m in range(self.target_.GetNumModules()):
            module = self.target_.GetModuleAtIndex(m)
            path = module.GetFileSpec().fullpath
            if not path or not path.startswith("/"):
                continue
            for s in range(module.GetNumSections()):
                section = module.GetSectionAtIndex(s)
                start = section.GetLoadAddress(self.target_)
                size = section.GetByteSize()
                if start == INVALID_ADDRESS or size == 0:
                    continue
                out.append(
                    {
                        "start": start,
                        "end": start + size,
                        "offset": section.GetFileOffset(),
                        "path": path,
                    }
                )
        return out

    def _entry(self) -> Optional[int]:
        module = self.target_.GetModuleAtIndex(0)
        if not module.IsValid():
            return None
        addr = module.GetObjectFileEntryPointAddress()
        if not addr.IsValid():
            return None
        load = addr.GetLoadAddress(self.target_)
        return None if load == INVALID_ADDRESS else int(load)

    def target(self, full: bool = True) -> Dict[str, Any]:
        exe = self.target_.GetExecutable().fullpath
        if not exe:
            raise core.TaskscopeError("lldb has no executable for this program")
        is_core = self.process.GetPluginName() == "elf-core"
        pid = self.process.GetProcessID()
        return {
            "kind": "core" if is_core else "process",
            "debugger": lldb.SBDebugger.GetVersionString().splitlines()[0],
            "executable": exe,
            "core": None,
            "pid": pid if pid else None,
            "entry": self._entry(),
            "threads": self._threads() if full else [],
            "mappings": self._mappings() if full else [],
        }

    def read_memory(self, addr: int, length: int) -> Optional[bytes]:
        err = lldb.SBError()
        data = self.process.ReadMemory(addr, length, err)
        if not err.Success() or data is None:
            return None
        return bytes(data)


def _run(debugger: Any, result: Any, command: str, **args: Any) -> None:
    try:
        text = core.run(LldbBackend(debugger.GetSelectedTarget()), command, **args)
    except core.TaskscopeError as e:
        result.SetError("taskscope: " + str(e))
        return
    result.AppendMessage(text.rstrip("\n"))
    result.SetStatus(lldb.eReturnStatusSuccessFinishResult)


def cmd_tasks(debugger: Any, command: str, exe_ctx: Any, result: Any, internal_dict: Any) -> None:
    """List async tasks: id, state, task, where parked, what it awaits."""
    _run(debugger, result, "tasks")


def cmd_bt(debugger: Any, command: str, exe_ctx: Any, result: Any, internal_dict: Any) -> None:
    """Logical backtrace of an async task (ID or all): awaits with file:line and the leaf resource."""
    _run(debugger, result, "bt", task=command.strip() or "all")


def cmd_hazards(debugger: Any, command: str, exe_ctx: Any, result: Any, internal_dict: Any) -> None:
    """Hazards in the program's memory: deadlock cycles, lost wakers, leaked tasks."""
    _run(debugger, result, "hazards")


def cmd_report(debugger: Any, command: str, exe_ctx: Any, result: Any, internal_dict: Any) -> None:
    """The whole `taskscope dump` report of the program lldb holds."""
    _run(debugger, result, "report")


def cmd_path(debugger: Any, command: str, exe_ctx: Any, result: Any, internal_dict: Any) -> None:
    """Set the taskscope binary the async commands run."""
    core.set_taskscope_path(command.strip())
    result.AppendMessage("taskscope binary: " + (command.strip() or "(from $TASKSCOPE_BIN or PATH)"))


def summary(valobj: Any, internal_dict: Any) -> str:
    """Summary of an async state machine or tokio task handle."""
    type_name = valobj.GetType().GetName() or ""
    address = valobj.GetLoadAddress()
    if address == INVALID_ADDRESS:
        return "<not in memory>"
    try:
        text = core.run(
            LldbBackend(valobj.GetTarget()),
            "describe",
            address=int(address),
            type_name=type_name,
        )
    except core.TaskscopeError as e:
        return f"<{e}>"
    return text.rstrip()


def __lldb_init_module(debugger: Any, internal_dict: Any) -> None:
    name = __name__
    print(core.BANNER + " (async tasks, async bt, async hazards, async report)")
    run = debugger.HandleCommand
    run("command container add -h 'async tasks of tokio programs (taskscope)' async")
    run(f"command script add -o -f {name}.cmd_tasks async tasks")
    run(f"command script add -o -f {name}.cmd_bt async bt")
    run(f"command script add -o -f {name}.cmd_hazards async hazards")
    run(f"command script add -o -f {name}.cmd_report async report")
    run(f"command script add -o -f {name}.cmd_path async path")
    run(f"command script add -o -f {name}.cmd_bt async-bt")
    run(f"command script add -o -f {name}.cmd_hazards async-hazards")
    run(
        f"type summary add -w taskscope -p -r -F {name}.summary -x "
        "'^([^<]*::\\{async_(fn|block)_env#[0-9]+\\}(<.*>)?"
        "|tokio::runtime::task::(join::JoinHandle<.*>|abort::AbortHandle|raw::RawTask|core::Header))$'"
    )
    run("type category enable taskscope")
