//! Finding tokio's runtimes and tasks in a dump, with no help from the app.
//!
//! Path: each thread's TLS `tokio::runtime::context::CONTEXT` -> the current
//! scheduler handle (`Arc<multi_thread::Handle>` / `Arc<current_thread::Handle>`)
//! -> `shared.owned` (`OwnedTasks`: sharded lists in recent tokio, one list
//! behind a mutex in older ones) -> each task's `Header` -> its vtable, which
//! gives the trailer (intrusive list links), the task id and spawn location
//! offsets, and the poll function whose template parameter `T` is the
//! future's type. `Core<T, S>` (found by name in the DWARF index) locates the
//! future inside the task cell.
//!
//! Layouts are looked up by member names and types, never hard-coded
//! offsets, and every walk is bounded: a core taken mid-mutation may hold
//! cycles or torn pointers.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::dwarf::Type;
use crate::value::{offset_of, plausible_pointer, Reader, Value};

/// Which scheduler a runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    MultiThread,
    CurrentThread,
    /// A `tokio::task::LocalSet` (its own list of `spawn_local` tasks).
    LocalSet,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::MultiThread => "multi-thread",
            Flavor::CurrentThread => "current-thread",
            Flavor::LocalSet => "local-set",
        }
    }
}

/// A runtime found through some thread's context.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    /// Address of the scheduler handle (stable identity of the runtime).
    pub handle: u64,
    pub flavor: Flavor,
    pub workers: Option<u64>,
    pub task_count: Option<u64>,
    /// Threads (tids) whose context points at this runtime.
    pub threads: Vec<u32>,
    /// Heads of the owned-task lists.
    pub(crate) heads: Vec<u64>,
}

/// The header state word of a task, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TaskState {
    pub raw: u64,
    pub running: bool,
    pub complete: bool,
    pub notified: bool,
    pub join_interest: bool,
    pub join_waker: bool,
    pub cancelled: bool,
    pub ref_count: u64,
}

impl TaskState {
    /// tokio's state bits (stable since 1.0: `runtime/task/state.rs`).
    pub fn from_raw(raw: u64) -> TaskState {
        TaskState {
            raw,
            running: raw & 0b1 != 0,
            complete: raw & 0b10 != 0,
            notified: raw & 0b100 != 0,
            join_interest: raw & 0b1000 != 0,
            join_waker: raw & 0b1_0000 != 0,
            cancelled: raw & 0b10_0000 != 0,
            ref_count: raw >> 6,
        }
    }

    /// One word for the lifecycle: idle / notified / running / complete.
    pub fn lifecycle(&self) -> &'static str {
        if self.complete {
            "complete"
        } else if self.running {
            "running"
        } else if self.notified {
            "notified"
        } else {
            "idle"
        }
    }
}

/// A spawn location (`#[track_caller]` of `tokio::spawn`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceLocation {
    pub file: String,
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u64>,
}

impl std::fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)?;
        if let Some(c) = self.column {
            write!(f, ":{c}")?;
        }
        Ok(())
    }
}

/// A task read from a runtime's owned list.
#[derive(Debug, Clone)]
pub struct RawTask {
    pub header: u64,
    pub runtime: u64,
    pub id: Option<u64>,
    pub state: TaskState,
    pub spawned_at: Option<SourceLocation>,
    /// The future (absent once the task completed and its output is stored).
    pub future: Option<Value>,
    pub future_type: Option<String>,
    /// Stage of the task cell: "running", "finished" or "consumed".
    pub stage: Option<String>,
}

/// Offsets shared by every task of the binary.
#[derive(Debug, Clone)]
struct HeaderLayout {
    state: u64,
    vtable: u64,
    vt_poll: u64,
    vt_trailer: Option<u64>,
    vt_scheduler: Option<u64>,
    vt_id: Option<u64>,
    /// Offset of `owned.inner.next` inside the trailer (or header in old tokio).
    next_in_trailer: Option<u64>,
    next_in_header: Option<u64>,
}

