//! Datagrams in batches: `recvmmsg(2)` and `sendmmsg(2)` over buffers allocated once.
//!
//! A [`Batch`] holds `capacity` slots of 64 KiB (enough for the largest UDP payload, 65,507
//! bytes over IPv4), their iovecs, source addresses and message headers. Receiving fills the
//! slots; sending points the headers at a run of filled slots, so a datagram is never copied
//! in user space and nothing is allocated per datagram. With `max == 1` the plain
//! `recvfrom`/`send`/`sendto` calls are used instead (the unbatched path, kept for measuring).
//!
//! On a wildcard listener (`0.0.0.0`, `[::]`) the kernel tells each datagram's destination
//! address in an `IP_PKTINFO` / `IPV6_PKTINFO` control message ([`Batch::recv`] with
//! `want_local`), and a reply names its source address the same way ([`Batch::send`] with
//! `from`), so it leaves from the address the client sent to (`ip(7)`, `ipv6(7)`).

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Bytes per slot: the largest UDP datagram fits.
pub(crate) const SLOT: usize = 65536;

/// `UDP_SEGMENT` from `linux/udp.h` (not in the libc crate): the segment size of a UDP GSO send.
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments in one GSO send (`UDP_MAX_SEGMENTS` in the kernel).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send: one IPv4 datagram's worth.
const GSO_MAX_BYTES: usize = 65507;
/// Largest datagram sent by GSO: the UDP payload of a 1,500-byte MTU. The kernel refuses a
/// segment that would not fit the path MTU (EINVAL), where a plain send would fragment, so
/// bigger datagrams go one by one.
const GSO_MAX_SEGMENT: usize = 1472;

/// Cleared for good the first time the kernel refuses a GSO send.
static GSO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Preallocated buffers and headers for up to `capacity` datagrams.
pub(crate) struct Batch {
    data: Vec<u8>,
    lens: Vec<usize>,
    names: Vec<libc::sockaddr_storage>,
    name_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One control-message buffer per header: the destination address of a received
    /// datagram; the GSO segment size and the source address of a send.
    cmsgs: Vec<CmsgBuffer>,
    /// The destination address of each received datagram, when asked for.
    locals: Vec<Option<IpAddr>>,
    /// Datagrams in each header of the last send.
    group: Vec<usize>,
    dest: libc::sockaddr_storage,
}

// SAFETY: the raw pointers inside the headers only ever point into this struct's own heap
// buffers, which move with it; nothing is shared.
unsafe impl Send for Batch {}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch {{ capacity: {} }}", self.capacity())
    }
}

/// Room for a `UDP_SEGMENT` message (24 bytes) and an `in6_pktinfo` one (40 bytes), aligned
/// for `cmsghdr`.
type CmsgBuffer = [u64; 8];

