//! Typed views of the target's memory: a [`Value`] is an address plus a
//! DWARF type, and [`Reader`] navigates values by field name, enum variant
//! and pointer, checking every read. Nothing here knows about tokio.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::dwarf::{DebugInfo, DieId, Member, Type};
use crate::error::MemoryError;
use crate::memory::MemorySource;

/// A typed location in the target.
#[derive(Debug, Clone)]
pub struct Value {
    pub addr: u64,
    pub ty: Rc<Type>,
}

/// Lowest address a user-space object can live at; anything below is a
/// corrupt or null pointer.
const MIN_ADDR: u64 = 0x1000;
/// Highest canonical user-space address on x86-64.
const MAX_ADDR: u64 = 0x0000_7fff_ffff_ffff;

pub fn plausible_pointer(p: u64) -> bool {
    (MIN_ADDR..=MAX_ADDR).contains(&p)
}

/// Reads typed values from memory using DWARF.
pub struct Reader<'a> {
    pub mem: &'a dyn MemorySource,
    pub dwarf: &'a DebugInfo,
}

impl<'a> Reader<'a> {
    pub fn value(&self, addr: u64, ty: DieId) -> Option<Value> {
        Some(Value {
            addr,
            ty: self.dwarf.ty(ty).ok()?,
        })
    }

    /// A direct member.
    pub fn field(&self, v: &Value, name: &str) -> Option<Value> {
        let m = v.ty.member(name)?;
        self.value(v.addr.checked_add(m.offset)?, m.ty?)
    }

    /// A member found breadth-first through nested structs (not pointers),
    /// at most `depth` levels down: robust to wrapper types that move between
    /// library versions (`UnsafeCell`, `Mutex`, metrics wrappers...).
    pub fn find(&self, v: &Value, name: &str, depth: usize) -> Option<Value> {
        let mut queue = VecDeque::from([(v.clone(), 0usize)]);
        let mut visited = 0;
        while let Some((cur, d)) = queue.pop_front() {
            visited += 1;
            if visited > 512 {
                return None;
            }
            for m in cur.ty.members() {
                let Some(child) =
                    m.ty.and_then(|t| self.value(cur.addr.checked_add(m.offset)?, t))
                else {
                    continue;
                };
                if m.name == name {
                    return Some(child);
                }
                if d + 1 < depth {
                    queue.push_back((child, d + 1));
                }
            }
            if let Some((_, active)) = self.variant(&cur) {
                if d + 1 < depth {
                    queue.push_back((active, d + 1));
                }
            }
        }
        None
    }

    /// Walks a path of member names, each found with [`Reader::find`].
    pub fn path(&self, v: &Value, names: &[&str]) -> Option<Value> {
        let mut cur = v.clone();
        for n in names {
            cur = self.find(&cur, n, 4)?;
        }
        Some(cur)
    }

    pub fn read_word(&self, addr: u64) -> Result<u64, MemoryError> {
        self.mem.read_u64(addr)
    }

    /// Reads a scalar by descending single-member wrappers down to a base
    /// or pointer type (`AtomicUsize { v: UnsafeCell { value } }` -> usize).
    pub fn scalar(&self, v: &Value) -> Option<u64> {
        // Every wrapper of one scalar has the scalar's size: read it raw
        // (little-endian), which also covers niche-optimised `Option`s.
        match v.ty.size {
            1 | 2 | 4 | 8 => self.mem.read_uint(v.addr, v.ty.size).ok(),
            0 if v.ty.is_pointer() => self.mem.read_u64(v.addr).ok(),
            _ => None,
        }
    }

    /// Follows a pointer-like value: a raw pointer/reference, or a struct
    /// wrapping one (`NonNull`, `Box`, `Unique`, `Option<NonNull<T>>`).
    pub fn deref(&self, v: &Value) -> Option<Value> {
        let mut cur = v.clone();
        for _ in 0..6 {
            if let Some(target) = cur.ty.pointee() {
                let p = self.mem.read_u64(cur.addr).ok()?;
                if !plausible_pointer(p) {
                    return None;
                }
                return self.value(p, target);
            }
            if let Some((_, active)) = self.variant(&cur) {
                cur = active;
                continue;
            }
            let members = cur.ty.members();
            let m = members
                .iter()
                .find(|m| {
                    matches!(
                        m.name.as_str(),
                        "pointer" | "ptr" | "__0" | "__pointer" | "data_ptr"
                    )
                })
                .or_else(|| (members.len() == 1).then(|| &members[0]))?;
            cur = self.value(cur.addr + m.offset, m.ty?)?;
        }
        None
    }

