//! DWARF, read on demand.
//!
//! Opening a binary costs nothing beyond loading section headers: units are
//! parsed when first touched and types are decoded one DIE at a time and
//! cached. The only full pass over `.debug_info` is [`DebugInfo::index`],
//! built once the first time something needs an address or a name lookup: it
//! keeps concrete functions by address, thread-local variables with their TLS
//! offsets, and tokio's structures by qualified name.
//!
//! Types are described by [`Type`]: a small model of what the walkers need
//! (members with offsets, Rust enum variant parts with their discriminants,
//! pointers, template parameters, and the `DW_AT_decl_line` of members, which
//! is where rustc records the line of each `.await`).

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use gimli::{AttributeValue, DebugInfoOffset, Reader as _, UnitOffset};
use object::{Object, ObjectSection};

use crate::error::{DumpError, Result};

pub type R = gimli::EndianArcSlice<gimli::LittleEndian>;

/// A DIE, named by its offset in `.debug_info`.
pub type DieId = usize;

fn dwarf_err(offset: usize) -> impl Fn(gimli::Error) -> DumpError {
    move |source| DumpError::Dwarf {
        section: ".debug_info",
        offset: offset as u64,
        source,
    }
}

/// A member of a struct, union or enum variant.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub ty: Option<DieId>,
    pub decl_file: Option<String>,
    pub decl_line: Option<u64>,
}

/// One variant of a Rust enum (`DW_TAG_variant`).
#[derive(Debug, Clone)]
pub struct Variant {
    /// `None` for the default (dataful / niche-holding) variant.
    pub discr_value: Option<u64>,
    pub member: Member,
}

/// The `DW_TAG_variant_part` of a Rust enum or generator.
#[derive(Debug, Clone)]
pub struct VariantPart {
    pub discr: Option<Member>,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone)]
pub enum TypeKind {
    Struct {
        members: Vec<Member>,
        variants: Option<VariantPart>,
        params: Vec<(String, DieId)>,
    },
    Union {
        members: Vec<Member>,
    },
    Enum {
        enumerators: Vec<(String, i64)>,
    },
    Pointer {
        target: Option<DieId>,
    },
    Base,
    Array {
        elem: Option<DieId>,
        count: Option<u64>,
    },
    Other,
}

/// A decoded type DIE.
#[derive(Debug, Clone)]
pub struct Type {
    pub id: DieId,
    pub name: String,
    pub size: u64,
    pub kind: TypeKind,
}

impl Type {
    pub fn members(&self) -> &[Member] {
        match &self.kind {
            TypeKind::Struct { members, .. } | TypeKind::Union { members } => members,
            _ => &[],
        }
    }
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members().iter().find(|m| m.name == name)
    }
    pub fn variant_part(&self) -> Option<&VariantPart> {
        match &self.kind {
            TypeKind::Struct { variants, .. } => variants.as_ref(),
            _ => None,
        }
    }
    pub fn param(&self, name: &str) -> Option<DieId> {
        match &self.kind {
            TypeKind::Struct { params, .. } => {
                params.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
            }
            _ => None,
        }
    }
    pub fn pointee(&self) -> Option<DieId> {
        match &self.kind {
            TypeKind::Pointer { target } => *target,
            _ => None,
        }
    }
    pub fn is_pointer(&self) -> bool {
        matches!(self.kind, TypeKind::Pointer { .. })
    }
}

/// A concrete function with code.
#[derive(Debug, Clone, Copy)]
pub struct FunctionRange {
    pub low: u64,
    pub high: u64,
    pub die: DieId,
}

/// A variable or parameter with its location expression at some pc.
#[derive(Debug, Clone)]
pub struct FrameVariable {
    pub name: String,
    pub ty: Option<DieId>,
    /// Raw DWARF expression (e.g. `DW_OP_fbreg N`); empty when the
    /// variable is optimised out at the pc asked about.
    pub location: Vec<u8>,
    /// The concrete function or inlined call the variable belongs to.
    pub scope: DieId,
}

/// Locals of one function and its frame base expression.
#[derive(Debug, Clone, Default)]
pub struct FrameVariables {
    pub frame_base: Option<Vec<u8>>,
    pub vars: Vec<FrameVariable>,
}