fn os_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Batch {
    /// Buffers for `capacity` (≥ 1) datagrams: `capacity × 64 KiB` of memory.
    pub(crate) fn new(capacity: usize) -> Batch {
        let capacity = capacity.max(1);
        // SAFETY: sockaddr_storage is a plain C struct of integers and byte arrays, for which
        // all-zero is a valid value (family AF_UNSPEC).
        let zero_name: libc::sockaddr_storage = unsafe { mem::zeroed() };
        // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value (null name, iovec and
        // control pointers with zero lengths), and every pointer is set before each call that
        // reads it (`recv`, `send`).
        let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        Batch {
            data: vec![0u8; capacity * SLOT],
            lens: vec![0; capacity],
            names: vec![zero_name; capacity],
            name_lens: vec![0; capacity],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ],
            hdrs: vec![zero_hdr; capacity],
            cmsgs: vec![[0u64; 8]; capacity],
            locals: vec![None; capacity],
            group: vec![0; capacity],
            dest: zero_name,
        }
    }

    /// How many datagrams one call can move.
    pub(crate) fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Receives up to `max` datagrams (at most the capacity) from the non-blocking socket
    /// `fd` into slots `0..n`; returns `n` (≥ 1). With `want_local`, also the address each
    /// was sent to ([`Batch::local`]); `fd` must have `IP_PKTINFO` (IPv4) or
    /// `IPV6_RECVPKTINFO` (IPv6) set, see `net::reuseport_udp_socket`.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is waiting; any other error of `recvmmsg`/`recvfrom` (for a
    /// connected socket, `ConnectionRefused` reports an ICMP port unreachable).
    // Slot indices here are below `max`, or below `range.end`, clamped to the capacity, which
    // every vector of the batch has; counts the kernel returns are at most those asked for.
    #[allow(clippy::indexing_slicing)]
    pub(crate) fn recv(&mut self, fd: RawFd, max: usize, want_local: bool) -> io::Result<usize> {
        let max = max.clamp(1, self.capacity());
        let base = self.data.as_mut_ptr();
        if max == 1 && !want_local {
            self.name_lens[0] = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: slot 0 and names[0] are valid for writes of the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    base.cast(),
                    SLOT,
                    0,
                    (&mut self.names[0] as *mut libc::sockaddr_storage).cast(),
                    &mut self.name_lens[0],
                )
            };
            self.lens[0] = os_result(n)?;
            return Ok(1);
        }
        for i in 0..max {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot i lies inside `data` (i < capacity).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            if want_local {
                hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                hdr.msg_controllen = mem::size_of::<CmsgBuffer>();
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            hdr.msg_flags = 0;
        }
        // SAFETY: the first `max` headers point at valid, writable buffers and names.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                max as libc::c_uint,
                0,
                std::ptr::null_mut(),
            )
        };
        let n = os_result(n as isize)?;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.name_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
            // Read now: a send reuses the control buffers.
            self.locals[i] = if want_local {
                pktinfo_destination(&self.hdrs[i].msg_hdr)
            } else {
                None
            };
        }
        Ok(n)
    }

    /// The address received datagram `i` was sent to: `Some` when [`Batch::recv`] was asked
    /// for it and the kernel gave it.
    pub(crate) fn local(&self, i: usize) -> Option<IpAddr> {
        self.locals.get(i).copied().flatten()
    }

    /// The payload of received datagram `i` (empty for a slot out of range).
    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let len = self.lens.get(i).copied().unwrap_or(0).min(SLOT);
        self.data.get(i * SLOT..i * SLOT + len).unwrap_or(&[])
    }

    /// Cuts `front` octets from the start and `back` from the end of received datagram `i`
    /// (a routing token), in place; nothing when it is shorter than both.
    pub(crate) fn trim(&mut self, i: usize, front: usize, back: usize) {
        let Some(len) = self.lens.get(i).copied().map(|l| l.min(SLOT)) else {
            return;
        };
        let Some(kept) = len.checked_sub(front + back) else {
            return;
        };
        let start = i * SLOT;
        if front > 0 {
            self.data
                .copy_within(start + front..start + front + kept, start);
        }
        if let Some(l) = self.lens.get_mut(i) {
            *l = kept;
        }
    }

    /// The source address of received datagram `i`.
    pub(crate) fn source(&self, i: usize) -> Option<SocketAddr> {
        let (name, len) = (self.names.get(i)?, self.name_lens.get(i)?);
        // SAFETY: the name was filled by the kernel with `len` valid bytes.
        let addr = unsafe { SockAddr::new(*name, *len) };
        addr.as_socket()
    }

    /// One `sendmmsg` of slots `range`, grouped: a run of equal-sized datagrams (the last may
    /// be shorter) goes as one UDP GSO message with `UDP_SEGMENT`, which the kernel splits back
    /// into the same datagrams after one trip through the IP stack instead of one per datagram.
    /// Returns how many datagrams (not messages) were sent.
    // Slot indices here are below `max`, or below `range.end`, clamped to the capacity, which
    // every vector of the batch has; counts the kernel returns are at most those asked for.
    #[allow(clippy::indexing_slicing)]
    fn send_groups(
        &mut self,
        fd: RawFd,
        range: Range<usize>,
        name: *mut libc::c_void,
        name_len: libc::socklen_t,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        use std::sync::atomic::Ordering;
        let gso = GSO.load(Ordering::Relaxed);
        let base = self.data.as_mut_ptr();
        for i in range.clone() {
            self.iovs[i] = libc::iovec {
                // SAFETY: slot i lies inside `data`.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: self.lens[i],
            };
        }
        let mut groups = 0;
        let mut i = range.start;
        while i < range.end {
            let size = self.lens[i];
            let mut j = i + 1;
            if gso && size > 0 && size <= GSO_MAX_SEGMENT {
                while j < range.end
                    && j - i < GSO_MAX_SEGMENTS
                    && self.lens[j] <= size
                    && self.lens[j] > 0
                    && (j - i + 1) * size <= GSO_MAX_BYTES
                {
                    j += 1;
                    if self.lens[j - 1] < size {
                        break; // a shorter datagram can only end a group
                    }
                }
            }
            let hdr = &mut self.hdrs[groups].msg_hdr;
            hdr.msg_name = name;
            hdr.msg_namelen = name_len;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = j - i;
            hdr.msg_flags = 0;
            let segment = (j - i > 1).then_some(size as u16);
            fill_control(hdr, &mut self.cmsgs[groups], segment, from);
            self.group[groups] = j - i;
            groups += 1;
            i = j;
        }
        // SAFETY: headers 0..groups point at filled slots, their iovecs, cmsgs and a valid
        // (or null) name.
        let n = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), groups as libc::c_uint, 0) };
        match os_result(n as isize) {
            Ok(n) => Ok(self.group[..n].iter().sum()),
            Err(e)
                if gso
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
                    )
                    && self.group[..groups].iter().any(|&g| g > 1) =>
            {
                log::info!("UDP GSO refused by the kernel ({e}); sending datagram by datagram");
                GSO.store(false, Ordering::Relaxed);
                self.send_groups(fd, range, name, name_len, from)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the datagrams in slots `range`, in order, on the connected socket `fd`, each
    /// with `prefix` before its payload in the same datagram (a PROXY protocol v2 header), one
    /// `writev` per datagram (no GSO: the segments would no longer be the slots). Returns how
    /// many were sent before the socket would block.
    ///
    /// # Errors
    /// As [`Batch::send`].
    pub(crate) fn send_prefixed(
        &mut self,
        fd: RawFd,
        range: Range<usize>,
        prefix: &[u8],
    ) -> io::Result<usize> {
        let mut sent = 0;
        for i in range {
            let payload = self.payload(i);
            let iov = [
                libc::iovec {
                    iov_base: prefix.as_ptr().cast_mut().cast(),
                    iov_len: prefix.len(),
                },
                libc::iovec {
                    iov_base: payload.as_ptr().cast_mut().cast(),
                    iov_len: payload.len(),
                },
            ];
            loop {
                // SAFETY: both iovecs point at live buffers of their lengths; writev only reads.
                let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
                match os_result(n) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock || sent > 0 => return Ok(sent),
                    Err(e) => return Err(e),
                }
            }
            sent += 1;
        }
        Ok(sent)
    }

    /// Sends the datagrams in slots `range`, in order, on `fd`: to `dest`, or to the
    /// connected peer when `dest` is `None`; from source address `from` when given (for a
    /// socket bound to a wildcard address), else from the kernel's choice. Returns how many
    /// were sent before the socket would block (the rest are not sent: UDP drops rather than
    /// queues).
    ///
    /// # Errors
    /// Any error other than `WouldBlock`/`Interrupted` on the first datagram not yet sent
    /// (e.g. `ConnectionRefused` after an ICMP port unreachable on a connected socket;
    /// `EINVAL` when `from` is not an address of this host).
    // Slot indices here are below `max`, or below `range.end`, clamped to the capacity, which
    // every vector of the batch has; counts the kernel returns are at most those asked for.
    #[allow(clippy::indexing_slicing)]
    pub(crate) fn send(
        &mut self,
        fd: RawFd,
        range: Range<usize>,
        dest: Option<SocketAddr>,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let (name, name_len) = match dest {
            Some(addr) => {
                let addr = SockAddr::from(addr);
                // SAFETY: a SockAddr's storage is at most sizeof(sockaddr_storage) bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        addr.as_ptr().cast::<u8>(),
                        (&mut self.dest as *mut libc::sockaddr_storage).cast::<u8>(),
                        addr.len() as usize,
                    );
                }
                (
                    (&mut self.dest as *mut libc::sockaddr_storage).cast::<libc::c_void>(),
                    addr.len(),
                )
            }
            None => (std::ptr::null_mut(), 0),
        };
        let base = self.data.as_mut_ptr();
        let mut sent = range.start;
        while sent < range.end {
            let n = if from.is_none() && (range.end - sent == 1 || self.capacity() == 1) {
                // SAFETY: slot `sent` holds lens[sent] bytes; name is null or valid for name_len.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        base.add(sent * SLOT).cast(),
                        self.lens[sent],
                        0,
                        name.cast(),
                        name_len,
                    )
                };
                os_result(n).map(|_| 1)
            } else {
                self.send_groups(fd, sent..range.end, name, name_len, from)
            };
            match n {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent - range.start)
    }
}