    /// `Arc<T>` -> the `T` inside its `ArcInner`.
    pub fn arc_data(&self, v: &Value) -> Option<Value> {
        let inner = self.deref(v)?;
        self.field(&inner, "data").or(Some(inner))
    }

    /// The active variant of a Rust enum (or generator): the variant's member
    /// (named after the variant) and its value.
    pub fn variant(&self, v: &Value) -> Option<(Member, Value)> {
        let part = v.ty.variant_part()?;
        let chosen = match &part.discr {
            Some(d) => {
                let dty = self.dwarf.ty(d.ty?).ok()?;
                let size = if dty.size == 0 { 1 } else { dty.size.min(8) };
                let raw = self.mem.read_uint(v.addr + d.offset, size).ok()?;
                part.variants
                    .iter()
                    .find(|var| var.discr_value == Some(raw))
                    .or_else(|| part.variants.iter().find(|var| var.discr_value.is_none()))?
            }
            // A single-variant enum has no discriminant.
            None if part.variants.len() == 1 => &part.variants[0],
            None => return None,
        };
        let m = chosen.member.clone();
        let val = self.value(v.addr + m.offset, m.ty?)?;
        Some((m, val))
    }

    /// `&str` / `Box<str>`: (data_ptr, length) -> text.
    pub fn string(&self, v: &Value) -> Option<String> {
        let ptr = self.find(v, "data_ptr", 3)?;
        let len = self.find(v, "length", 3)?;
        let p = self.mem.read_u64(ptr.addr).ok()?;
        let n = self.mem.read_u64(len.addr).ok()?;
        if !plausible_pointer(p) {
            return None;
        }
        self.mem.read_str(p, n).ok()
    }

    /// Breadth-first search through members, active variants and (when
    /// `through_pointers`) pointers for a value whose type satisfies `pred`.
    pub fn search(
        &self,
        v: &Value,
        max_depth: usize,
        through_pointers: bool,
        pred: &dyn Fn(&Type) -> bool,
    ) -> Vec<Value> {
        let mut found = Vec::new();
        let mut queue = VecDeque::from([(v.clone(), 0usize)]);
        let mut seen = std::collections::HashSet::new();
        let mut steps = 0;
        while let Some((cur, d)) = queue.pop_front() {
            steps += 1;
            if steps > 4096 {
                break;
            }
            if !seen.insert((cur.addr, cur.ty.id)) {
                continue;
            }
            if pred(&cur.ty) {
                found.push(cur);
                continue;
            }
            if d >= max_depth {
                continue;
            }
            if let Some((_, active)) = self.variant(&cur) {
                queue.push_back((active, d + 1));
            }
            for m in cur.ty.members() {
                if let Some(child) = m.ty.and_then(|t| self.value(cur.addr + m.offset, t)) {
                    queue.push_back((child, d + 1));
                }
            }
            if through_pointers && cur.ty.is_pointer() {
                if let Some(target) = self.deref(&cur) {
                    queue.push_back((target, d + 1));
                }
            }
        }
        found
    }
}

/// Offset of a member found breadth-first by name inside a type, without
/// reading memory (for layouts used on every task).
pub fn offset_of(
    dwarf: &DebugInfo,
    ty: &Type,
    name: &str,
    depth: usize,
) -> Option<(u64, Rc<Type>)> {
    let mut queue = VecDeque::new();
    for m in ty.members() {
        queue.push_back((m.clone(), 0u64, 0usize));
    }
    let mut steps = 0;
    while let Some((m, base, d)) = queue.pop_front() {
        steps += 1;
        if steps > 512 {
            return None;
        }
        let Some(mty) = m.ty.and_then(|t| dwarf.ty(t).ok()) else {
            continue;
        };
        if m.name == name {
            return Some((base + m.offset, mty));
        }
        if d + 1 < depth {
            for c in mty.members() {
                queue.push_back((c.clone(), base + m.offset, d + 1));
            }
        }
    }
    None
}
