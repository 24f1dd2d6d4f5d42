"""gdb auto-load stub for programs that link the taskscope crate.

rustc copies this file into the program's `.debug_gdb_scripts` section
(`#![debugger_visualizer(gdb_script_file = ...)]` in taskscope's lib.rs), so
gdb offers it for every such binary (subject to `set auto-load safe-path`).
It is kept tiny: it asks the installed `taskscope` binary to write its
embedded front end (`taskscope gdb-init --print-dir`) and sources that, so
the commands always match the analyzer that decodes for them.
"""

import os
import shutil
import subprocess

import gdb


def _taskscope_autoload() -> None:
    if getattr(gdb, "_taskscope_registered", False):
        return
    exe = os.environ.get("TASKSCOPE_BIN") or shutil.which("taskscope")
    if not exe:
        gdb.write(
            "taskscope: this program links taskscope; install the taskscope command "
            "(cargo install taskscope-cli) for info async-tasks / async-bt / async-hazards\n"
        )
        return
    try:
        done = subprocess.run(
            [exe, "gdb-init", "--print-dir"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        gdb.write(f"taskscope: cannot run {exe} gdb-init: {e}\n")
        return
    script = os.path.join(done.stdout.strip(), "taskscope_gdb.py")
    if done.returncode != 0 or not os.path.isfile(script):
        gdb.write(f"taskscope: {exe} gdb-init failed: {done.stderr.strip()}\n")
        return
    gdb.execute("source " + script)


_taskscope_autoload()