/// Points `hdr`'s control buffer at `buf` and writes into it a `UDP_SEGMENT` message for a
/// GSO send of `segment`-byte datagrams and an `IP_PKTINFO` / `IPV6_PKTINFO` message naming
/// source address `from`, each when given; no control buffer when neither is.
fn fill_control(
    hdr: &mut libc::msghdr,
    buf: &mut CmsgBuffer,
    segment: Option<u16>,
    from: Option<IpAddr>,
) {
    if segment.is_none() && from.is_none() {
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        return;
    }
    *buf = [0; 8];
    hdr.msg_control = buf.as_mut_ptr().cast();
    let pktinfo_len = match from {
        Some(IpAddr::V4(_)) => mem::size_of::<libc::in_pktinfo>(),
        Some(IpAddr::V6(_)) => mem::size_of::<libc::in6_pktinfo>(),
        None => 0,
    };
    // SAFETY: CMSG_SPACE is arithmetic; the sum is at most 24 + 40 bytes, the buffer's size.
    hdr.msg_controllen = unsafe {
        segment.map_or(0, |_| libc::CMSG_SPACE(2))
            + from.map_or(0, |_| libc::CMSG_SPACE(pktinfo_len as u32))
    } as usize;
    debug_assert!(hdr.msg_controllen <= mem::size_of::<CmsgBuffer>());
    // SAFETY: msg_control points at a zeroed, aligned buffer of msg_controllen bytes, with room
    // for every message written (CMSG_NXTHDR returns null past the end).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        if let Some(size) = segment {
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
        match from {
            Some(IpAddr::V4(ip)) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(pktinfo_len as u32) as usize;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
            Some(IpAddr::V6(ip)) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(pktinfo_len as u32) as usize;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), info);
            }
            None => {}
        }
    }
}

