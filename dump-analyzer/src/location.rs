//! DWARF location expressions, evaluated against one unwound frame.
//!
//! Finding a future on a thread's stack (the one `block_on` drives) means
//! evaluating the location of a variable at a frame's pc: in debug builds a
//! plain `DW_OP_fbreg N`; in optimised builds an entry of a location list
//! such as `DW_OP_breg7 RSP+328` or a frame base of
//! `DW_OP_call_frame_cfa; DW_OP_consts -N; DW_OP_plus`. This module runs the
//! small stack machine those need, over the registers the unwinder
//! recovered (the callee-saved ones, the stack pointer and the CFA).
//! Anything else (pieces, entry values, register-held aggregates) yields
//! `None`: the variable is then treated as unavailable, never guessed.

use crate::elf::Registers;
use crate::memory::MemorySource;

/// Where a variable lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In memory at this address.
    Memory(u64),
    /// Not in memory: this is its value (`DW_OP_stack_value`).
    Value(u64),
}

/// What an expression may refer to.
pub struct Frame<'a> {
    pub regs: &'a Registers,
    /// The frame's canonical frame address (the caller's stack pointer).
    pub cfa: Option<u64>,
    /// The function's `DW_AT_frame_base` expression.
    pub frame_base: Option<&'a [u8]>,
    pub memory: &'a dyn MemorySource,
}