/// Where the future sits inside the task cell for one vtable.
#[derive(Debug, Clone)]
struct CellLayout {
    core_ty: Rc<Type>,
    future_type: String,
}

pub struct Walker<'a> {
    pub r: Reader<'a>,
    /// Load bias of the executable (runtime address - link-time address).
    pub bias: u64,
    header: Option<HeaderLayout>,
    cells: RefCell<HashMap<u64, Option<CellLayout>>>,
    pub warnings: RefCell<Vec<String>>,
}

/// Hard bound on tasks read from one list (a corrupt list must not run away).
const MAX_TASKS_PER_LIST: usize = 5_000_000;

/// Splits `name<A, B<C, D>>` into `["A", "B<C, D>"]`.
pub fn generic_args(name: &str) -> Vec<String> {
    let Some(start) = name.find('<') else {
        return Vec::new();
    };
    let inner = &name[start + 1..name.len().saturating_sub(1)];
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in inner.chars() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

impl<'a> Walker<'a> {
    pub fn new(r: Reader<'a>, bias: u64) -> Walker<'a> {
        let mut w = Walker {
            r,
            bias,
            header: None,
            cells: RefCell::new(HashMap::new()),
            warnings: RefCell::new(Vec::new()),
        };
        w.header = w.header_layout();
        w
    }

    fn warn(&self, msg: String) {
        let mut w = self.warnings.borrow_mut();
        if !w.contains(&msg) && w.len() < 100 {
            w.push(msg);
        }
    }

    fn tokio_type(&self, name: &str) -> Option<Rc<Type>> {
        let id = *self.r.dwarf.index().tokio_types.get(name)?;
        self.r.dwarf.ty(id).ok()
    }

    fn header_layout(&self) -> Option<HeaderLayout> {
        let d = self.r.dwarf;
        let header = self.tokio_type("tokio::runtime::task::core::Header")?;
        let vtable = self.tokio_type("tokio::runtime::task::raw::Vtable")?;
        let state = header.member("state")?.offset;
        let vt = header.member("vtable")?.offset;
        let vt_field = |n: &str| vtable.member(n).map(|m| m.offset);
        let next_in_trailer = self
            .tokio_type("tokio::runtime::task::core::Trailer")
            .and_then(|t| {
                let (owned, owned_ty) = offset_of(d, &t, "owned", 1)?;
                let (next, _) = offset_of(d, &owned_ty, "next", 4)?;
                Some(owned + next)
            });
        let next_in_header = if next_in_trailer.is_none() {
            offset_of(d, &header, "owned", 1)
                .and_then(|(o, ty)| offset_of(d, &ty, "next", 4).map(|(n, _)| o + n))
        } else {
            None
        };
        Some(HeaderLayout {
            state,
            vtable: vt,
            vt_poll: vt_field("poll")?,
            vt_trailer: vt_field("trailer_offset"),
            vt_scheduler: vt_field("scheduler_offset"),
            vt_id: vt_field("id_offset"),
            next_in_trailer,
            next_in_header,
        })
    }

    /// Runtimes reachable from the given threads' TLS (tid, fs_base).
    pub fn runtimes(&self, threads: &[(u32, u64)], tls: Option<(u64, u64)>) -> Vec<RuntimeInfo> {
        let mut out: Vec<RuntimeInfo> = Vec::new();
        let Some((tls_memsz, tls_align)) = tls else {
            self.warn(
                "the executable has no TLS segment: cannot find tokio's thread contexts".into(),
            );
            return out;
        };
        let vars: Vec<_> = self
            .r
            .dwarf
            .index()
            .tls_vars
            .iter()
            .filter(|(name, _, _)| name.starts_with("tokio::runtime::context::CONTEXT"))
            .cloned()
            .collect();
        if vars.is_empty() {
            self.warn(
                "no tokio runtime context in the debug info (is this a tokio program?)".into(),
            );
            return out;
        }
        let block = tls_memsz.div_ceil(tls_align) * tls_align;
        for &(tid, fs_base) in threads {
            if fs_base == 0 {
                continue;
            }
            for (_, ty, offset) in &vars {
                let Some(ty) = ty else { continue };
                let addr = fs_base.wrapping_sub(block).wrapping_add(*offset);
                let Some(ctx) = self.r.value(addr, *ty) else {
                    continue;
                };
                let Some(current) = self.r.find(&ctx, "current", 4) else {
                    continue;
                };
                let Some(handle) = self.r.find(&current, "handle", 2) else {
                    continue;
                };
                let arcs = self.r.search(&handle, 8, false, &|t: &Type| {
                    t.name.starts_with("Arc<tokio::runtime::scheduler::")
                });
                for arc in arcs {
                    let flavor = if arc.ty.name.contains("multi_thread") {
                        Flavor::MultiThread
                    } else if arc.ty.name.contains("current_thread") {
                        Flavor::CurrentThread
                    } else {
                        continue;
                    };
                    let Some(data) = self.r.arc_data(&arc) else {
                        continue;
                    };
                    if let Some(rt) = out.iter_mut().find(|r| r.handle == data.addr) {
                        if !rt.threads.contains(&tid) {
                            rt.threads.push(tid);
                        }
                        continue;
                    }
                    if let Some(mut rt) = self.runtime_from_handle(&data, flavor) {
                        rt.threads.push(tid);
                        out.push(rt);
                    }
                }
            }
        }
        out
    }

    fn runtime_from_handle(&self, handle: &Value, flavor: Flavor) -> Option<RuntimeInfo> {
        let r = &self.r;
        let owned = r.find(handle, "owned", 3)?;
        let workers = match flavor {
            Flavor::MultiThread => r
                .find(handle, "remotes", 3)
                .and_then(|v| r.field(&v, "length"))
                .and_then(|v| r.scalar(&v)),
            Flavor::CurrentThread | Flavor::LocalSet => Some(1),
        };
        let mut heads = Vec::new();
        let mut task_count = r.find(&owned, "count", 3).and_then(|v| r.scalar(&v));
        if let Some(lists) = r.find(&owned, "lists", 3) {
            let data = r.field(&lists, "data_ptr")?;
            let len = r.field(&lists, "length").and_then(|v| r.scalar(&v))?;
            let elem_ty = data.ty.pointee()?;
            let elem = r.dwarf.ty(elem_ty).ok()?;
            let base = r.read_word(data.addr).ok()?;
            if !plausible_pointer(base) || len > 1 << 20 {
                self.warn(format!(
                    "owned-task shards at {base:#x} (count {len}) look corrupt"
                ));
                return None;
            }
            for i in 0..len {
                let shard = Value {
                    addr: base + i * elem.size,
                    ty: elem.clone(),
                };
                if let Some(head) = r.find(&shard, "head", 5).and_then(|v| r.scalar(&v)) {
                    if head != 0 {
                        heads.push(head);
                    }
                }
            }
        } else if let Some(list) = r.find(&owned, "list", 6) {
            if let Some(head) = r.find(&list, "head", 2).and_then(|v| r.scalar(&v)) {
                if head != 0 {
                    heads.push(head);
                }
            }
        }
        if task_count.is_none() {
            task_count = None;
        }
        Some(RuntimeInfo {
            handle: handle.addr,
            flavor,
            workers,
            task_count,
            threads: Vec::new(),
            heads,
        })
    }

    /// `LocalSet`s reachable from `root` (e.g. a block_on future holding
    /// `&LocalSet`), each as a pseudo-runtime over its own task list.
    pub fn local_sets(&self, root: &Value) -> Vec<RuntimeInfo> {
        let d = self.r.dwarf;
        let sets = self.r.search(root, 10, true, &|t: &Type| {
            t.name == "LocalSet" && d.qualified_name(t) == "tokio::task::local::LocalSet"
        });
        let mut out: Vec<RuntimeInfo> = Vec::new();
        for set in sets {
            if out.iter().any(|r| r.handle == set.addr) {
                continue;
            }
            // LocalSet -> Rc<Context> -> Arc<Shared> -> local_state.owned: a
            // dozen members and pointers down.
            let owned = self.r.search(&set, 16, true, &|t: &Type| {
                t.name.starts_with("LocalOwnedTasks<")
            });
            let Some(owned) = owned.first() else { continue };
            let head = self
                .r
                .find(owned, "head", 6)
                .and_then(|v| self.r.scalar(&v))
                .unwrap_or(0);
            out.push(RuntimeInfo {
                handle: set.addr,
                flavor: Flavor::LocalSet,
                workers: None,
                task_count: None,
                threads: Vec::new(),
                heads: if head != 0 { vec![head] } else { Vec::new() },
            });
        }
        out
    }

    /// Every task of a runtime's owned lists (bounded; stops at the first
    /// implausible link of each list and reports it).
    pub fn tasks(&self, rt: &RuntimeInfo, progress: &mut dyn FnMut(usize)) -> Vec<RawTask> {
        let mut out = Vec::new();
        let Some(layout) = self.header.clone() else {
            self.warn("tokio's task Header/Vtable types are missing from the debug info".into());
            return out;
        };
        let mut seen = HashSet::new();
        let limit = rt
            .task_count
            .map(|c| (c as usize).saturating_mul(2).saturating_add(1024))
            .unwrap_or(MAX_TASKS_PER_LIST)
            .min(MAX_TASKS_PER_LIST);
        for &head in &rt.heads {
            let mut cur = head;
            let mut steps = 0;
            while cur != 0 {
                if !plausible_pointer(cur) || !seen.insert(cur) {
                    self.warn(format!("task list of runtime {:#x} has a bad or repeated link {cur:#x}; stopped there", rt.handle));
                    break;
                }
                steps += 1;
                if steps > limit {
                    self.warn(format!("task list of runtime {:#x} is longer than expected; stopped after {limit} tasks", rt.handle));
                    break;
                }
                let Some((task, next)) = self.task(cur, rt.handle, &layout) else {
                    self.warn(format!("task header at {cur:#x} is unreadable"));
                    break;
                };
                out.push(task);
                if out.len() % 10_000 == 0 {
                    progress(out.len());
                }
                cur = next;
            }
        }
        out
    }

    fn task(&self, header: u64, runtime: u64, l: &HeaderLayout) -> Option<(RawTask, u64)> {
        let mem = self.r.mem;
        let state = TaskState::from_raw(mem.read_u64(header + l.state).ok()?);
        let vtable = mem.read_u64(header + l.vtable).ok()?;
        if !plausible_pointer(vtable) {
            return None;
        }
        let vt = |off: Option<u64>| off.and_then(|o| mem.read_u64(vtable + o).ok());
        let trailer = vt(l.vt_trailer);
        let next = match (l.next_in_trailer, trailer, l.next_in_header) {
            (Some(n), Some(t), _) if t < 1 << 24 => mem.read_u64(header + t + n).ok()?,
            (_, _, Some(n)) => mem.read_u64(header + n).ok()?,
            _ => 0,
        };
        let poll = mem.read_u64(vtable + l.vt_poll).ok()?;
        let cell = self.cell_layout(vtable, poll);
        let core_off = vt(l.vt_scheduler).filter(|o| *o < 1 << 24);
        let mut task = RawTask {
            header,
            runtime,
            id: None,
            state,
            spawned_at: None,
            future: None,
            future_type: cell.as_ref().map(|c| c.future_type.clone()),
            stage: None,
        };
        if let Some(id_off) = vt(l.vt_id).filter(|o| *o < 1 << 24) {
            task.id = mem.read_u64(header + id_off).ok();
        }
        if let (Some(cell), Some(core_off)) = (cell, core_off) {
            let core = Value {
                addr: header + core_off,
                ty: cell.core_ty.clone(),
            };
            if task.id.is_none() {
                task.id = self
                    .r
                    .field(&core, "task_id")
                    .and_then(|v| self.r.scalar(&v));
            }
            if let Some(loc) = self.r.field(&core, "spawned_at") {
                task.spawned_at = self.location(&loc);
            }
            if let Some(stage) = self.r.field(&core, "stage") {
                // CoreStage { stage: UnsafeCell<Stage<T>> }: the first enum inside.
                let staged = self
                    .r
                    .search(&stage, 4, false, &|t: &Type| t.variant_part().is_some())
                    .into_iter()
                    .next();
                if let Some(staged) = staged {
                    if let Some((m, v)) = self.r.variant(&staged) {
                        task.stage = Some(m.name.to_lowercase());
                        if m.name == "Running" {
                            task.future = self.r.field(&v, "__0");
                        }
                    }
                }
            }
        }
        Some((task, next))
    }

    /// Reads a `&'static Location` value.
    fn location(&self, v: &Value) -> Option<SourceLocation> {
        let loc = self.r.deref(v)?;
        // `file: &str` in older std, `filename: NonNull<str>` in newer.
        let file = self
            .r
            .field(&loc, "file")
            .or_else(|| self.r.field(&loc, "filename"))
            .and_then(|f| self.r.string(&f))?;
        let line = self.r.field(&loc, "line").and_then(|v| self.r.scalar(&v))?;
        let column = self.r.field(&loc, "col").and_then(|v| self.r.scalar(&v));
        Some(SourceLocation { file, line, column })
    }

    fn cell_layout(&self, vtable: u64, poll: u64) -> Option<CellLayout> {
        if let Some(c) = self.cells.borrow().get(&vtable) {
            return c.clone();
        }
        let found = self.find_cell_layout(poll);
        if found.is_none() {
            self.warn(format!(
                "no debug info for the task poll function at {poll:#x}: future types unknown for those tasks"
            ));
        }
        self.cells.borrow_mut().insert(vtable, found.clone());
        found
    }

    fn find_cell_layout(&self, poll: u64) -> Option<CellLayout> {
        let d = self.r.dwarf;
        let die = d.function_starting_at(poll.wrapping_sub(self.bias))?;
        let name = d.die_name(die)?;
        let args = generic_args(&name);
        let suffix = &name[name.find('<')?..];
        let core_name = format!("tokio::runtime::task::core::Core{suffix}");
        let core_ty = self.tokio_type(&core_name)?;
        let future_type = args.first().cloned().unwrap_or_default();
        Some(CellLayout {
            core_ty,
            future_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_args_split_at_top_level_commas() {
        assert_eq!(
            generic_args(
                "poll<a::b::{async_fn_env#0}, alloc::sync::Arc<x::Handle, alloc::alloc::Global>>"
            ),
            vec![
                "a::b::{async_fn_env#0}".to_string(),
                "alloc::sync::Arc<x::Handle, alloc::alloc::Global>".to_string()
            ]
        );
        assert!(generic_args("poll").is_empty());
    }

    #[test]
    fn state_bits_follow_tokio() {
        // Idle, join interest, two references.
        let s = TaskState::from_raw((2 << 6) | 0b1000);
        assert_eq!(s.lifecycle(), "idle");
        assert!(s.join_interest);
        assert_eq!(s.ref_count, 2);
        assert_eq!(TaskState::from_raw(0b101).lifecycle(), "running");
        assert_eq!(TaskState::from_raw(0b100).lifecycle(), "notified");
        assert_eq!(TaskState::from_raw(0b110).lifecycle(), "complete");
    }
}