/// The result of the one full pass over `.debug_info`.
#[derive(Debug, Default)]
pub struct Index {
    /// Concrete functions sorted by `low`.
    pub functions: Vec<FunctionRange>,
    /// Thread-local variables with a TLS location: qualified name -> (type, offset in the TLS block).
    pub tls_vars: Vec<(String, Option<DieId>, u64)>,
    /// tokio structures and enums by qualified name (first definition wins).
    pub tokio_types: HashMap<String, DieId>,
    /// Qualified names of async state machines and library types that the
    /// decoder recognises (DW_AT_name alone is unqualified).
    pub qualified: HashMap<DieId, String>,
}

/// Lazily-read DWARF of one executable.
pub struct DebugInfo {
    dwarf: gimli::Dwarf<R>,
    headers: Vec<(usize, gimli::UnitHeader<R>)>,
    units: RefCell<HashMap<usize, Rc<gimli::Unit<R>>>>,
    types: RefCell<HashMap<DieId, Rc<Type>>>,
    index: OnceCell<Index>,
    /// Per source file: code bytes attributed to each line (line tables).
    line_weights: RefCell<HashMap<String, Rc<HashMap<u64, u64>>>>,
}

impl std::fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugInfo")
            .field("units", &self.headers.len())
            .finish()
    }
}