fn uleb(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut result = 0u64;
    let mut shift = 0;
    loop {
        let b = *bytes.get(*at)?;
        *at += 1;
        if shift < 64 {
            result |= u64::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b & 0x80 == 0 {
            return Some(result);
        }
        if shift > 70 {
            return None;
        }
    }
}

fn sleb(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut result = 0i64;
    let mut shift = 0;
    loop {
        let b = *bytes.get(*at)?;
        *at += 1;
        if shift < 64 {
            result |= i64::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b & 0x80 == 0 {
            if shift < 64 && b & 0x40 != 0 {
                result |= -1i64 << shift;
            }
            return Some(result);
        }
        if shift > 70 {
            return None;
        }
    }
}

impl Frame<'_> {
    /// The frame base: `DW_OP_regN` means the register's value.
    fn frame_base(&self, depth: u8) -> Option<u64> {
        let expr = self.frame_base?;
        if let [op @ 0x50..=0x6f] = expr {
            return self.regs.dwarf(u16::from(op - 0x50));
        }
        match self.eval_inner(expr, depth + 1)? {
            Location::Memory(a) | Location::Value(a) => Some(a),
        }
    }

    /// Evaluates a location expression.
    pub fn eval(&self, expr: &[u8]) -> Option<Location> {
        self.eval_inner(expr, 0)
    }

    fn eval_inner(&self, expr: &[u8], depth: u8) -> Option<Location> {
        if depth > 2 || expr.is_empty() || expr.len() > 64 {
            return None;
        }
        let mut stack: Vec<u64> = Vec::new();
        let mut at = 0usize;
        let mut value = false;
        while at < expr.len() {
            let op = expr[at];
            at += 1;
            match op {
                0x30..=0x4f => stack.push(u64::from(op - 0x30)), // DW_OP_litN
                0x70..=0x8f => {
                    // DW_OP_bregN offset
                    let off = sleb(expr, &mut at)?;
                    let reg = self.regs.dwarf(u16::from(op - 0x70))?;
                    stack.push(reg.wrapping_add_signed(off));
                }
                0x91 => {
                    // DW_OP_fbreg offset
                    let off = sleb(expr, &mut at)?;
                    stack.push(self.frame_base(depth)?.wrapping_add_signed(off));
                }
                0x9c => stack.push(self.cfa?), // DW_OP_call_frame_cfa
                0x10 => stack.push(uleb(expr, &mut at)?), // DW_OP_constu
                0x11 => stack.push(sleb(expr, &mut at)? as u64), // DW_OP_consts
                0x22 => {
                    // DW_OP_plus
                    let (b, a) = (stack.pop()?, stack.pop()?);
                    stack.push(a.wrapping_add(b));
                }
                0x1c => {
                    // DW_OP_minus
                    let (b, a) = (stack.pop()?, stack.pop()?);
                    stack.push(a.wrapping_sub(b));
                }
                0x23 => {
                    // DW_OP_plus_uconst
                    let n = uleb(expr, &mut at)?;
                    let a = stack.pop()?;
                    stack.push(a.wrapping_add(n));
                }
                0x06 => {
                    // DW_OP_deref
                    let a = stack.pop()?;
                    stack.push(self.memory.read_u64(a).ok()?);
                }
                0x9f => {
                    // DW_OP_stack_value: must end the expression.
                    value = true;
                    if at != expr.len() {
                        return None;
                    }
                }
                _ => return None,
            }
            if stack.len() > 16 {
                return None;
            }
        }
        let top = stack.pop()?;
        Some(if value {
            Location::Value(top)
        } else {
            Location::Memory(top)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MemoryError;

    struct NoMemory;
    impl MemorySource for NoMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            Err(MemoryError::Unmapped {
                addr,
                len: buf.len(),
            })
        }
    }

    fn frame<'a>(regs: &'a Registers, base: Option<&'a [u8]>) -> Frame<'a> {
        Frame {
            regs,
            cfa: Some(0x17000),
            frame_base: base,
            memory: &NoMemory,
        }
    }

    #[test]
    fn debug_and_release_shapes_are_evaluated() {
        let regs = Registers {
            rsp: 0x1000,
            rbp: 0x2000,
            rbx: 0x3000,
            ..Registers::default()
        };
        // Debug: frame base RSP, DW_OP_fbreg +16.
        let f = frame(&regs, Some(&[0x57]));
        assert_eq!(f.eval(&[0x91, 0x10]), Some(Location::Memory(0x1010)));
        // Release: frame base CFA - 40496, DW_OP_fbreg +96.
        let base = [0x9c, 0x11, 0xd0, 0xc3, 0x7d, 0x22];
        let f = frame(&regs, Some(&base));
        assert_eq!(
            f.eval(&[0x91, 0xe0, 0x00]),
            Some(Location::Memory(0x17000 - 40496 + 96))
        );
        // DW_OP_breg7 RSP+328; DW_OP_stack_value.
        assert_eq!(
            f.eval(&[0x77, 0xc8, 0x02, 0x9f]),
            Some(Location::Value(0x1000 + 328))
        );
        // DW_OP_breg3 RBX+0.
        assert_eq!(f.eval(&[0x73, 0x00]), Some(Location::Memory(0x3000)));
    }

    #[test]
    fn leb128_operands_are_decoded() {
        let s = |b: &[u8]| sleb(b, &mut 0);
        assert_eq!(s(&[0x02]), Some(2));
        assert_eq!(s(&[0x7e]), Some(-2));
        assert_eq!(s(&[0x98, 0x02]), Some(280));
        assert_eq!(s(&[0x80, 0x7f]), Some(-128));
        assert_eq!(s(&[0x80]), None, "truncated");
        assert_eq!(uleb(&[0xe5, 0x8e, 0x26], &mut 0), Some(624_485));
    }

    #[test]
    fn what_cannot_be_known_is_none() {
        let regs = Registers::default();
        let f = frame(&regs, None);
        // DW_OP_fbreg without a frame base.
        assert_eq!(f.eval(&[0x91, 0x10]), None);
        // DW_OP_entry_value(DW_OP_reg4 RSI): caller-clobbered, unknown.
        assert_eq!(f.eval(&[0xa3, 0x01, 0x54]), None);
        // DW_OP_reg4 RSI (not tracked by the unwinder) and pieces.
        assert_eq!(f.eval(&[0x74, 0x00]), None);
        assert_eq!(f.eval(&[0x93, 0x08]), None);
        // Truncated operand, stack underflow, deref of unmapped memory.
        assert_eq!(f.eval(&[0x77]), None);
        assert_eq!(f.eval(&[0x22]), None);
        assert_eq!(f.eval(&[0x30, 0x06]), None);
    }
}
