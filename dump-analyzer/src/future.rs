//! The async state-machine decoder: from a task's future to its logical
//! backtrace.
//!
//! rustc lowers each `async fn`/block to a struct (`…::{async_fn_env#0}`)
//! whose variant part, keyed by the artificial `__state`, says where it is
//! parked: 0 Unresumed, 1 Returned, 2 Panicked, 3+ the n-th await point. The
//! variant's member carries `DW_AT_decl_line` = the line of that `.await`,
//! and its struct holds `__awaitee`, the child future. The decoder follows
//! awaitees through boxes (`Pin<Box<dyn Future>>` resolved to the concrete
//! type from the vtable's `drop_in_place::<T>`), tokio's auto-boxing,
//! `Instrumented`, `select!`/`join!` (their `futures` tuple), `Timeout`,
//! `MaybeDone` and `Map`, down to a leaf described in user terms: which
//! mutex, which channel, which sleep deadline, which joined task.

use crate::dwarf::{Member, Type};
use crate::tokio::{RawTask, SourceLocation, Walker};
use crate::value::{plausible_pointer, Value};

/// Addresses are written as `"0x…"` strings in JSON.
mod hex_addr {
    pub fn opt<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_str(&format!("{a:#x}")),
            None => s.serialize_none(),
        }
    }
    pub fn list<S: serde::Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| format!("{a:#x}")))
    }
    pub fn pairs<S: serde::Serializer>(v: &[(u64, u64)], s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Shared {
            address: String,
            strong: u64,
        }
        s.collect_seq(v.iter().map(|(a, n)| Shared {
            address: format!("{a:#x}"),
            strong: *n,
        }))
    }
}

/// Deepest chain followed (a recursive `async fn` through boxes could go on).
const MAX_FRAMES: usize = 64;

/// One frame of a logical backtrace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Frame {
    /// The async fn (`crate::module::function`), block or combinator.
    pub function: String,
    /// `async fn`, `async block`, `box`, `combinator`.
    pub kind: &'static str,
    /// `Unresumed`, `Suspend0`, `Returned`, `Panicked`...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The `.await` this frame is parked at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
    /// Sub-chains of `select!` / `join!` branches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Chain>,
    /// Addresses of `tokio::sync::Mutex`es whose guard is a live local of
    /// this frame (the frame holds the lock across its await).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "hex_addr::list"
    )]
    pub holds: Vec<u64>,
    /// `Arc`s among this frame's live locals: (address of the shared value,
    /// strong count). Evidence for "nobody else can reach this resource".
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "hex_addr::pairs"
    )]
    pub shared: Vec<(u64, u64)>,
    /// Pointer-sized words of this frame's saved state that no DWARF member
    /// describes, when rustc's debug info lost a local: a local shadowed by
    /// one of the same name (`let mut from = from.lock().await;`) is
    /// emitted as a second member with the first one's name, type and
    /// offset, so its real storage is described by nobody. Matched against
    /// contended mutexes by the report (a `MutexGuard` is `&Mutex` plus,
    /// with tokio's tracing feature, a span).
    #[serde(skip)]
    pub undescribed_words: Vec<u64>,
    /// Mutexes found held through [`Frame::undescribed_words`]: a word of
    /// the lost local's storage is the address of a mutex another task
    /// waits to lock.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "hex_addr::list"
    )]
    pub holds_undescribed: Vec<u64>,
    /// Wakers kept by a wrapper of this frame in an `Arc` nobody else
    /// references (strong count 1, no `Weak`): the raw waker's data pointer
    /// (tokio: the task header). Only the wrapper, when polled, could use
    /// them: they cannot wake the task from outside.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "hex_addr::list"
    )]
    pub private_wakers: Vec<u64>,
    /// Addresses of taskscope task records (from its registry) that a
    /// wrapper of this frame points at: links the frame to the wrapped
    /// future's own record and its waker counts.
    #[serde(skip)]
    pub wrapper_records: Vec<u64>,
    /// Synchronous guards (std or `lock_api`/parking_lot locks, `RefCell`
    /// borrows) among the locals saved across this await: held while the
    /// task is parked (`held-across-await`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sync_guards: Vec<SyncGuard>,
}

impl Frame {
    /// `function (kind, state)`, as backtraces show a frame.
    pub fn title(&self) -> String {
        match &self.state {
            Some(state) => format!("{} ({}, {state})", self.function, self.kind),
            None => format!("{} ({})", self.function, self.kind),
        }
    }

    /// What this frame keeps locked across its await, a line each: tokio
    /// mutex guards (found by type, or as a shadowed local's lost storage)
    /// and synchronous guards.
    pub fn held(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .holds
            .iter()
            .map(|m| format!("holds tokio::sync::Mutex {m:#x} (guard alive across this await)"))
            .collect();
        out.extend(self.holds_undescribed.iter().map(|m| {
            format!(
                "holds tokio::sync::Mutex {m:#x} (guard alive across this await; \
                 a shadowed local the debug info does not describe)"
            )
        }));
        out.extend(self.sync_guards.iter().map(|g| {
            let lock = g.lock.map(|l| format!(" for {l:#x}")).unwrap_or_default();
            format!(
                "holds {}{lock} (a synchronous guard alive across this await)",
                g.display_name()
            )
        }));
        out
    }
}

/// A synchronous guard alive across an await.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncGuard {
    /// The guard's type as the debug info names it.
    pub type_name: String,
    /// The lock (or `RefCell` borrow flag) the guard points at.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_addr::opt"
    )]
    pub lock: Option<u64>,
    /// The lock's state word (`futex`, `state`, or the borrow count), when
    /// its layout is known: non-zero, or the guard would not be reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_word: Option<u64>,
}

