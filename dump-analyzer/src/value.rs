//! Typed views of the target's memory: a [`Value`] is an address plus a
//! DWARF type, and [`Reader`] navigates values by field name, enum variant
//! and pointer, checking every read. Nothing here knows about tokio.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::dwarf::{DebugInfo, DieId, Member, Type, TypeKind};
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

    /// Whether the bytes at `v` can be a value of its type: every
    /// reference (thin or fat) and every `NonNull` (so every `Box`, `Arc`
    /// and `Vec` buffer) is non-null and canonical, every `bool` is 0 or 1,
    /// every fieldless enum and every tagged enum's tag names one of its
    /// variants. Active variants and struct members are checked
    /// recursively, without following pointers; unions (`MaybeUninit`)
    /// are not looked into. Stale stack bytes that merely look like a
    /// suspended future almost always fail this; an initialised value
    /// never does.
    pub fn is_valid(&self, v: &Value) -> bool {
        let mut budget = 4096;
        self.valid_at(v, 0, &mut budget)
    }

    fn valid_at(&self, v: &Value, depth: usize, budget: &mut usize) -> bool {
        if *budget == 0 || depth > 16 {
            return true;
        }
        *budget -= 1;
        match &v.ty.kind {
            TypeKind::Pointer { .. } => {
                !v.ty.name.starts_with('&') || self.non_null_pointer_at(v.addr)
            }
            TypeKind::Base => match v.ty.name.as_str() {
                "bool" => self.mem.read_uint(v.addr, 1).is_ok_and(|b| b <= 1),
                "char" => self
                    .mem
                    .read_uint(v.addr, 4)
                    .is_ok_and(|c| char::from_u32(c as u32).is_some()),
                _ => true,
            },
            TypeKind::Enum { enumerators } => {
                let size = v.ty.size.clamp(1, 8);
                let Ok(raw) = self.mem.read_uint(v.addr, size) else {
                    return false;
                };
                let mask = if size == 8 {
                    u64::MAX
                } else {
                    (1 << (size * 8)) - 1
                };
                enumerators.iter().any(|(_, e)| (*e as u64) & mask == raw)
            }
            TypeKind::Array { elem, count } => {
                let Some(elem) = elem.and_then(|e| self.dwarf.ty(e).ok()) else {
                    return true;
                };
                if matches!(elem.kind, TypeKind::Base) && elem.name != "bool" {
                    return true;
                }
                let n = count.unwrap_or(0).min(16);
                (0..n).all(|i| {
                    let e = Value {
                        addr: v.addr + i * elem.size,
                        ty: elem.clone(),
                    };
                    self.valid_at(&e, depth + 1, budget)
                })
            }
            TypeKind::Struct {
                members, variants, ..
            } => {
                // A fat reference (`&str`, `&[T]`, `&dyn T`) and a
                // `NonNull` (thin or fat) start with their data pointer.
                if v.ty.name.starts_with("NonNull<") || v.ty.name.starts_with('&') {
                    return self.non_null_pointer_at(v.addr);
                }
                if variants.is_some() {
                    let Some((_, active)) = self.variant(v) else {
                        return false;
                    };
                    if !self.valid_at(&active, depth + 1, budget) {
                        return false;
                    }
                }
                members.iter().all(|m| {
                    m.ty.and_then(|t| self.value(v.addr + m.offset, t))
                        .is_none_or(|child| self.valid_at(&child, depth + 1, budget))
                })
            }
            TypeKind::Union { .. } | TypeKind::Other => true,
        }
    }

    /// Whether the word at `addr` is a non-null canonical address: what a
    /// reference or `NonNull` may hold. Not [`plausible_pointer`]: an empty
    /// `Vec`'s `NonNull::dangling()` (its alignment, e.g. 8) is valid.
    fn non_null_pointer_at(&self, addr: u64) -> bool {
        self.mem
            .read_u64(addr)
            .is_ok_and(|p| p != 0 && p <= MAX_ADDR)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ProcessMemory;
    use object::{Object, ObjectSymbol};

    #[allow(dead_code)]
    #[derive(Clone, Copy)]
    enum Colour {
        Red,
        Green,
        Blue,
    }

    #[allow(dead_code)]
    enum Tagged {
        Small(u32),
        Large(u64),
    }

    #[allow(dead_code)]
    struct Sample {
        shared: std::sync::Arc<u64>,
        flag: bool,
        colour: Colour,
        tagged: Tagged,
        name: &'static str,
        raw: *const u8,
    }

    /// Exists so that this test binary's DWARF describes `Sample`.
    #[inline(never)]
    fn taskscope_value_validity_probe(s: &Sample) -> bool {
        std::hint::black_box(s.flag)
    }

    /// A copy of some bytes of this process, at the address they came from.
    struct Copy {
        addr: u64,
        bytes: Vec<u8>,
    }

    impl MemorySource for Copy {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let start = addr.checked_sub(self.addr).map(|o| o as usize);
            match start.and_then(|s| self.bytes.get(s..s + buf.len())) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    Ok(())
                }
                None => Err(MemoryError::Implausible {
                    what: "test copy",
                    addr,
                    detail: "outside the copy".into(),
                }),
            }
        }
    }

    #[test]
    fn stale_bytes_are_told_from_a_live_value_by_its_types_invariants() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(&exe).expect("read own executable");
        let dwarf = DebugInfo::load(&exe, &bytes).expect("own DWARF");
        let file = object::File::parse(&*bytes).expect("own ELF");
        let probe = file
            .symbols()
            .find(|s| {
                s.name()
                    .is_ok_and(|n| n.contains("taskscope_value_validity_probe"))
            })
            .expect("probe symbol");
        let die = dwarf
            .function_starting_at(probe.address())
            .expect("probe function in DWARF");
        let (_, param) = dwarf.parameters(die).into_iter().next().expect("param");
        let sample_ty = dwarf
            .ty(param.expect("param type"))
            .expect("param type")
            .pointee()
            .expect("a reference");

        let sample = Sample {
            shared: std::sync::Arc::new(7),
            flag: true,
            colour: Colour::Blue,
            tagged: Tagged::Large(9),
            name: "live",
            raw: std::ptr::null(),
        };
        assert!(taskscope_value_validity_probe(&sample));
        let addr = &sample as *const Sample as u64;
        let live = ProcessMemory::open(std::process::id()).expect("own memory");
        let reader = Reader {
            mem: &live,
            dwarf: &dwarf,
        };
        let value = reader.value(addr, sample_ty).expect("typed value");
        assert!(
            reader.is_valid(&value),
            "the live value, null raw pointer and all"
        );

        let mut copy = vec![0u8; std::mem::size_of::<Sample>()];
        live.read(addr, &mut copy).expect("read own memory");
        let offset = |name: &str| value.ty.member(name).expect(name).offset as usize;
        let corrupt = |what: &str, at: usize, with: &[u8]| {
            let mut bytes = copy.clone();
            bytes[at..at + with.len()].copy_from_slice(with);
            let mem = Copy { addr, bytes };
            let reader = Reader {
                mem: &mem,
                dwarf: &dwarf,
            };
            let v = reader.value(addr, sample_ty).expect("typed value");
            assert!(!reader.is_valid(&v), "{what} passed as valid");
        };
        corrupt("a null Arc", offset("shared"), &[0; 8]);
        corrupt("a non-canonical Arc", offset("shared"), &[0xff; 8]);
        corrupt("a bool of 2", offset("flag"), &[2]);
        corrupt("a colour of 7", offset("colour"), &[7]);
        corrupt("a null &str", offset("name"), &[0; 8]);
        let tagged = value.ty.member("tagged").expect("tagged");
        let tagged_ty = dwarf.ty(tagged.ty.expect("type")).expect("type");
        let discr = tagged_ty
            .variant_part()
            .and_then(|p| p.discr.as_ref())
            .expect("a tagged enum");
        corrupt(
            "an enum tag naming no variant",
            offset("tagged") + discr.offset as usize,
            &[9],
        );
    }
}
