//! Where the running kernel keeps a field: the offset of a struct member, read from the
//! kernel's own type information (BTF, `/sys/kernel/btf/vmlinux`, Linux ≥ 5.4 built with
//! `CONFIG_DEBUG_INFO_BTF`). Offsets of kernel structs change with versions and build
//! options, so a program that reads one must not guess it.
//!
//! Only what [`member_offset`] needs of the format is read (Documentation/bpf/btf.rst: a
//! header, then the types, each a 12-byte `btf_type` and a trailer whose size depends on its
//! kind, then the strings).

use std::io;

const PATH: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One struct or union: its name and members (name, type id, bit offset).
struct Composite {
    name: u32,
    members: Vec<(u32, u32, u32)>,
}

/// The byte offset of member `member` in `struct name` of the running kernel, looking
/// through anonymous structs and unions (`sk_buff.sk` sits in one).
///
/// # Errors
/// `NotFound` without BTF or without that struct or member; `InvalidData` for a file that
/// is not BTF.
pub(crate) fn member_offset(name: &str, member: &str) -> io::Result<u32> {
    let data = std::fs::read(PATH)?;
    offset_in(&data, name, member)
}

fn offset_in(data: &[u8], name: &str, member: &str) -> io::Result<u32> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not BTF");
    let u32_at = |at: usize| -> io::Result<u32> {
        let b = data.get(at..at + 4).ok_or_else(bad)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
        return Err(bad());
    }
    let header = u32_at(4)? as usize;
    let (types_at, types_len) = (header + u32_at(8)? as usize, u32_at(12)? as usize);
    let (strings_at, strings_len) = (header + u32_at(16)? as usize, u32_at(20)? as usize);
    let strings = data
        .get(strings_at..strings_at + strings_len)
        .ok_or_else(bad)?;
    let string = |off: u32| cstr(strings, off);
    // Type ids start at 1; index 0 stands for `void`.
    let mut composites: Vec<Option<Composite>> = vec![None];
    let mut at = types_at;
    while at < types_at + types_len {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
        at += 12;
        let trailer = match kind {
            1 | 14 | 17 => 4,             // int, var, decl_tag
            3 => 12,                      // array
            4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
            6 | 13 => 8 * vlen,           // enum, func_proto
            _ => 0,
        };
        composites.push(if kind == KIND_STRUCT || kind == KIND_UNION {
            let mut members = Vec::with_capacity(vlen);
            for m in 0..vlen {
                let (mn, mt, mo) = (
                    u32_at(at + 12 * m)?,
                    u32_at(at + 12 * m + 4)?,
                    u32_at(at + 12 * m + 8)?,
                );
                members.push((mn, mt, if kflag == 1 { mo & 0xff_ffff } else { mo }));
            }
            Some(Composite {
                name: name_off,
                members,
            })
        } else {
            None
        });
        at += trailer;
    }
    composites
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.as_ref()
                .is_some_and(|c| string(c.name) == name.as_bytes())
        })
        .find_map(|(ty, _)| search(&composites, strings, ty, member.as_bytes(), 0))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {name}.{member} in the kernel's BTF"),
            )
        })
}

/// The NUL-terminated string at `off` of the string section.
fn cstr(strings: &[u8], off: u32) -> &[u8] {
    let s = strings.get(off as usize..).unwrap_or_default();
    &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
}

/// Member `member`'s byte offset in composite type `ty`, or in an anonymous struct or union
/// it holds (four levels at most).
fn search(
    all: &[Option<Composite>],
    strings: &[u8],
    ty: usize,
    member: &[u8],
    depth: u32,
) -> Option<u32> {
    let c = all.get(ty)?.as_ref()?;
    for &(name, inner, bits) in &c.members {
        if cstr(strings, name) == member {
            return Some(bits / 8);
        }
        if name == 0 && depth < 4 {
            if let Some(at) = search(all, strings, inner as usize, member, depth + 1) {
                return Some(bits / 8 + at);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields the sockmap program reads, as this kernel lays them out.
    #[test]
    fn finds_the_fields_the_sockmap_program_reads() {
        if !std::path::Path::new(PATH).exists() {
            return; // no BTF: sockmap is unavailable there, and says so
        }
        // `cb` has sat at 40 on 64-bit kernels for years; `sk` in an anonymous union at 24.
        assert_eq!(member_offset("sk_buff", "cb").unwrap(), 40);
        assert_eq!(member_offset("sk_buff", "sk").unwrap(), 24);
        let copied = member_offset("tcp_sock", "copied_seq").unwrap();
        assert!(copied > 1000, "tcp_sock.copied_seq at {copied}");
        assert!(member_offset("tcp_sock", "no_such_member").is_err());
        assert!(offset_in(b"not btf at all, not at all", "sk_buff", "cb").is_err());
    }
}