impl SyncGuard {
    /// The guard's type as the user writes it (`std::sync::MutexGuard<String>`,
    /// not the private module path the debug info names).
    pub fn display_name(&self) -> String {
        let mut n = short(&self.type_name);
        for (private, public) in [
            ("std::sync::poison::mutex::", "std::sync::"),
            ("std::sync::poison::rwlock::", "std::sync::"),
            ("std::sync::mutex::", "std::sync::"),
            ("std::sync::rwlock::", "std::sync::"),
            ("std::sync::reentrant_lock::", "std::sync::"),
            ("lock_api::mutex::", "lock_api::"),
            ("lock_api::rwlock::", "lock_api::"),
            ("core::cell::", "std::cell::"),
            ("alloc::string::String", "String"),
        ] {
            n = n.replace(private, public);
        }
        n
    }
}

/// Whether a type is a synchronous guard: holding one across an await
/// blocks (or panics) whoever takes the lock next while the task is parked.
/// tokio's own guards are made to be held across awaits and are not.
fn is_sync_guard(name: &str) -> bool {
    let base = strip_generics(name);
    let last = base.rsplit("::").next().unwrap_or(base);
    let guard = matches!(
        last,
        "MutexGuard"
            | "MappedMutexGuard"
            | "RwLockReadGuard"
            | "RwLockWriteGuard"
            | "MappedRwLockReadGuard"
            | "MappedRwLockWriteGuard"
            | "RwLockUpgradableReadGuard"
            | "ReentrantMutexGuard"
            | "ReentrantLockGuard"
    );
    (guard
        && ["std::sync::", "lock_api::", "parking_lot::", "spin::"]
            .iter()
            .any(|p| base.starts_with(p)))
        || matches!(base, "core::cell::Ref" | "core::cell::RefMut")
}

/// A logical backtrace: outermost frame first, then what it waits on.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Chain {
    pub frames: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf: Option<Leaf>,
}

/// What the innermost future waits on, in user terms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leaf {
    /// `mutex-lock`, `semaphore-acquire`, `mpsc-send`, `mpsc-recv`,
    /// `oneshot-recv`, `sleep`, `join-handle`, `notify`, `pending`,
    /// `not-started`, `future`, `unknown`.
    pub kind: &'static str,
    pub description: String,
    /// Address of the resource (mutex, semaphore, channel), the identity
    /// shared by every task using it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_addr::opt"
    )]
    pub resource: Option<u64>,
    /// For `join-handle`: header address of the joined task.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_addr::opt"
    )]
    pub joined_task_header: Option<u64>,
    /// For `sleep`: deadline on the monotonic clock, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<f64>,
    /// For `sleep`: seconds from the core's time to the deadline (negative:
    /// overdue). The core's time is the runtime's timer clock: its start
    /// instant plus the milliseconds its timer wheel has processed, i.e.
    /// the last time the time driver ran (a dump holds no wall clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_in_secs: Option<f64>,
    pub type_name: String,
}

pub struct Decoder<'w, 'a> {
    w: &'w Walker<'a>,
}

fn short(name: &str) -> String {
    // Drop allocator noise from generic names.
    name.replace(", alloc::alloc::Global", "")
}

/// `true` when the type itself (not a generic argument) is an async state
/// machine: the last path segment, generics removed, is `{async_*_env#N}`.
fn is_async_env(name: &str) -> bool {
    let base = strip_generics(name);
    let last = base.rsplit("::").next().unwrap_or(base);
    last.starts_with("{async_fn_env#") || last.starts_with("{async_block_env#")
}

/// `a::b<c::d<e>>` -> `a::b`.
fn strip_generics(name: &str) -> &str {
    let mut depth = 0i32;
    for (i, c) in name.char_indices() {
        match c {
            '<' => {
                if depth == 0 && !name[..i].ends_with("::") {
                    return &name[..i];
                }
                depth += 1;
            }
            '>' => depth -= 1,
            _ => {}
        }
    }
    name
}

/// A function path without `{impl#N}` segments (readable, and stable
/// across tokio versions for matching).
fn plain_path(name: &str) -> String {
    strip_generics(name)
        .split("::")
        .filter(|seg| !seg.starts_with("{impl#"))
        .collect::<Vec<_>>()
        .join("::")
}

/// `2d 3h`, `23h 59m`, `4m 10s`, `12.5s`, `250ms`.
fn human_secs(s: f64) -> String {
    let whole = s as u64;
    let (d, h, m) = (whole / 86_400, whole / 3_600 % 24, whole / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", whole % 60)
    } else if s >= 1.0 {
        format!("{s:.1}s")
    } else {
        format!("{}ms", (s * 1e3).round() as u64)
    }
}

fn state_name(member: &str, ty_name: &str) -> String {
    if !ty_name.is_empty()
        && ty_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase())
    {
        return ty_name.to_string();
    }
    match member.parse::<u64>() {
        Ok(0) => "Unresumed".into(),
        Ok(1) => "Returned".into(),
        Ok(2) => "Panicked".into(),
        Ok(n) => format!("Suspend{}", n - 3),
        Err(_) => member.to_string(),
    }
}

impl<'w, 'a> Decoder<'w, 'a> {
    pub fn new(w: &'w Walker<'a>) -> Self {
        Decoder { w }
    }

