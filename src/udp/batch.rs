//! Datagrams in batches: `recvmmsg(2)` and `sendmmsg(2)` over buffers allocated once.
//!
//! A [`Batch`] holds `capacity` slots of 64 KiB (enough for the largest UDP payload, 65,507
//! bytes over IPv4), their iovecs, source addresses and message headers. Receiving fills the
//! slots; sending points the headers at a run of filled slots, so a datagram is never copied
//! in user space and nothing is allocated per datagram. With `max == 1` the plain
//! `recvfrom`/`send`/`sendto` calls are used instead (the unbatched path, kept for measuring).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Bytes per slot: the largest UDP datagram fits.
pub const SLOT: usize = 65536;

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
pub struct Batch {
    data: Vec<u8>,
    lens: Vec<usize>,
    names: Vec<libc::sockaddr_storage>,
    name_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// One control-message buffer per header, for the GSO segment size.
    cmsgs: Vec<[u64; 4]>,
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

fn os_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Batch {
    /// Buffers for `capacity` (≥ 1) datagrams: `capacity × 64 KiB` of memory.
    pub fn new(capacity: usize) -> Batch {
        let capacity = capacity.max(1);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_name: libc::sockaddr_storage = unsafe { mem::zeroed() };
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
            cmsgs: vec![[0u64; 4]; capacity],
            group: vec![0; capacity],
            dest: zero_name,
        }
    }

    /// How many datagrams one call can move.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Receives up to `max` datagrams (at most the capacity) from the non-blocking socket
    /// `fd` into slots `0..n`; returns `n` (≥ 1).
    ///
    /// # Errors
    /// `WouldBlock` when nothing is waiting; any other error of `recvmmsg`/`recvfrom` (for a
    /// connected socket, `ConnectionRefused` reports an ICMP port unreachable).
    pub fn recv(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, self.capacity());
        let base = self.data.as_mut_ptr();
        if max == 1 {
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
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
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
        }
        Ok(n)
    }

    /// The payload of received datagram `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        &self.data[i * SLOT..i * SLOT + self.lens[i]]
    }

    /// The source address of received datagram `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        // SAFETY: names[i] was filled by the kernel with name_lens[i] valid bytes.
        let addr = unsafe { SockAddr::new(self.names[i], self.name_lens[i]) };
        addr.as_socket()
    }

    /// One `sendmmsg` of slots `range`, grouped: a run of equal-sized datagrams (the last may
    /// be shorter) goes as one UDP GSO message with `UDP_SEGMENT`, which the kernel splits back
    /// into the same datagrams after one trip through the IP stack instead of one per datagram.
    /// Returns how many datagrams (not messages) were sent.
    fn send_groups(
        &mut self,
        fd: RawFd,
        range: Range<usize>,
        name: *mut libc::c_void,
        name_len: libc::socklen_t,
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
            if j - i > 1 {
                hdr.msg_control = self.cmsgs[groups].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 32-byte buffer.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
                // SAFETY: msg_control points at a zeroed, aligned buffer of msg_controllen bytes.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size as u16);
                }
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
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
                self.send_groups(fd, range, name, name_len)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the datagrams in slots `range`, in order, on `fd`: to `dest`, or to the
    /// connected peer when `dest` is `None`. Returns how many were sent before the socket
    /// would block (the rest are not sent: UDP drops rather than queues).
    ///
    /// # Errors
    /// Any error other than `WouldBlock`/`Interrupted` on the first datagram not yet sent
    /// (e.g. `ConnectionRefused` after an ICMP port unreachable on a connected socket).
    pub fn send(
        &mut self,
        fd: RawFd,
        range: Range<usize>,
        dest: Option<SocketAddr>,
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
            let n = if range.end - sent == 1 || self.capacity() == 1 {
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
                self.send_groups(fd, sent..range.end, name, name_len)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

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
            let n = batch.recv(b.as_raw_fd(), batch_size).unwrap();
            for i in 0..n {
                assert_eq!(batch.source(i), Some(a.local_addr().unwrap()));
                got.push(batch.payload(i).to_vec());
            }
            // Echo what was received back to a, in order, in one call.
            assert_eq!(
                batch
                    .send(b.as_raw_fd(), 0..n, a.local_addr().ok())
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
            batch.recv(b.as_raw_fd(), batch_size).unwrap_err().kind(),
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
            let n = batch.recv(b.as_raw_fd(), 128).unwrap();
            assert_eq!(
                batch
                    .send(b.as_raw_fd(), 0..n, a.local_addr().ok())
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
}
