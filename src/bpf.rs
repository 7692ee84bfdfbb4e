//! The few eBPF system calls Ballast makes, by hand (`bpf(2)`): maps, programs of a handful
//! of instructions each, and attaching them. Shared by the accept steering
//! ([`crate::steering`]) and the sockmap forwarding ([`crate::sockmap`]); the programs
//! themselves live with their users, documented instruction by instruction.
//!
//! Everything here needs `CAP_BPF` (or root); callers fall back when it fails.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;

/// `union bpf_attr` for BPF_MAP_CREATE (the fields used; the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for BPF_MAP_UPDATE_ELEM and BPF_MAP_DELETE_ELEM.
#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_PROG_LOAD (up to the log buffer).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; the kernel
    // reads it (and for PROG_LOAD writes the log through the pointer inside, valid too).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new map of `map_type` with `entries` elements of `key_size` and `value_size` bytes.
///
/// # Errors
/// The kernel's: EPERM without CAP_BPF, EINVAL for a type or size it does not take.
pub(crate) fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    entries: usize,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries: entries as u32,
        map_flags: flags,
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sets `key` to `value` in `map` (both as the map's sizes; BPF_ANY: created or replaced).
///
/// # Errors
/// The kernel's: E2BIG when full, EINVAL for a value the map does not take (a socket a
/// sockmap refuses), EOPNOTSUPP for a socket in a state it cannot hold.
pub(crate) fn update_elem<K, V>(map: RawFd, key: &K, value: &V) -> io::Result<()> {
    let mut attr = MapElem {
        map_fd: map as u32,
        _pad: 0,
        key: (key as *const K) as u64,
        value: (value as *const V) as u64,
        flags: 0, // BPF_ANY
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Removes `key` from `map`.
///
/// # Errors
/// The kernel's: ENOENT when it is not there.
pub(crate) fn delete_elem<K>(map: RawFd, key: &K) -> io::Result<()> {
    let mut attr = MapElem {
        map_fd: map as u32,
        _pad: 0,
        key: (key as *const K) as u64,
        value: 0,
        flags: 0,
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(drop)
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// The instruction `code` with destination register `dst`, source `src`, offset and
/// immediate.
pub(crate) fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The two instructions loading map `fd` into register `dst` (`BPF_LD_MAP_FD`).
pub(crate) fn load_map_fd(p: &mut Vec<Insn>, dst: u8, fd: RawFd) {
    p.push(insn(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd));
    p.push(insn(0, 0, 0, 0, 0));
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
pub(crate) const MOV64_X: u8 = 0xbf;
pub(crate) const MOV64_K: u8 = 0xb7;
pub(crate) const ADD64_K: u8 = 0x07;
pub(crate) const ADD64_X: u8 = 0x0f;
pub(crate) const ST_W: u8 = 0x62;
pub(crate) const STX_W: u8 = 0x63;
pub(crate) const STX_DW: u8 = 0x7b;
pub(crate) const ST_DW: u8 = 0x7a;
pub(crate) const LDX_W: u8 = 0x61;
pub(crate) const LDX_DW: u8 = 0x79;
pub(crate) const ATOMIC_DW: u8 = 0xdb; // BPF_STX | BPF_ATOMIC | BPF_DW, imm BPF_ADD
pub(crate) const LD_IMM64: u8 = 0x18;
pub(crate) const JEQ_K: u8 = 0x15;
pub(crate) const JNE_K: u8 = 0x55;
pub(crate) const JGE_X: u8 = 0x3d;
pub(crate) const JGT_X: u8 = 0x2d;
pub(crate) const JA: u8 = 0x05;
pub(crate) const CALL: u8 = 0x85;
pub(crate) const EXIT: u8 = 0x95;
const PSEUDO_MAP_FD: u8 = 1;

/// Helper `bpf_map_lookup_elem` (linux/bpf.h's `enum bpf_func_id`).
pub(crate) const FN_MAP_LOOKUP_ELEM: i32 = 1;
/// What socket programs answer to let a connection or segment through.
pub(crate) const SK_PASS: i32 = 1;
/// What they answer to drop it.
pub(crate) const SK_DROP: i32 = 0;

/// Loads `insns` as a program of `prog_type` (GPL-compatible licence: the sockmap helpers
/// need one); `what` names it in the error.
///
/// # Errors
/// The kernel's refusal, with the verifier log's last line.
pub(crate) fn load_program(prog_type: u32, insns: &[Insn], what: &str) -> io::Result<OwnedFd> {
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            Err(io::Error::new(
                e.kind(),
                format!(
                    "the kernel refused the {what} program: {e} ({})",
                    last.unwrap_or("no verifier log")
                ),
            ))
        }
    }
}

/// Attaches `program` to `target` (a map's or a cgroup's descriptor) as `attach_type`.
///
/// # Errors
/// The kernel's.
pub(crate) fn attach(target: RawFd, program: RawFd, attach_type: u32) -> io::Result<()> {
    attachment(BPF_PROG_ATTACH, target, program, attach_type)
}

/// Detaches `program` of `attach_type` from `target`.
///
/// # Errors
/// The kernel's.
pub(crate) fn detach(target: RawFd, program: RawFd, attach_type: u32) -> io::Result<()> {
    attachment(BPF_PROG_DETACH, target, program, attach_type)
}

fn attachment(cmd: libc::c_long, target: RawFd, program: RawFd, kind: u32) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: target as u32,
        attach_bpf_fd: program as u32,
        attach_type: kind,
        attach_flags: 0,
    };
    bpf(cmd, &mut attr).map(drop)
}

/// `BPF_F_MMAPABLE`: an array map this process can map and share with its programs.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const MAP_TYPE_ARRAY: u32 = 2;

/// An array map of `entries` values of `value_size` bytes (a multiple of 8), mapped into this
/// process: programs and this process share its words, which both touch only atomically.
#[derive(Debug)]
pub(crate) struct SharedArray {
    map: OwnedFd,
    ptr: *mut std::sync::atomic::AtomicU64,
    len: usize,
    mapped_bytes: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives as long as
// the value and is unmapped once, in `drop`.
unsafe impl Send for SharedArray {}
// SAFETY: as above: every access goes through `AtomicU64`.
unsafe impl Sync for SharedArray {}

impl SharedArray {
    /// A new array map of `entries` × `value_size` bytes, mapped here.
    ///
    /// # Errors
    /// The kernel's (EPERM without CAP_BPF; mmapable arrays need Linux ≥ 5.5), mmap's.
    pub(crate) fn new(entries: usize, value_size: usize) -> io::Result<SharedArray> {
        debug_assert_eq!(value_size % 8, 0);
        let map = create_map(
            MAP_TYPE_ARRAY,
            4,
            value_size as u32,
            entries,
            BPF_F_MMAPABLE,
        )?;
        let page = 4096;
        let mapped_bytes = (entries * value_size).div_ceil(page) * page;
        // SAFETY: mapping a BPF array map created mmapable, shared, over its whole value area.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedArray {
            map,
            ptr: ptr.cast(),
            len: entries * value_size / 8,
            mapped_bytes,
        })
    }

    /// The map, for programs to use.
    pub(crate) fn fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.map)
    }

    /// Every word of every value, in order.
    pub(crate) fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: `ptr` points at `len` u64 words of a live MAP_SHARED mapping (page-aligned),
        // only ever accessed atomically.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for SharedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mapped in `new`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.mapped_bytes) };
    }
}