/// The destination address in a received message's `IP_PKTINFO` / `IPV6_PKTINFO` control
/// message, if it has one.
fn pktinfo_destination(hdr: &libc::msghdr) -> Option<IpAddr> {
    if hdr.msg_control.is_null() || hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return None;
    }
    // SAFETY: the kernel filled msg_controllen bytes at msg_control, a buffer of this batch
    // at least that long (`CmsgBuffer`); nothing else writes it meanwhile.
    let control = unsafe {
        std::slice::from_raw_parts(
            hdr.msg_control.cast::<u8>(),
            hdr.msg_controllen.min(mem::size_of::<CmsgBuffer>()),
        )
    };
    pktinfo_in(control)
}

/// The destination address in the `IP_PKTINFO` / `IPV6_PKTINFO` message among the control
/// messages `control`, laid out as `recvmsg(2)` returns them (`cmsghdr`, data, padding to
/// the header's alignment; `cmsg(3)`). Every length is checked against the slice: malformed
/// input (short, a length past the end or below the header's) gives `None`, never a read
/// outside it. Fuzzed (`integration/fuzz`, target `udp_control`).
pub fn pktinfo_in(control: &[u8]) -> Option<IpAddr> {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = mem::align_of::<libc::cmsghdr>();
    let mut rest = control;
    while rest.len() >= HDR {
        // SAFETY: at least HDR bytes are there; cmsghdr is plain integers (any bit pattern
        // is valid) and the read is unaligned.
        let hdr: libc::cmsghdr = unsafe { std::ptr::read_unaligned(rest.as_ptr().cast()) };
        #[allow(clippy::useless_conversion)] // size_t here; socklen_t (u32) on musl
        let len = usize::try_from(hdr.cmsg_len).ok()?;
        let data = rest.get(HDR..len)?;
        match (hdr.cmsg_level, hdr.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                let at = mem::offset_of!(libc::in_pktinfo, ipi_addr);
                let octets: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
                return Some(IpAddr::V4(Ipv4Addr::from(octets)));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                let at = mem::offset_of!(libc::in6_pktinfo, ipi6_addr);
                let octets: [u8; 16] = data.get(at..at + 16)?.try_into().ok()?;
                return Some(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            _ => {}
        }
        let step = len.checked_add(ALIGN - 1)? & !(ALIGN - 1);
        rest = rest.get(step..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn malformed_control_messages_give_none() {
        assert_eq!(pktinfo_in(&[]), None);
        assert_eq!(pktinfo_in(&[0xff; 7]), None);
        // A header claiming more bytes than there are, and one claiming fewer than itself.
        let mut bad = vec![0u8; 32];
        bad[..8].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(pktinfo_in(&bad), None);
        bad[..8].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(pktinfo_in(&bad), None);
        bad[..8].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(pktinfo_in(&bad), None);
    }

    #[test]
    fn a_pktinfo_after_another_message_is_found() {
        const HDR: usize = mem::size_of::<libc::cmsghdr>();
        let mut control = Vec::new();
        let mut message = |level: i32, kind: i32, data: &[u8]| {
            let len = HDR + data.len();
            let mut h = vec![0u8; HDR];
            h[..8].copy_from_slice(&len.to_ne_bytes());
            h[8..12].copy_from_slice(&level.to_ne_bytes());
            h[12..16].copy_from_slice(&kind.to_ne_bytes());
            control.extend_from_slice(&h);
            control.extend_from_slice(data);
            control.resize(control.len().next_multiple_of(8), 0);
        };
        message(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[9; 16]);
        let mut info = [0u8; 12];
        info[8..].copy_from_slice(&[127, 0, 0, 3]);
        message(libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
        assert_eq!(pktinfo_in(&control), Some("127.0.0.3".parse().unwrap()));
        // Cut inside the pktinfo: no address, no read past the end.
        assert_eq!(pktinfo_in(&control[..control.len() - 8]), None);
    }

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn roundtrip(batch_size: usize) {
        let (a, b) = pair();
        let sizes = [0usize, 1, 1400, 65507];
        for (i, &len) in sizes.iter().enumerate() {
            a.send_to(&vec![i as u8; len], b.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new(batch_size);
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            let n = batch.recv(b.as_raw_fd(), batch_size, false).unwrap();
            for i in 0..n {
                assert_eq!(batch.source(i), Some(a.local_addr().unwrap()));
                got.push(batch.payload(i).to_vec());
            }
            // Echo what was received back to a, in order, in one call.
            assert_eq!(
                batch
                    .send(b.as_raw_fd(), 0..n, a.local_addr().ok(), None)
                    .unwrap(),
                n
            );
        }
        for (i, &len) in sizes.iter().enumerate() {
            assert_eq!(got[i], vec![i as u8; len], "datagram {i} intact");
            let mut buf = vec![0u8; SLOT];
            let (n, _) = a.recv_from(&mut buf).unwrap();
            assert_eq!(n, len, "echo {i} intact");
        }
        assert_eq!(
            batch
                .recv(b.as_raw_fd(), batch_size, false)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn batched_datagrams_keep_boundaries_and_order() {
        roundtrip(32);
    }

    #[test]
    fn equal_sized_runs_go_as_gso_and_arrive_as_the_same_datagrams() {
        let (a, b) = pair();
        let mut sizes = vec![64usize; 70];
        sizes.push(10); // a shorter last datagram may end a group
        sizes.extend([64, 64, 0, 64]); // an empty one may not: it would vanish in a group
        for (i, &len) in sizes.iter().enumerate() {
            a.send_to(&vec![i as u8; len], b.local_addr().unwrap())
                .unwrap();
        }
        // Forward each received run back to a in one grouped send.
        let mut batch = Batch::new(128);
        let mut forwarded = 0;
        while forwarded < sizes.len() {
            let n = batch.recv(b.as_raw_fd(), 128, false).unwrap();
            assert_eq!(
                batch
                    .send(b.as_raw_fd(), 0..n, a.local_addr().ok(), None)
                    .unwrap(),
                n
            );
            forwarded += n;
        }
        let mut buf = vec![0u8; SLOT];
        for (i, &len) in sizes.iter().enumerate() {
            let (n, _) = a.recv_from(&mut buf).unwrap();
            assert_eq!(n, len, "datagram {i}: size");
            assert!(
                buf[..n].iter().all(|&x| x == i as u8),
                "datagram {i}: content"
            );
        }
    }

    #[test]
    fn unbatched_path_does_the_same() {
        roundtrip(1);
    }

    /// A wildcard socket on the loopback interface (nothing off this machine reaches it).
    fn wildcard(ip: &str) -> UdpSocket {
        let addr = format!("{ip}:0").parse().unwrap();
        crate::net::reuseport_udp_socket(
            addr,
            crate::net::ListenOptions {
                interface: Some("lo"),
                freebind: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn wildcard_sockets_learn_the_destination_and_reply_from_it_in_gso_runs() {
        for (any, to, client) in [
            ("0.0.0.0", "127.0.0.2", "127.0.0.1:0"),
            ("[::]", "::1", "[::1]:0"),
        ] {
            let b = wildcard(any);
            let a = UdpSocket::bind(client).unwrap();
            a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let to: IpAddr = to.parse().unwrap();
            let dest = SocketAddr::new(to, b.local_addr().unwrap().port());
            // Equal sizes, so the reply goes as GSO runs carrying the source address too.
            for i in 0..40u8 {
                a.send_to(&[i; 100], dest).unwrap();
            }
            let mut batch = Batch::new(64);
            let mut got = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while got < 40 {
                assert!(std::time::Instant::now() < deadline, "{got} of 40 arrived");
                let n = match batch.recv(b.as_raw_fd(), 64, true) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => panic!("{e}"),
                };
                for i in 0..n {
                    assert_eq!(batch.local(i), Some(to), "destination of datagram {i}");
                }
                let sent = batch
                    .send(b.as_raw_fd(), 0..n, a.local_addr().ok(), Some(to))
                    .unwrap();
                assert_eq!(sent, n);
                got += n;
            }
            let mut buf = [0u8; 200];
            for i in 0..40u8 {
                let (n, from) = a.recv_from(&mut buf).unwrap();
                assert_eq!(from, dest, "reply {i} from the address sent to");
                assert_eq!(&buf[..n], &[i; 100][..]);
            }
        }
    }
}