    pub fn reader(&self) -> &crate::value::Reader<'a> {
        &self.w.r
    }

    /// The first async state machine reachable from `v` through pointers
    /// and wrappers (`Pin<&mut F>`, `&mut F`...).
    pub fn find_async(&self, v: &Value) -> Option<Value> {
        self.find_async_in(v, 0)
    }

    fn find_async_in(&self, v: &Value, boxes: usize) -> Option<Value> {
        if is_async_env(&self.name(&v.ty)) {
            return Some(v.clone());
        }
        let r = &self.w.r;
        if let Some(found) = r
            .search(v, 6, true, &|t: &Type| is_async_env(&self.name(t)))
            .into_iter()
            .next()
        {
            return Some(found);
        }
        // A `dyn Future` (`block_on(Box::pin(fut) as Pin<Box<dyn Future>>)`):
        // the concrete type comes from the vtable.
        if boxes >= 2 {
            return None;
        }
        let is_dyn = |t: &Type| {
            let ms = t.members();
            ms.iter().any(|m| m.name == "vtable") && ms.iter().any(|m| m.name == "pointer")
        };
        r.search(v, 4, false, &is_dyn).into_iter().find_map(|fat| {
            let data = r.read_word(r.field(&fat, "pointer")?.addr).ok()?;
            let vtable = r.read_word(r.field(&fat, "vtable")?.addr).ok()?;
            let inner = r.value(data, self.concrete_type(vtable)?)?;
            self.find_async_in(&inner, boxes + 1)
        })
    }

    fn name(&self, ty: &Type) -> String {
        self.w.r.dwarf.qualified_name(ty)
    }

    /// Decodes a task's future into a chain.
    pub fn task_report(&self, t: &RawTask) -> crate::report::TaskReport {
        let chain = match &t.future {
            Some(f) => self.chain(f),
            None => Chain::default(),
        };
        crate::report::TaskReport::new(t, chain)
    }

    /// The logical backtrace of a future value.
    pub fn chain(&self, v: &Value) -> Chain {
        let mut chain = Chain::default();
        chain.leaf = self.walk(v.clone(), &mut chain.frames, 0);
        chain
    }

    fn walk(&self, v: Value, frames: &mut Vec<Frame>, depth: usize) -> Option<Leaf> {
        if frames.len() >= MAX_FRAMES || depth > 3 * MAX_FRAMES {
            return Some(Leaf {
                kind: "future",
                description: format!("chain truncated after {MAX_FRAMES} frames"),
                resource: None,
                joined_task_header: None,
                deadline_secs: None,
                deadline_in_secs: None,
                type_name: String::new(),
            });
        }
        let r = &self.w.r;
        let name = self.name(&v.ty);
        if is_async_env(&name) {
            return self.async_frame(v, &name, frames, depth);
        }
        if let Some(leaf) = self.leaf(&v, &name) {
            return Some(leaf);
        }
        // A pointer (Box<T> of a sized future, &mut F).
        if v.ty.is_pointer() {
            let target = r.deref(&v)?;
            return self.walk(target, frames, depth + 1);
        }
        // Pin<P>: look through.
        if name.starts_with("core::pin::Pin<") {
            if let Some(p) = r.field(&v, "__pointer").or_else(|| r.field(&v, "pointer")) {
                return self.walk(p, frames, depth + 1);
            }
        }
        // Box<dyn Future>: a (data, vtable) pair.
        if let (Some(data), Some(vtable)) = (r.field(&v, "pointer"), r.field(&v, "vtable")) {
            let data_ptr = r.read_word(data.addr).ok()?;
            let vt = r.read_word(vtable.addr).ok()?;
            let concrete = self.concrete_type(vt);
            frames.push(Frame {
                function: short(&name),
                kind: "box",
                state: None,
                location: None,
                branches: Vec::new(),
                holds: Vec::new(),
                shared: Vec::new(),
                undescribed_words: Vec::new(),
                holds_undescribed: Vec::new(),
                private_wakers: Vec::new(),
                wrapper_records: Vec::new(),
                sync_guards: Vec::new(),
            });
            let Some(ty) = concrete else {
                return Some(self.other(
                    &name,
                    "boxed future of unknown concrete type (no debug info for its vtable)",
                ));
            };
            let inner = r.value(data_ptr, ty)?;
            return self.walk(inner, frames, depth + 1);
        }
        // Enum wrappers (MaybeDone, Map's state...): follow the live variant.
        if let Some((m, inner)) = r.variant(&v) {
            let inner = r
                .field(&inner, "__0")
                .or_else(|| r.field(&inner, "future"))
                .unwrap_or(inner);
            if m.name == "Done" || m.name == "Gone" || m.name == "Complete" {
                return Some(self.other(
                    &name,
                    &format!("{} (already {})", short(&name), m.name.to_lowercase()),
                ));
            }
            frames.push(Frame {
                function: short(&name),
                kind: "combinator",
                state: Some(m.name.clone()),
                location: None,
                branches: Vec::new(),
                holds: Vec::new(),
                shared: Vec::new(),
                undescribed_words: Vec::new(),
                holds_undescribed: Vec::new(),
                private_wakers: Vec::new(),
                wrapper_records: Vec::new(),
                sync_guards: Vec::new(),
            });
            return self.walk(inner, frames, depth + 1);
        }
        // Structs wrapping one future: Instrumented, Timeout, Map, PollFn...
        for field in ["inner", "future", "fut", "value", "__awaitee", "f", "__0"] {
            if let Some(inner) = r.field(&v, field) {
                if inner.ty.size == 0 {
                    continue;
                }
                // Storage wrappers (ManuallyDrop, MaybeDangling...) are not
                // frames a user wrote: look through them silently.
                if name.starts_with("core::mem::") {
                    return self.walk(inner, frames, depth + 1);
                }
                let mut frame = Frame {
                    function: short(&name),
                    kind: "combinator",
                    state: None,
                    location: None,
                    branches: Vec::new(),
                    holds: Vec::new(),
                    shared: Vec::new(),
                    undescribed_words: Vec::new(),
                    holds_undescribed: Vec::new(),
                    private_wakers: self.private_wakers(&v, field),
                    wrapper_records: self.wrapper_records(&v, field),
                    sync_guards: Vec::new(),
                };
                if name.starts_with("tokio::time::timeout::Timeout") {
                    if let Some(delay) = r.field(&v, "delay") {
                        if let Some(secs) = self.deadline(&delay) {
                            frame.state = Some(match self.timer_clock(&delay) {
                                Some(now) if secs >= now => {
                                    format!("times out in {}", human_secs(secs - now))
                                }
                                Some(now) => {
                                    format!("deadline passed {} ago", human_secs(now - secs))
                                }
                                None => format!("deadline {secs:.3}s of the monotonic clock"),
                            });
                        }
                    }
                }
                frames.push(frame);
                return self.walk(inner, frames, depth + 1);
            }
        }
        // A wrapper around a zero-sized future ends the chain here: keep
        // what it says about the task's waker.
        let private_wakers = self.private_wakers(&v, "");
        if !private_wakers.is_empty() {
            frames.push(Frame {
                function: short(&name),
                kind: "combinator",
                state: None,
                location: None,
                branches: Vec::new(),
                holds: Vec::new(),
                shared: Vec::new(),
                undescribed_words: Vec::new(),
                holds_undescribed: Vec::new(),
                private_wakers,
                wrapper_records: self.wrapper_records(&v, ""),
                sync_guards: Vec::new(),
            });
        }
        Some(self.other(&name, &short(&name)))
    }

    fn other(&self, name: &str, description: &str) -> Leaf {
        Leaf {
            kind: "future",
            description: description.to_string(),
            resource: None,
            joined_task_header: None,
            deadline_secs: None,
            deadline_in_secs: None,
            type_name: short(name),
        }
    }

    fn async_frame(
        &self,
        v: Value,
        name: &str,
        frames: &mut Vec<Frame>,
        depth: usize,
    ) -> Option<Leaf> {
        let r = &self.w.r;
        let kind = if strip_generics(name).contains("{async_block_env#") {
            "async block"
        } else {
            "async fn"
        };
        let function = {
            let base = strip_generics(name);
            let base = base
                .rsplit_once("::{async_fn_env#")
                .map(|(f, _)| f)
                .unwrap_or(base);
            plain_path(base)
        };
        let Some((m, state)) = r.variant(&v) else {
            frames.push(Frame {
                function,
                kind,
                state: Some("unknown".into()),
                location: None,
                branches: Vec::new(),
                holds: Vec::new(),
                shared: Vec::new(),
                undescribed_words: Vec::new(),
                holds_undescribed: Vec::new(),
                private_wakers: Vec::new(),
                wrapper_records: Vec::new(),
                sync_guards: Vec::new(),
            });
            return None;
        };
        let sname = state_name(&m.name, &state.ty.name);
        let location = if sname.starts_with("Suspend") {
            self.macro_call_site(&v.ty, &m).or_else(|| {
                m.decl_line.map(|line| SourceLocation {
                    file: m.decl_file.clone().unwrap_or_default(),
                    line,
                    column: None,
                })
            })
        } else {
            None
        };
        let mut frame = Frame {
            function: function.clone(),
            kind,
            state: Some(sname.clone()),
            location,
            branches: Vec::new(),
            holds: self.held_guards(&state),
            shared: self.arc_locals(&state),
            undescribed_words: self.undescribed_words(&v, &state),
            holds_undescribed: Vec::new(),
            private_wakers: Vec::new(),
            wrapper_records: Vec::new(),
            sync_guards: self.sync_guards(&state),
        };
        // select! / join!: the branch futures live in a local `futures`.
        if let Some(futs) = r.field(&state, "futures") {
            let futs = r.deref(&futs).unwrap_or(futs.clone());
            let futs = if futs.ty.members().is_empty() {
                r.deref(&futs).unwrap_or(futs)
            } else {
                futs
            };
            for m in futs.ty.members().iter().take(64) {
                if let Some(branch) = m.ty.and_then(|t| r.value(futs.addr + m.offset, t)) {
                    frame.branches.push(self.chain_at(branch, depth + 1));
                }
            }
        }
        let special = self.library_leaf(&function, &state);
        frames.push(frame);
        if let Some(leaf) = special {
            return Some(leaf);
        }
        match sname.as_str() {
            "Unresumed" => Some(Leaf {
                kind: "not-started",
                description: "not polled yet".into(),
                resource: None,
                joined_task_header: None,
                deadline_secs: None,
                deadline_in_secs: None,
                type_name: short(name),
            }),
            "Returned" | "Panicked" => None,
            _ if frames.last().is_some_and(|f| !f.branches.is_empty()) => {
                // select!/join!: the awaitee is the macro's poll_fn closure;
                // the branches above already say what each future waits on.
                None
            }
            _ => {
                let awaitee = r.field(&state, "__awaitee")?;
                self.walk(awaitee, frames, depth + 1)
            }
        }
    }

    /// The user's line for an `.await` written inside a macro (`select!`,
    /// `join!`, ...), whose suspend point DWARF declares in the macro's own
    /// file. rustc attributes the code of a macro expansion to the line
    /// that invokes it, so among the lines of this async fn between the
    /// neighbouring awaits of its own file, the invocation is the line the
    /// line tables give the most code; the k-th macro await of such a
    /// stretch takes the k-th heaviest line, in source order. `None` when
    /// the await is in the function's own file (DWARF's line is exact).
    fn macro_call_site(&self, ty: &Type, member: &Member) -> Option<SourceLocation> {
        let part = ty.variant_part()?;
        let variant = |d: u64| {
            part.variants
                .iter()
                .find(|v| v.discr_value == Some(d))
                .map(|v| &v.member)
        };
        let start = variant(0)?;
        let file = start.decl_file.clone()?;
        if member.decl_file.as_deref() == Some(file.as_str()) || member.decl_file.is_none() {
            return None;
        }
        let fn_start = start.decl_line?;
        let fn_end = variant(1).and_then(|m| m.decl_line).unwrap_or(u64::MAX);
        let mut suspends: Vec<(u64, &Member)> = part
            .variants
            .iter()
            .filter_map(|v| Some((v.discr_value.filter(|d| *d >= 3)?, &v.member)))
            .collect();
        suspends.sort_by_key(|(d, _)| *d);
        let own = |m: &Member| m.decl_file.as_deref() == Some(file.as_str());
        let me = suspends.iter().position(|(_, m)| m.name == member.name)?;
        let before = suspends[..me].iter().rposition(|(_, m)| own(m));
        let after = suspends[me + 1..]
            .iter()
            .position(|(_, m)| own(m))
            .map(|i| me + 1 + i);
        let lo = before
            .and_then(|i| suspends[i].1.decl_line)
            .unwrap_or(fn_start);
        let hi = after
            .and_then(|i| suspends[i].1.decl_line)
            .unwrap_or(fn_end);
        let group_start = before.map_or(0, |i| i + 1);
        let group_len = after.unwrap_or(suspends.len()) - group_start;
        let rank = me - group_start;
        let weights = self.w.r.dwarf.line_weights(&file);
        let pick = |inclusive: bool| -> Option<u64> {
            let mut lines: Vec<(u64, u64)> = weights
                .iter()
                .filter(|(l, _)| {
                    let inside = if inclusive {
                        lo <= **l && **l <= hi
                    } else {
                        lo < **l && **l < hi
                    };
                    inside && **l != fn_start && **l != fn_end
                })
                .map(|(l, b)| (*l, *b))
                .collect();
            if lines.len() < group_len {
                return None;
            }
            lines.sort_by_key(|(l, b)| (std::cmp::Reverse(*b), *l));
            lines.truncate(group_len);
            lines.sort_unstable();
            lines.get(rank).map(|(l, _)| *l)
        };
        let line = pick(false).or_else(|| pick(true))?;
        Some(SourceLocation {
            file,
            line,
            column: None,
        })
    }

    /// Mutex guards among the locals saved across this await (also inside
    /// an `Option` or a tuple).
    fn held_guards(&self, state: &Value) -> Vec<u64> {
        let r = &self.w.r;
        let is_guard = |t: &Type| {
            let name = self.name(t);
            name.starts_with("tokio::sync::mutex::MutexGuard<")
                || name.starts_with("tokio::sync::mutex::OwnedMutexGuard<")
        };
        let mut out = Vec::new();
        for m in state.ty.members() {
            if m.name == "__awaitee" {
                continue;
            }
            let Some(v) = m.ty.and_then(|t| r.value(state.addr + m.offset, t)) else {
                continue;
            };
            for guard in r.search(&v, 3, false, &is_guard) {
                // OwnedMutexGuard holds an Arc: the mutex is inside ArcInner.
                if let Some(lock) = r.find(&guard, "lock", 1).and_then(|l| r.scalar(&l)) {
                    if !out.contains(&lock) {
                        out.push(lock);
                    }
                }
            }
        }
        out
    }

    /// Synchronous guards among the locals saved across this await (also
    /// inside an `Option` or a tuple), each with the lock it points at. A
    /// guard whose lock reads as unlocked is not one (a stale copy the
    /// state machine no longer uses) and is left out.
    fn sync_guards(&self, state: &Value) -> Vec<SyncGuard> {
        let r = &self.w.r;
        let is_guard = |t: &Type| is_sync_guard(&self.name(t));
        let mut out = Vec::new();
        for m in state.ty.members() {
            if m.name == "__awaitee" {
                continue;
            }
            let Some(v) = m.ty.and_then(|t| r.value(state.addr + m.offset, t)) else {
                continue;
            };
            for guard in r.search(&v, 3, false, &is_guard) {
                let target = self.guard_target(&guard);
                let lock_word = target.as_ref().and_then(|t| {
                    ["futex", "state"]
                        .iter()
                        .find_map(|n| r.find(t, n, 4))
                        .and_then(|w| r.scalar(&w))
                        .or_else(|| (t.ty.size <= 8).then(|| r.scalar(t)).flatten())
                });
                if lock_word == Some(0) {
                    continue;
                }
                out.push(SyncGuard {
                    type_name: self.name(&guard.ty),
                    lock: target.map(|t| t.addr),
                    lock_word,
                });
            }
        }
        out
    }

    /// What a guard points at: the lock (`lock`, `inner_lock`, `mutex`,
    /// `rwlock`) or a `RefCell`'s borrow flag (`borrow`, one wrapper deeper).
    fn guard_target(&self, guard: &Value) -> Option<Value> {
        let r = &self.w.r;
        for field in ["lock", "inner_lock", "mutex", "rwlock", "borrow"] {
            let Some(mut cur) = r.find(guard, field, 1) else {
                continue;
            };
            for _ in 0..2 {
                if cur.ty.is_pointer() {
                    return r.deref(&cur);
                }
                match r.find(&cur, field, 1) {
                    Some(inner) => cur = inner,
                    None => break,
                }
            }
        }
        None
    }

    /// Words of the state machine that no member of any variant describes,
    /// read only when this variant shows the trace of a lost local: two
    /// members of the same name (see [`Frame::undescribed_words`]).
    fn undescribed_words(&self, outer: &Value, state: &Value) -> Vec<u64> {
        let r = &self.w.r;
        let mut names: Vec<&str> = state.ty.members().iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if !names.windows(2).any(|w| w[0] == w[1]) {
            return Vec::new();
        }
        let Some(part) = outer.ty.variant_part() else {
            return Vec::new();
        };
        let size = outer.ty.size;
        if size == 0 || size > 1 << 20 {
            return Vec::new();
        }
        let size_of = |ty: Option<crate::dwarf::DieId>, default: u64| {
            ty.and_then(|t| r.dwarf.ty(t).ok())
                .map_or(default, |t| t.size)
        };
        let mut covered = vec![false; size as usize];
        let mut cover = |offset: u64, len: u64| {
            let end = offset.saturating_add(len).min(size);
            for b in offset.min(end)..end {
                covered[b as usize] = true;
            }
        };
        if let Some(d) = &part.discr {
            cover(d.offset, size_of(d.ty, 1).max(1));
        }
        for m in outer.ty.members() {
            cover(m.offset, size_of(m.ty, 8));
        }
        for var in &part.variants {
            let Some(vt) = var.member.ty.and_then(|t| r.dwarf.ty(t).ok()) else {
                continue;
            };
            for m in vt.members() {
                cover(var.member.offset + m.offset, size_of(m.ty, 8));
            }
        }
        let mut out = Vec::new();
        for off in (0..size.saturating_sub(7)).step_by(8) {
            if covered[off as usize..off as usize + 8].iter().any(|c| *c) {
                continue;
            }
            if let Ok(w) = r.read_word(outer.addr + off) {
                if plausible_pointer(w) && !out.contains(&w) {
                    out.push(w);
                }
            }
        }
        out
    }

    /// Wakers a wrapper keeps (besides its `inner` future) in an `Arc`
    /// that only it references, or in taskscope's task record while no
    /// waker pointing at that record is alive: see [`Frame::private_wakers`].
    fn private_wakers(&self, wrapper: &Value, inner_field: &str) -> Vec<u64> {
        let r = &self.w.r;
        let is_arc = |t: &Type| self.name(t).starts_with("alloc::sync::Arc<");
        let is_waker = |t: &Type| self.name(t) == "core::task::wake::Waker";
        let mut out = Vec::new();
        for m in wrapper.ty.members() {
            if m.name == inner_field {
                continue;
            }
            let Some(v) = m.ty.and_then(|t| r.value(wrapper.addr + m.offset, t)) else {
                continue;
            };
            for arc in r.search(&v, 3, false, &is_arc) {
                let Some(inner) = r.deref(&arc) else { continue };
                let count = |name| r.find(&inner, name, 2).and_then(|c| r.scalar(&c));
                // taskscope's wrapper keeps the executor's waker in its task
                // record, which the registry shares; the wakers it hands out
                // point at that record and are counted there. With every
                // handed-out clone dropped, nothing can reach the executor's
                // waker but the wrapper itself.
                if self.name(&inner.ty).contains("TaskCell") {
                    let Some(data) = r.field(&inner, "data") else {
                        continue;
                    };
                    let cell_count = |name| r.find(&data, name, 1).and_then(|c| r.scalar(&c));
                    let (Some(clones), Some(drops)) =
                        (cell_count("waker_clones"), cell_count("waker_drops"))
                    else {
                        continue;
                    };
                    if clones != drops {
                        continue;
                    }
                    let Some(slot) = r.find(&data, "executor_waker", 1) else {
                        continue;
                    };
                    for w in r.search(&slot, 6, false, &is_waker) {
                        let ptr = r.find(&w, "data", 3).and_then(|d| r.read_word(d.addr).ok());
                        if let Some(p) = ptr.filter(|p| plausible_pointer(*p)) {
                            out.push(p);
                        }
                    }
                    continue;
                }
                // std's weak count is 1 while no `Weak` exists.
                if count("strong") != Some(1) || count("weak") != Some(1) {
                    continue;
                }
                let Some(data) = r.field(&inner, "data") else {
                    continue;
                };
                for w in r.search(&data, 3, false, &is_waker) {
                    let ptr = r.find(&w, "data", 3).and_then(|d| r.read_word(d.addr).ok());
                    if let Some(p) = ptr.filter(|p| plausible_pointer(*p)) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// taskscope task records (`Arc<TaskCell>` data addresses) a wrapper
    /// points at, besides its `inner` future.
    fn wrapper_records(&self, wrapper: &Value, inner_field: &str) -> Vec<u64> {
        let r = &self.w.r;
        let is_cell_arc = |t: &Type| {
            let n = self.name(t);
            n.starts_with("alloc::sync::Arc<") && n.contains("TaskCell")
        };
        let mut out = Vec::new();
        for m in wrapper.ty.members() {
            if m.name == inner_field {
                continue;
            }
            let Some(v) = m.ty.and_then(|t| r.value(wrapper.addr + m.offset, t)) else {
                continue;
            };
            for arc in r.search(&v, 3, false, &is_cell_arc) {
                if let Some(data) = r.deref(&arc).and_then(|i| r.field(&i, "data")) {
                    out.push(data.addr);
                }
            }
        }
        out
    }

    /// `Arc<T>` locals saved across this await: (data address, strong count).
    fn arc_locals(&self, state: &Value) -> Vec<(u64, u64)> {
        let r = &self.w.r;
        let mut out = Vec::new();
        for m in state.ty.members() {
            if m.name == "__awaitee" {
                continue;
            }
            let Some(v) = m.ty.and_then(|t| r.value(state.addr + m.offset, t)) else {
                continue;
            };
            if !self.name(&v.ty).starts_with("alloc::sync::Arc<") {
                continue;
            }
            let Some(inner) = r.deref(&v) else { continue };
            let strong = r.find(&inner, "strong", 1).and_then(|s| r.scalar(&s));
            let data = r.field(&inner, "data").map(|d| d.addr);
            if let (Some(strong), Some(data)) = (strong, data) {
                if !out.contains(&(data, strong)) {
                    out.push((data, strong));
                }
            }
        }
        out
    }

    fn chain_at(&self, v: Value, depth: usize) -> Chain {
        let mut chain = Chain::default();
        chain.leaf = self.walk(v, &mut chain.frames, depth);
        chain
    }

    /// tokio's own async fns that are better described by what they wait on.
    fn library_leaf(&self, function: &str, state: &Value) -> Option<Leaf> {
        let r = &self.w.r;
        let self_ptr = || {
            r.field(state, "self")
                .and_then(|s| r.read_word(s.addr).ok())
        };
        let leaf = |kind, description: String, resource| Leaf {
            kind,
            description,
            resource,
            joined_task_header: None,
            deadline_secs: None,
            deadline_in_secs: None,
            type_name: function.to_string(),
        };
        let function = plain_path(function);
        let function = function.as_str();
        if function == "tokio::sync::mutex::lock" {
            let m = self_ptr();
            return Some(leaf(
                "mutex-lock",
                format!(
                    "waiting to lock tokio::sync::Mutex at {:#x}",
                    m.unwrap_or(0)
                ),
                m,
            ));
        }
        if function == "tokio::sync::rwlock::read" || function == "tokio::sync::rwlock::write" {
            let m = self_ptr();
            return Some(leaf(
                "rwlock",
                format!("waiting for {function} at {:#x}", m.unwrap_or(0)),
                m,
            ));
        }
        if function.starts_with("tokio::sync::semaphore::acquire") {
            let m = self_ptr();
            return Some(leaf(
                "semaphore-acquire",
                format!(
                    "waiting for a permit of tokio::sync::Semaphore at {:#x}",
                    m.unwrap_or(0)
                ),
                m,
            ));
        }
        if function == "tokio::sync::mpsc::bounded::send" {
            let chan = self_ptr().and_then(|p| self.chan_of_sender(p));
            return Some(leaf(
                "mpsc-send",
                format!(
                    "sending on a full bounded channel (channel {:#x})",
                    chan.unwrap_or(0)
                ),
                chan,
            ));
        }
        if function == "tokio::sync::mpsc::bounded::recv"
            || function == "tokio::sync::mpsc::unbounded::recv"
        {
            let chan = self_ptr().and_then(|p| self.chan_of_sender(p));
            return Some(leaf(
                "mpsc-recv",
                format!(
                    "waiting to receive on an mpsc channel (channel {:#x}): no message sent yet",
                    chan.unwrap_or(0)
                ),
                chan,
            ));
        }
        if function == "tokio::sync::barrier::wait" {
            let b = self_ptr();
            return Some(leaf(
                "barrier",
                format!("waiting at tokio::sync::Barrier {:#x}", b.unwrap_or(0)),
                b,
            ));
        }
        None
    }

    /// `Sender`/`Receiver` hold `chan: chan::Tx/Rx { inner: Arc<Chan> }`: the
    /// channel's identity is the `Arc`'s allocation.
    fn chan_of_sender(&self, sender: u64) -> Option<u64> {
        // Both Sender and Receiver start with `chan`, whose first word is the Arc pointer.
        let p = self.w.r.read_word(sender).ok()?;
        plausible_pointer(p).then_some(p)
    }

    fn deadline(&self, sleep: &Value) -> Option<f64> {
        let r = &self.w.r;
        // `Sleep.deadline` (1.4x+) or `Sleep.entry.deadline` (older).
        let deadline = r.find(sleep, "deadline", 3)?;
        let tv_sec = r.find(&deadline, "tv_sec", 4).and_then(|v| r.scalar(&v))?;
        let tv_nsec = r
            .find(&deadline, "tv_nsec", 5)
            .and_then(|v| r.scalar(&v))
            .unwrap_or(0);
        Some(tv_sec as f64 + tv_nsec as f64 / 1e9)
    }

    /// The runtime's notion of "now" at the dump, in seconds of the
    /// monotonic clock: the time driver's start instant (`TimeSource`)
    /// plus the milliseconds its wheel has processed (`Wheel.elapsed`),
    /// reached from the sleep's own runtime handle.
    fn timer_clock(&self, sleep: &Value) -> Option<f64> {
        let r = &self.w.r;
        let handle = r.find(sleep, "driver", 3)?;
        let handle = r.arc_data(&handle)?;
        let drivers = r.find(&handle, "driver", 2)?;
        let time = r.find(&drivers, "time", 2)?;
        let source = r.find(&time, "time_source", 4)?;
        let start = r.find(&source, "start_time", 2)?;
        let tv_sec = r.find(&start, "tv_sec", 5).and_then(|v| r.scalar(&v))?;
        let tv_nsec = r
            .find(&start, "tv_nsec", 6)
            .and_then(|v| r.scalar(&v))
            .unwrap_or(0);
        let elapsed_ms = match r.find(&time, "wheel", 12) {
            Some(wheel) => r.find(&wheel, "elapsed", 2).and_then(|v| r.scalar(&v))?,
            // tokio 1.38-1.4x: sharded wheels (`Box<[Mutex<Wheel>]>`), all
            // advanced together; the furthest one is the driver's time.
            None => {
                let wheels = r.find(&time, "wheels", 8)?;
                let first = r.find(&wheels, "data_ptr", 3).and_then(|p| r.deref(&p))?;
                let len = r.find(&wheels, "length", 3).and_then(|v| r.scalar(&v))?;
                let size = first.ty.size.max(1);
                (0..len.min(1024))
                    .filter_map(|i| {
                        let shard = r.value(first.addr.checked_add(i * size)?, first.ty.id)?;
                        r.find(&shard, "elapsed", 6).and_then(|v| r.scalar(&v))
                    })
                    .max()?
            }
        };
        // A wheel that never ran reads 0; more than ten years is garbage.
        if tv_sec == 0 || elapsed_ms > 10 * 365 * 86_400_000 {
            return None;
        }
        Some(tv_sec as f64 + tv_nsec as f64 / 1e9 + elapsed_ms as f64 / 1e3)
    }

    /// Leaf futures recognised by type.
    fn leaf(&self, v: &Value, name: &str) -> Option<Leaf> {
        let r = &self.w.r;
        let mk = |kind, description: String| Leaf {
            kind,
            description,
            resource: None,
            joined_task_header: None,
            deadline_secs: None,
            deadline_in_secs: None,
            type_name: short(name),
        };
        if name.starts_with("tokio::sync::oneshot::Receiver<") {
            let inner = r
                .find(v, "inner", 1)
                .and_then(|i| r.scalar(&i))
                .filter(|p| *p != 0);
            let mut l = mk(
                "oneshot-recv",
                format!(
                    "waiting on a oneshot channel (channel {:#x}): the sender has not sent",
                    inner.unwrap_or(0)
                ),
            );
            l.resource = inner;
            return Some(l);
        }
        if name == "tokio::time::sleep::Sleep" {
            let secs = self.deadline(v);
            let now = self.timer_clock(v);
            let left = secs.zip(now).map(|(d, n)| d - n);
            let mut l = mk(
                "sleep",
                match (secs, left) {
                    (Some(_), Some(left)) if left >= 0.0 => format!(
                        "sleeping: fires in {} (by the runtime's timer clock at the dump)",
                        human_secs(left)
                    ),
                    (Some(_), Some(left)) => format!(
                        "sleeping: deadline passed {} ago by the runtime's timer clock, not fired yet",
                        human_secs(-left)
                    ),
                    (Some(s), None) => format!(
                        "sleeping until {s:.3}s of the monotonic clock (the dump's own time is unknown: no timer clock found)"
                    ),
                    (None, _) => "sleeping".to_string(),
                },
            );
            l.deadline_secs = secs;
            l.deadline_in_secs = left;
            return Some(l);
        }
        if name.starts_with("tokio::runtime::task::join::JoinHandle<") {
            let header = r.find(v, "ptr", 3).and_then(|p| r.scalar(&p));
            let mut l = mk(
                "join-handle",
                "waiting for another task to finish (JoinHandle)".into(),
            );
            l.joined_task_header = header;
            l.resource = header;
            return Some(l);
        }
        if name.starts_with("tokio::sync::batch_semaphore::Acquire") {
            let sem = r.find(v, "semaphore", 2).and_then(|p| r.scalar(&p));
            let mut l = mk(
                "semaphore-acquire",
                format!(
                    "waiting for a semaphore permit (semaphore {:#x})",
                    sem.unwrap_or(0)
                ),
            );
            l.resource = sem;
            return Some(l);
        }
        if name.starts_with("tokio::sync::notify::Notified") {
            let n = r.find(v, "notify", 1).and_then(|p| r.scalar(&p));
            let mut l = mk(
                "notify",
                format!("waiting for tokio::sync::Notify {:#x}", n.unwrap_or(0)),
            );
            l.resource = n;
            return Some(l);
        }
        if name.starts_with("core::future::pending::Pending<") {
            return Some(mk(
                "pending",
                "std::future::pending(): never completes".into(),
            ));
        }
        None
    }

    /// The concrete type behind a `dyn Future` vtable: `drop_in_place::<T>`
    /// (slot 0) names it; when the type needs no drop, the poll fn (slot 3)
    /// takes `Pin<&mut T>`.
    fn concrete_type(&self, vtable: u64) -> Option<crate::dwarf::DieId> {
        let r = &self.w.r;
        let d = r.dwarf;
        let drop_fn = r.read_word(vtable).ok()?;
        if drop_fn != 0 {
            if let Some(die) = d.function_starting_at(drop_fn.wrapping_sub(self.w.bias)) {
                if let Some(t) = d.template_param(die, "T") {
                    return Some(t);
                }
            }
        }
        let poll_fn = r.read_word(vtable + 24).ok()?;
        let die = d.function_starting_at(poll_fn.wrapping_sub(self.w.bias))?;
        let (_, self_ty) = d.parameters(die).into_iter().find(|(n, _)| n == "self")?;
        // Pin<&mut T> -> &mut T -> T
        let pin = d.ty(self_ty?).ok()?;
        let ptr = pin.member("__pointer")?.ty?;
        d.ty(ptr).ok()?.pointee()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_guards_are_std_lock_api_and_refcell_guards_not_tokio_ones() {
        for g in [
            "std::sync::poison::mutex::MutexGuard<alloc::string::String>",
            "std::sync::poison::rwlock::RwLockWriteGuard<u32>",
            "lock_api::mutex::MutexGuard<parking_lot::raw_mutex::RawMutex, u8>",
            "core::cell::RefMut<alloc::vec::Vec<u8, alloc::alloc::Global>>",
        ] {
            assert!(is_sync_guard(g), "{g}");
        }
        for g in [
            "tokio::sync::mutex::MutexGuard<u32>",
            "tokio::sync::rwlock::read_guard::RwLockReadGuard<u32>",
            "alloc::vec::Vec<std::sync::poison::mutex::MutexGuard<u8>, alloc::alloc::Global>",
            "core::cell::RefCell<u8>",
        ] {
            assert!(!is_sync_guard(g), "{g}");
        }
        let g = SyncGuard {
            type_name: "std::sync::poison::mutex::MutexGuard<alloc::string::String>".into(),
            lock: None,
            lock_word: None,
        };
        assert_eq!(g.display_name(), "std::sync::MutexGuard<String>");
    }

    #[test]
    fn async_env_is_recognised_by_its_own_name_not_its_generics() {
        assert!(is_async_env("app::handler::{async_fn_env#0}"));
        assert!(is_async_env("app::main::{async_block_env#1}"));
        assert!(is_async_env(
            "tokio::task::local::{impl#4}::run_until::{async_fn_env#0}<app::main::{async_block_env#0}>"
        ));
        // A combinator whose generic argument is an async fn is not one.
        assert!(!is_async_env(
            "tokio::future::maybe_done::MaybeDone<app::sleeper::{async_fn_env#0}>"
        ));
        assert!(!is_async_env("tokio::time::sleep::Sleep"));
    }

    #[test]
    fn function_paths_drop_impl_blocks_and_generics() {
        assert_eq!(
            plain_path("tokio::sync::mutex::{impl#10}::lock::{async_fn_env#0}<u32>"),
            "tokio::sync::mutex::lock::{async_fn_env#0}"
        );
        assert_eq!(strip_generics("a::B<c::D<e>>"), "a::B");
    }

    #[test]
    fn generator_states_are_named_like_rustc() {
        assert_eq!(state_name("0", ""), "Unresumed");
        assert_eq!(state_name("1", ""), "Returned");
        assert_eq!(state_name("2", ""), "Panicked");
        assert_eq!(state_name("5", ""), "Suspend2");
        assert_eq!(super::human_secs(86_399.0), "23h 59m");
        assert_eq!(super::human_secs(2.0 * 86_400.0 + 7_300.0), "2d 2h");
        assert_eq!(super::human_secs(250.0), "4m 10s");
        assert_eq!(super::human_secs(12.54), "12.5s");
        assert_eq!(super::human_secs(0.25), "250ms");
        assert_eq!(state_name("3", "Suspend0"), "Suspend0");
    }
}