impl DebugInfo {
    /// Loads the DWARF sections of an ELF file (decompressing if needed).
    pub fn load(path: &Path, bytes: &[u8]) -> Result<DebugInfo> {
        let file = object::File::parse(bytes).map_err(|e| DumpError::Malformed {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let load = |id: gimli::SectionId| -> std::result::Result<R, gimli::Error> {
            let data = file
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .map(|d| Arc::<[u8]>::from(&*d))
                .unwrap_or_else(|| Arc::from(&[][..]));
            Ok(R::new(data, gimli::LittleEndian))
        };
        let dwarf = gimli::Dwarf::load(load).map_err(dwarf_err(0))?;
        let mut headers = Vec::new();
        let mut iter = dwarf.units();
        loop {
            match iter.next() {
                Ok(Some(h)) => {
                    let off = h.offset().0;
                    headers.push((off, h));
                }
                Ok(None) => break,
                // A truncated or corrupt unit: keep what was read before it.
                Err(_) => break,
            }
        }
        if headers.is_empty() {
            return Err(DumpError::NoDebugInfo {
                path: path.to_owned(),
            });
        }
        Ok(DebugInfo {
            dwarf,
            headers,
            units: RefCell::new(HashMap::new()),
            types: RefCell::new(HashMap::new()),
            index: OnceCell::new(),
            line_weights: RefCell::new(HashMap::new()),
        })
    }

    fn unit_for(&self, die: DieId) -> Result<(Rc<gimli::Unit<R>>, UnitOffset)> {
        let idx = self.headers.partition_point(|(off, _)| *off <= die);
        let Some(idx) = idx.checked_sub(1) else {
            return Err(dwarf_err(die)(gimli::Error::NoEntryAtGivenOffset(
                die as u64,
            )));
        };
        let (start, header) = &self.headers[idx];
        let unit = self.unit_at(idx, header)?;
        let rel = die - start;
        Ok((unit, UnitOffset(rel)))
    }

    fn unit_at(&self, idx: usize, header: &gimli::UnitHeader<R>) -> Result<Rc<gimli::Unit<R>>> {
        if let Some(u) = self.units.borrow().get(&idx) {
            return Ok(u.clone());
        }
        let unit = Rc::new(
            self.dwarf
                .unit(header.clone())
                .map_err(dwarf_err(self.headers[idx].0))?,
        );
        self.units.borrow_mut().insert(idx, unit.clone());
        Ok(unit)
    }

    fn global(unit: &gimli::Unit<R>, off: UnitOffset) -> Option<DieId> {
        off.to_debug_info_offset(&unit.header).map(|o| o.0)
    }

    fn attr_ref(unit: &gimli::Unit<R>, v: AttributeValue<R>) -> Option<DieId> {
        match v {
            AttributeValue::UnitRef(o) => Self::global(unit, o),
            AttributeValue::DebugInfoRef(DebugInfoOffset(o)) => Some(o),
            _ => None,
        }
    }

    fn attr_str(&self, unit: &gimli::Unit<R>, v: AttributeValue<R>) -> Option<String> {
        self.dwarf.attr_string(unit, v).ok().map(|s| {
            s.to_string_lossy()
                .map(|c| c.into_owned())
                .unwrap_or_default()
        })
    }

    fn file_name(&self, unit: &gimli::Unit<R>, index: u64) -> Option<String> {
        let program = unit.line_program.as_ref()?;
        let header = program.header();
        let file = header.file(index)?;
        let name = self.attr_str(unit, file.path_name())?;
        if name.starts_with('/') {
            return Some(name);
        }
        let dir = file
            .directory(header)
            .and_then(|d| self.attr_str(unit, d))
            .unwrap_or_default();
        if dir.is_empty() {
            Some(name)
        } else {
            Some(format!("{dir}/{name}"))
        }
    }

    /// The name of any DIE (following `DW_AT_specification` /
    /// `DW_AT_abstract_origin` for concrete functions).
    pub fn die_name(&self, die: DieId) -> Option<String> {
        let (unit, off) = self.unit_for(die).ok()?;
        let entry = unit.entry(off).ok()?;
        if let Some(v) = entry.attr_value(gimli::DW_AT_name) {
            return self.attr_str(&unit, v);
        }
        for at in [gimli::DW_AT_specification, gimli::DW_AT_abstract_origin] {
            if let Some(target) = entry.attr_value(at).and_then(|v| Self::attr_ref(&unit, v)) {
                if target != die {
                    return self.die_name(target);
                }
            }
        }
        None
    }

    /// A template type parameter of a function or type DIE, looking through
    /// `DW_AT_specification` / `DW_AT_abstract_origin` (bounded).
    pub fn template_param(&self, die: DieId, name: &str) -> Option<DieId> {
        let mut current = die;
        for _ in 0..4 {
            let (unit, off) = self.unit_for(current).ok()?;
            let mut tree = unit.entries_tree(Some(off)).ok()?;
            let root = tree.root().ok()?;
            let mut children = root.children();
            while let Ok(Some(child)) = children.next() {
                let e = child.entry();
                if e.tag() == gimli::DW_TAG_template_type_parameter
                    && e.attr_value(gimli::DW_AT_name)
                        .and_then(|v| self.attr_str(&unit, v))
                        .as_deref()
                        == Some(name)
                {
                    return e
                        .attr_value(gimli::DW_AT_type)
                        .and_then(|v| Self::attr_ref(&unit, v));
                }
            }
            let entry = unit.entry(off).ok()?;
            let next = [gimli::DW_AT_specification, gimli::DW_AT_abstract_origin]
                .into_iter()
                .find_map(|at| entry.attr_value(at).and_then(|v| Self::attr_ref(&unit, v)))?;
            current = next;
        }
        None
    }

    /// The type of a variable or formal parameter DIE.
    pub fn die_type(&self, die: DieId) -> Option<DieId> {
        let (unit, off) = self.unit_for(die).ok()?;
        let entry = unit.entry(off).ok()?;
        entry
            .attr_value(gimli::DW_AT_type)
            .and_then(|v| Self::attr_ref(&unit, v))
    }

    /// Formal parameters of a function DIE: (name, type).
    pub fn parameters(&self, die: DieId) -> Vec<(String, Option<DieId>)> {
        let mut out = Vec::new();
        let Ok((unit, off)) = self.unit_for(die) else {
            return out;
        };
        let Ok(mut tree) = unit.entries_tree(Some(off)) else {
            return out;
        };
        let Ok(root) = tree.root() else { return out };
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            let e = child.entry();
            if e.tag() == gimli::DW_TAG_formal_parameter {
                let name = e
                    .attr_value(gimli::DW_AT_name)
                    .and_then(|v| self.attr_str(&unit, v))
                    .unwrap_or_default();
                let ty = e
                    .attr_value(gimli::DW_AT_type)
                    .and_then(|v| Self::attr_ref(&unit, v));
                out.push((name, ty));
            }
        }
        out
    }

    /// Variables and parameters in scope at `pc` (link-time) in the
    /// concrete function `die`: through the lexical blocks and inlined
    /// calls whose ranges cover `pc` (bounded), each with the location
    /// expression valid at `pc` — the single expression, or the matching
    /// entry of its location list (optimised builds). Inlined parameters
    /// take their name and type from their abstract origin. Each variable
    /// records its scope (the function or inlined call it belongs to).
    pub fn variables_at(&self, die: DieId, pc: u64) -> FrameVariables {
        let mut out = FrameVariables::default();
        let Ok((unit, off)) = self.unit_for(die) else {
            return out;
        };
        let Ok(entry) = unit.entry(off) else {
            return out;
        };
        out.frame_base = match entry.attr_value(gimli::DW_AT_frame_base) {
            Some(AttributeValue::Exprloc(e)) => Some(e.0.to_vec()),
            _ => None,
        };
        let Ok(mut cursor) = unit.entries_tree(Some(off)) else {
            return out;
        };
        let Ok(root) = cursor.root() else {
            return out;
        };
        self.walk_scope(&unit, root, die, pc, 0, &mut out.vars);
        out
    }

    fn walk_scope(
        &self,
        unit: &gimli::Unit<R>,
        node: gimli::EntriesTreeNode<'_, '_, R>,
        scope: DieId,
        pc: u64,
        depth: usize,
        vars: &mut Vec<FrameVariable>,
    ) {
        let mut children = node.children();
        while let Ok(Some(child)) = children.next() {
            if vars.len() > 512 {
                return;
            }
            let e = child.entry();
            match e.tag() {
                gimli::DW_TAG_variable | gimli::DW_TAG_formal_parameter => {
                    // Empty: optimised out at this pc (kept: its type still
                    // says what to look for).
                    let location = self.location_at(unit, e, pc).unwrap_or_default();
                    let origin = e
                        .attr_value(gimli::DW_AT_abstract_origin)
                        .and_then(|v| Self::attr_ref(unit, v));
                    let name = e
                        .attr_value(gimli::DW_AT_name)
                        .and_then(|v| self.attr_str(unit, v))
                        .or_else(|| origin.and_then(|o| self.die_name(o)))
                        .unwrap_or_default();
                    let ty = e
                        .attr_value(gimli::DW_AT_type)
                        .and_then(|v| Self::attr_ref(unit, v))
                        .or_else(|| origin.and_then(|o| self.die_type(o)));
                    vars.push(FrameVariable {
                        name,
                        ty,
                        location,
                        scope,
                    });
                }
                gimli::DW_TAG_lexical_block | gimli::DW_TAG_inlined_subroutine
                    if depth < 32 && self.covers(unit, e, pc) =>
                {
                    let inner = if e.tag() == gimli::DW_TAG_inlined_subroutine {
                        Self::global(unit, e.offset()).unwrap_or(scope)
                    } else {
                        scope
                    };
                    self.walk_scope(unit, child, inner, pc, depth + 1, vars);
                }
                _ => {}
            }
        }
    }

    /// `true` when the DIE's code ranges contain `pc` (a DIE without
    /// ranges covers everything its parent does).
    fn covers(
        &self,
        unit: &gimli::Unit<R>,
        e: &gimli::DebuggingInformationEntry<R>,
        pc: u64,
    ) -> bool {
        if e.attr_value(gimli::DW_AT_low_pc).is_none()
            && e.attr_value(gimli::DW_AT_ranges).is_none()
        {
            return true;
        }
        let Ok(mut ranges) = self.dwarf.die_ranges(unit, e) else {
            return false;
        };
        for _ in 0..4096 {
            match ranges.next() {
                Ok(Some(r)) if r.begin <= pc && pc < r.end => return true,
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
        false
    }

    /// The location expression of a variable valid at `pc`.
    fn location_at(
        &self,
        unit: &gimli::Unit<R>,
        e: &gimli::DebuggingInformationEntry<R>,
        pc: u64,
    ) -> Option<Vec<u8>> {
        let value = e.attr_value(gimli::DW_AT_location)?;
        if let AttributeValue::Exprloc(expr) = value {
            return Some(expr.0.to_vec());
        }
        let mut list = self.dwarf.attr_locations(unit, value).ok()??;
        for _ in 0..4096 {
            match list.next() {
                Ok(Some(l)) if l.range.begin <= pc && pc < l.range.end => {
                    return Some(l.data.0.to_vec());
                }
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
        None
    }

    /// Decodes (and caches) the type DIE `id`, looking through typedefs and
    /// cv-qualifiers.
    pub fn ty(&self, id: DieId) -> Result<Rc<Type>> {
        if let Some(t) = self.types.borrow().get(&id) {
            return Ok(t.clone());
        }
        let mut current = id;
        let mut hops = 0;
        let ty = loop {
            let (unit, off) = self.unit_for(current)?;
            let entry = unit.entry(off).map_err(dwarf_err(current))?;
            let tag = entry.tag();
            if matches!(
                tag,
                gimli::DW_TAG_typedef
                    | gimli::DW_TAG_const_type
                    | gimli::DW_TAG_volatile_type
                    | gimli::DW_TAG_restrict_type
                    | gimli::DW_TAG_atomic_type
            ) && hops < 8
            {
                if let Some(next) = entry
                    .attr_value(gimli::DW_AT_type)
                    .and_then(|v| Self::attr_ref(&unit, v))
                {
                    current = next;
                    hops += 1;
                    continue;
                }
            }
            break self.decode_type(&unit, off, current)?;
        };
        let ty = Rc::new(ty);
        self.types.borrow_mut().insert(id, ty.clone());
        Ok(ty)
    }

    fn member_of(&self, unit: &gimli::Unit<R>, e: &gimli::DebuggingInformationEntry<R>) -> Member {
        let name = e
            .attr_value(gimli::DW_AT_name)
            .and_then(|v| self.attr_str(unit, v))
            .unwrap_or_default();
        let offset = match e.attr_value(gimli::DW_AT_data_member_location) {
            Some(AttributeValue::Udata(v)) => v,
            Some(AttributeValue::Sdata(v)) => v.max(0) as u64,
            Some(AttributeValue::Data1(v)) => u64::from(v),
            Some(AttributeValue::Data2(v)) => u64::from(v),
            Some(AttributeValue::Data4(v)) => u64::from(v),
            Some(AttributeValue::Data8(v)) => v,
            _ => 0,
        };
        let ty = e
            .attr_value(gimli::DW_AT_type)
            .and_then(|v| Self::attr_ref(unit, v));
        let decl_line = e
            .attr_value(gimli::DW_AT_decl_line)
            .and_then(|v| v.udata_value());
        let decl_file = e
            .attr_value(gimli::DW_AT_decl_file)
            .and_then(|v| match v {
                AttributeValue::FileIndex(i) => Some(i),
                other => other.udata_value(),
            })
            .and_then(|i| self.file_name(unit, i));
        Member {
            name,
            offset,
            ty,
            decl_file,
            decl_line,
        }
    }

    fn decode_type(&self, unit: &gimli::Unit<R>, off: UnitOffset, id: DieId) -> Result<Type> {
        let mut tree = unit.entries_tree(Some(off)).map_err(dwarf_err(id))?;
        let root = tree.root().map_err(dwarf_err(id))?;
        let entry = root.entry().clone();
        let name = entry
            .attr_value(gimli::DW_AT_name)
            .and_then(|v| self.attr_str(unit, v))
            .unwrap_or_default();
        let size = entry
            .attr_value(gimli::DW_AT_byte_size)
            .and_then(|v| v.udata_value())
            .unwrap_or(0);
        let target = entry
            .attr_value(gimli::DW_AT_type)
            .and_then(|v| Self::attr_ref(unit, v));
        let tag = entry.tag();
        let kind = match tag {
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_class_type => {
                let mut members = Vec::new();
                let mut params = Vec::new();
                let mut variants = None;
                let mut children = root.children();
                while let Some(child) = children.next().map_err(dwarf_err(id))? {
                    let e = child.entry().clone();
                    match e.tag() {
                        gimli::DW_TAG_member => members.push(self.member_of(unit, &e)),
                        gimli::DW_TAG_template_type_parameter => {
                            let pname = e
                                .attr_value(gimli::DW_AT_name)
                                .and_then(|v| self.attr_str(unit, v))
                                .unwrap_or_default();
                            if let Some(t) = e
                                .attr_value(gimli::DW_AT_type)
                                .and_then(|v| Self::attr_ref(unit, v))
                            {
                                params.push((pname, t));
                            }
                        }
                        gimli::DW_TAG_variant_part => {
                            variants = Some(self.decode_variant_part(unit, &e, child, id)?);
                        }
                        _ => {}
                    }
                }
                if tag == gimli::DW_TAG_union_type {
                    TypeKind::Union { members }
                } else {
                    TypeKind::Struct {
                        members,
                        variants,
                        params,
                    }
                }
            }
            gimli::DW_TAG_enumeration_type => {
                let mut enumerators = Vec::new();
                let mut children = root.children();
                while let Some(child) = children.next().map_err(dwarf_err(id))? {
                    let e = child.entry();
                    if e.tag() == gimli::DW_TAG_enumerator {
                        let n = e
                            .attr_value(gimli::DW_AT_name)
                            .and_then(|v| self.attr_str(unit, v))
                            .unwrap_or_default();
                        let v = e
                            .attr_value(gimli::DW_AT_const_value)
                            .and_then(|v| {
                                v.sdata_value()
                                    .or_else(|| v.udata_value().map(|u| u as i64))
                            })
                            .unwrap_or(0);
                        enumerators.push((n, v));
                    }
                }
                TypeKind::Enum { enumerators }
            }
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type => TypeKind::Pointer { target },
            gimli::DW_TAG_base_type => TypeKind::Base,
            gimli::DW_TAG_array_type => {
                let mut count = None;
                let mut children = root.children();
                while let Some(child) = children.next().map_err(dwarf_err(id))? {
                    let e = child.entry();
                    if e.tag() == gimli::DW_TAG_subrange_type {
                        count = e
                            .attr_value(gimli::DW_AT_count)
                            .and_then(|v| v.udata_value())
                            .or_else(|| {
                                e.attr_value(gimli::DW_AT_upper_bound)
                                    .and_then(|v| v.udata_value())
                                    .map(|u| u + 1)
                            });
                    }
                }
                TypeKind::Array {
                    elem: target,
                    count,
                }
            }
            _ => TypeKind::Other,
        };
        let size = if size == 0 && matches!(kind, TypeKind::Pointer { .. }) {
            8
        } else {
            size
        };
        Ok(Type {
            id,
            name,
            size,
            kind,
        })
    }

    fn decode_variant_part(
        &self,
        unit: &gimli::Unit<R>,
        part: &gimli::DebuggingInformationEntry<R>,
        node: gimli::EntriesTreeNode<'_, '_, R>,
        id: DieId,
    ) -> Result<VariantPart> {
        let discr_ref = part
            .attr_value(gimli::DW_AT_discr)
            .and_then(|v| Self::attr_ref(unit, v));
        let mut discr = None;
        let mut variants = Vec::new();
        let mut children = node.children();
        while let Some(child) = children.next().map_err(dwarf_err(id))? {
            let e = child.entry().clone();
            match e.tag() {
                gimli::DW_TAG_member => {
                    let m = self.member_of(unit, &e);
                    let here = Self::global(unit, e.offset());
                    if discr_ref.is_none() || discr_ref == here {
                        discr = Some(m);
                    }
                }
                gimli::DW_TAG_variant => {
                    let discr_value = e.attr_value(gimli::DW_AT_discr_value).and_then(|v| {
                        v.udata_value()
                            .or_else(|| v.sdata_value().map(|s| s as u64))
                    });
                    let mut inner = child.children();
                    while let Some(m) = inner.next().map_err(dwarf_err(id))? {
                        if m.entry().tag() == gimli::DW_TAG_member {
                            let member = self.member_of(unit, m.entry());
                            variants.push(Variant {
                                discr_value,
                                member,
                            });
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(VariantPart { discr, variants })
    }

    /// The index of functions, TLS variables and tokio types, built on first use.
    pub fn index(&self) -> &Index {
        self.index.get_or_init(|| self.build_index())
    }

    fn build_index(&self) -> Index {
        let mut index = Index::default();
        for (idx, (_start, header)) in self.headers.iter().enumerate() {
            let Ok(unit) = self.unit_at(idx, header) else {
                continue;
            };
            let mut cursor = unit.entries();
            // (depth, namespace name) of the enclosing namespaces.
            let mut stack: Vec<(isize, String)> = Vec::new();
            while let Ok(Some(entry)) = cursor.next_dfs() {
                let depth = entry.depth();
                while stack.last().is_some_and(|(d, _)| *d >= depth) {
                    stack.pop();
                }
                match entry.tag() {
                    gimli::DW_TAG_namespace => {
                        let name = entry
                            .attr_value(gimli::DW_AT_name)
                            .and_then(|v| self.attr_str(&unit, v))
                            .unwrap_or_default();
                        stack.push((depth, name));
                    }
                    gimli::DW_TAG_subprogram => {
                        let low = entry
                            .attr_value(gimli::DW_AT_low_pc)
                            .and_then(|v| self.dwarf.attr_address(&unit, v).ok().flatten());
                        if let Some(low) = low {
                            // DW_AT_high_pc is an address, or (any data form) a length.
                            let high = match entry.attr_value(gimli::DW_AT_high_pc) {
                                Some(
                                    v @ (AttributeValue::Addr(_)
                                    | AttributeValue::DebugAddrIndex(_)),
                                ) => self
                                    .dwarf
                                    .attr_address(&unit, v)
                                    .ok()
                                    .flatten()
                                    .unwrap_or(low + 1),
                                Some(v) => low + v.udata_value().unwrap_or(1),
                                None => low + 1,
                            };
                            if low != 0 {
                                if let Some(die) = Self::global(&unit, entry.offset()) {
                                    index.functions.push(FunctionRange { low, high, die });
                                }
                            }
                        }
                    }
                    gimli::DW_TAG_variable => {
                        let Some(AttributeValue::Exprloc(expr)) =
                            entry.attr_value(gimli::DW_AT_location)
                        else {
                            continue;
                        };
                        if let Some(offset) = tls_offset(&expr.0) {
                            let name = entry
                                .attr_value(gimli::DW_AT_name)
                                .and_then(|v| self.attr_str(&unit, v))
                                .unwrap_or_default();
                            let mut path: Vec<&str> =
                                stack.iter().map(|(_, n)| n.as_str()).collect();
                            path.push(&name);
                            let ty = entry
                                .attr_value(gimli::DW_AT_type)
                                .and_then(|v| Self::attr_ref(&unit, v));
                            index.tls_vars.push((path.join("::"), ty, offset));
                        }
                    }
                    gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_union_type
                    | gimli::DW_TAG_enumeration_type => {
                        if entry.attr_value(gimli::DW_AT_declaration).is_some() {
                            continue;
                        }
                        let Some(name) = entry
                            .attr_value(gimli::DW_AT_name)
                            .and_then(|v| self.attr_str(&unit, v))
                        else {
                            continue;
                        };
                        let Some(die) = Self::global(&unit, entry.offset()) else {
                            continue;
                        };
                        let top = stack.first().map(|(_, n)| n.as_str()).unwrap_or("");
                        let is_tokio = top == "tokio";
                        let interesting = is_tokio
                            || name.starts_with('{')
                            || matches!(
                                top,
                                "futures_util"
                                    | "futures_core"
                                    | "tracing"
                                    | "core"
                                    | "alloc"
                                    | "std"
                            );
                        if !interesting {
                            // User types: only async state machines matter.
                            continue;
                        }
                        let mut path: Vec<&str> = stack.iter().map(|(_, n)| n.as_str()).collect();
                        path.push(&name);
                        let qualified = path.join("::");
                        if is_tokio {
                            index.tokio_types.entry(qualified.clone()).or_insert(die);
                        }
                        index.qualified.insert(die, qualified);
                    }
                    _ => {}
                }
            }
        }
        index.functions.sort_by_key(|f| f.low);
        index
    }

    /// The qualified name of a type DIE when the index knows it, else its
    /// plain name.
    pub fn qualified_name(&self, ty: &Type) -> String {
        self.index()
            .qualified
            .get(&ty.id)
            .cloned()
            .unwrap_or_else(|| ty.name.clone())
    }

    /// The concrete function whose code starts exactly at `addr` (link-time).
    pub fn function_starting_at(&self, addr: u64) -> Option<DieId> {
        let f = &self.index().functions;
        let i = f.partition_point(|r| r.low < addr);
        f.get(i).filter(|r| r.low == addr).map(|r| r.die)
    }

    /// The innermost concrete function containing `addr` (link-time).
    pub fn function_containing(&self, addr: u64) -> Option<FunctionRange> {
        let f = &self.index().functions;
        let i = f.partition_point(|r| r.low <= addr);
        f[..i]
            .iter()
            .rev()
            .take(64)
            .find(|r| r.low <= addr && addr < r.high)
            .copied()
    }

    /// How many bytes of machine code the line tables attribute to each
    /// line of `file` (over every unit that has rows for it). Computed once
    /// per file. A macro's expansion is attributed to the line that invokes
    /// it, so its call site stands out among the lines around it.
    pub fn line_weights(&self, file: &str) -> Rc<HashMap<u64, u64>> {
        if let Some(w) = self.line_weights.borrow().get(file) {
            return w.clone();
        }
        let mut weights: HashMap<u64, u64> = HashMap::new();
        for (idx, (_, header)) in self.headers.iter().enumerate() {
            let Ok(unit) = self.unit_at(idx, header) else {
                continue;
            };
            let Some(program) = unit.line_program.clone() else {
                continue;
            };
            let count = program.header().file_names().len() as u64;
            let first = if program.header().version() >= 5 {
                0
            } else {
                1
            };
            let wanted: Vec<u64> = (first..first + count)
                .filter(|i| self.file_name(&unit, *i).as_deref() == Some(file))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let mut rows = program.rows();
            let mut prev: Option<(u64, u64, u64)> = None; // (address, file, line)
            while let Ok(Some((_, row))) = rows.next_row() {
                if let Some((addr, f, line)) = prev {
                    let bytes = row.address().saturating_sub(addr).min(1 << 16);
                    if line != 0 && wanted.contains(&f) {
                        *weights.entry(line).or_default() += bytes;
                    }
                }
                prev = if row.end_sequence() {
                    None
                } else {
                    Some((
                        row.address(),
                        row.file_index(),
                        row.line().map(|l| l.get()).unwrap_or(0),
                    ))
                };
            }
        }
        let weights = Rc::new(weights);
        self.line_weights
            .borrow_mut()
            .insert(file.to_string(), weights.clone());
        weights
    }

    /// Source file and line of a code address (link-time), from the line
    /// tables of the unit covering it.
    pub fn line_for(&self, addr: u64) -> Option<(String, u64)> {
        for (idx, (_, header)) in self.headers.iter().enumerate() {
            let unit = self.unit_at(idx, header).ok()?;
            let mut ranges = self.dwarf.unit_ranges(&unit).ok()?;
            let mut covers = false;
            while let Ok(Some(r)) = ranges.next() {
                if r.begin <= addr && addr < r.end {
                    covers = true;
                    break;
                }
            }
            if !covers {
                continue;
            }
            let program = unit.line_program.clone()?;
            let mut rows = program.rows();
            let mut best: Option<(u64, u64, u64)> = None; // (address, file, line)
            let mut prev: Option<(u64, u64, u64)> = None;
            while let Ok(Some((_, row))) = rows.next_row() {
                let here = (
                    row.address(),
                    row.file_index(),
                    row.line().map(|l| l.get()).unwrap_or(0),
                );
                if row.end_sequence() {
                    if let Some(p) = prev {
                        if p.0 <= addr && addr < here.0 {
                            best = Some(p);
                        }
                    }
                    prev = None;
                    continue;
                }
                if let Some(p) = prev {
                    if p.0 <= addr && addr < here.0 {
                        best = Some(p);
                    }
                }
                prev = Some(here);
            }
            let (_, file, line) = best?;
            let name = self.file_name(&unit, file)?;
            return Some((name, line));
        }
        None
    }
}

/// Decodes `DW_OP_const{4,8}u X; DW_OP_{GNU_push_tls_address,form_tls_address}`.
fn tls_offset(expr: &R) -> Option<u64> {
    let b: &[u8] = expr;
    let (value, rest) = match b.first()? {
        0x0e => (
            u64::from_le_bytes(b.get(1..9)?.try_into().ok()?),
            b.get(9..)?,
        ),
        0x0c => (
            u64::from(u32::from_le_bytes(b.get(1..5)?.try_into().ok()?)),
            b.get(5..)?,
        ),
        _ => return None,
    };
    matches!(rest, [0xe0] | [0x9b]).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(bytes: &[u8]) -> R {
        R::new(Arc::from(bytes), gimli::LittleEndian)
    }

    #[test]
    fn tls_locations_are_decoded() {
        let mut b = vec![0x0e];
        b.extend_from_slice(&0x48u64.to_le_bytes());
        b.push(0xe0);
        assert_eq!(tls_offset(&expr(&b)), Some(0x48));
        let mut b = vec![0x0c];
        b.extend_from_slice(&0x10u32.to_le_bytes());
        b.push(0x9b);
        assert_eq!(tls_offset(&expr(&b)), Some(0x10));
        // An ordinary static address is not a TLS location.
        let mut b = vec![0x03];
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(tls_offset(&expr(&b)), None);
        assert_eq!(tls_offset(&expr(&[0x0e, 1, 2])), None, "truncated");
    }
}
