//! Load-aware placement of new TCP connections across workers.
//!
//! Every worker has its own SO_REUSEPORT socket per listener, and by default the kernel picks
//! among them by a hash of the 4-tuple: a few long connections (iperf3 `-P 4`, a pool of
//! database clients) can land all on one worker while another idles. Where the kernel allows
//! it, each TCP listener's reuseport group gets a small eBPF program
//! (`BPF_PROG_TYPE_SK_REUSEPORT`, attached with `SO_ATTACH_REUSEPORT_EBPF`) that sends each
//! new connection to the worker with the fewest connections, at SYN time, before any worker
//! sees it: no hand-off between threads and nothing shared on the data path.
//!
//! A worker's load is `active + pending`, two `u64` per worker in one BPF array map mapped into
//! this process (`BPF_F_MMAPABLE`, Linux ≥ 5.5): `active` is the worker's own count of open
//! connections, stored by the worker (one relaxed store per event-loop turn that changed it);
//! `pending` is incremented by the program for each SYN it steers, and zeroed by the worker
//! when its accept queue is empty, so a burst of SYNs arriving before any accept is spread
//! too. Ties go to the lowest worker index. The program falls back to the kernel's hash when
//! the chosen worker holds no socket (drained, restarting): it returns `SK_PASS` without a
//! selection.
//!
//! UDP listeners keep the hash: a flow's datagrams must keep reaching the worker that holds
//! its session.
//!
//! Loading needs `CAP_BPF` (or root) and Linux ≥ 5.5; without them the loads are kept in plain
//! memory (for `/metrics`), one line is logged, and the kernel's hash places connections
//! (`ballast_accept_steering_load_aware` 0).
//! The technique is the kernel's `reuseport_array` selection (`bpf_sk_select_reuseport`,
//! Linux 4.19) with loads published through an mmapped array map; HAProxy reaches the same
//! goal in user space by passing accepted connections to its least loaded thread.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::bpf::*;

/// Where the loads live: the mmapped BPF array, or plain memory when BPF is unavailable.
enum Loads {
    Mapped(SharedArray),
    Plain(Box<[AtomicU64]>),
}

impl Loads {
    fn slots(&self) -> &[AtomicU64] {
        match self {
            Loads::Mapped(array) => array.words(),
            Loads::Plain(slots) => slots,
        }
    }
}

/// One listener's reuseport group: its socket array and the program that selects from it.
struct Group {
    sockets: OwnedFd,
    program: OwnedFd,
}

/// The process's steering: worker loads, and one program per TCP listener address.
pub(crate) struct Steering {
    workers: usize,
    loads: Loads,
    /// By listener address; touched only when a worker registers a listening socket.
    groups: Mutex<HashMap<SocketAddr, Group>>,
    /// Some listening socket could not join (its listener falls back to the hash).
    failed: AtomicBool,
    /// The sockets were taken out of the arrays for a handover ([`Steering::release`]) and
    /// not put back ([`Steering::rejoined`]): the kernel's hash places connections meanwhile.
    released: AtomicBool,
    /// The configuration asked for load-aware placement (`least_connections`).
    wanted: bool,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("workers", &self.workers)
            .field("load_aware", &self.load_aware())
            .finish_non_exhaustive()
    }
}

impl Steering {
    /// Steering for `workers` workers: load-aware when the kernel lets this process create
    /// the BPF map, else the kernel's hash (logged once at `info`).
    pub(crate) fn new(workers: usize) -> Steering {
        let mut steering = match map_loads(workers) {
            Ok(loads) => Steering::with_loads(workers, loads),
            Err(e) => {
                log::info!(
                    "new TCP connections are spread by the kernel's reuseport hash, not by \
                     worker load: cannot create the BPF map ({e}; needs CAP_BPF and Linux 5.5)"
                );
                Steering::hash_only(workers)
            }
        };
        steering.wanted = true;
        steering
    }

    /// Steering that only keeps loads (for `/metrics`) and leaves placement to the kernel's
    /// hash: `accept_steering: hash`, and a `Control` built outside the runtime.
    pub(crate) fn hash_only(workers: usize) -> Steering {
        let loads = (0..2 * workers).map(|_| AtomicU64::new(0)).collect();
        Steering::with_loads(workers, Loads::Plain(loads))
    }

    fn with_loads(workers: usize, loads: Loads) -> Steering {
        Steering {
            workers,
            loads,
            groups: Mutex::new(HashMap::new()),
            failed: AtomicBool::new(false),
            released: AtomicBool::new(false),
            wanted: false,
        }
    }

    /// Whether the configuration asked for load-aware placement (`accept_steering:
    /// least_connections`), whether or not the kernel allowed it.
    pub(crate) fn wanted(&self) -> bool {
        self.wanted
    }

    /// Number of workers whose loads are kept.
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    /// Whether new connections are placed by load: the BPF map exists and every TCP
    /// listening socket so far joined its listener's program.
    pub(crate) fn load_aware(&self) -> bool {
        matches!(self.loads, Loads::Mapped(_))
            && !self.failed.load(Ordering::Relaxed)
            && !self.released.load(Ordering::Relaxed)
    }

    /// Worker `worker` has `active` open TCP connections.
    pub(crate) fn publish(&self, worker: usize, active: usize) {
        if let Some(slot) = self.loads.slots().get(worker) {
            slot.store(active as u64, Ordering::Relaxed);
        }
    }

    /// Worker `worker` found its accept queue empty: every connection steered to it so far
    /// is counted in its `active` (published first), so its `pending` count starts again.
    pub(crate) fn accept_queue_empty(&self, worker: usize, active: usize) {
        self.publish(worker, active);
        if let Some(slot) = self.loads.slots().get(self.workers + worker) {
            slot.store(0, Ordering::Relaxed);
        }
    }

    /// Open TCP connections of `worker`, as last published.
    pub(crate) fn active(&self, worker: usize) -> u64 {
        self.loads
            .slots()
            .get(worker)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Forgets the socket arrays and programs of addresses no listener in `live` uses any
    /// more (listeners a reload removed): two descriptors each. Their sockets leave the
    /// kernel's arrays as they close; a program stays attached to a group until then.
    pub(crate) fn retain(&self, live: impl Iterator<Item = SocketAddr>) {
        let live: std::collections::HashSet<SocketAddr> = live.collect();
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|addr, _| live.contains(addr));
    }

    /// Takes every listening socket out of this process's socket arrays, before they are
    /// handed to a new process (an upgrade): a socket can be in one array only, so the new
    /// process could not put them in its own (EBUSY) while ours hold them. Until the new
    /// process attaches its program, the kernel's hash places new connections (a program's
    /// empty slot falls back to it). If the handover then fails, the workers join again
    /// (`Control::rejoin_steering`); until then [`Steering::load_aware`] says false.
    pub(crate) fn release(&self) {
        self.released.store(true, Ordering::Relaxed);
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for (local, group) in groups.iter() {
            for worker in 0..self.workers {
                if let Err(e) = delete_elem(group.sockets.as_raw_fd(), &(worker as u32)) {
                    // ENOENT: that worker's socket never joined.
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        log::warn!(
                            "listener on {local}: cannot release worker {worker}'s socket: {e}"
                        );
                    }
                }
            }
        }
    }

    /// Every worker has put its sockets back ([`Steering::join`]) after a handover that failed:
    /// placement is load-aware again (if every join worked).
    pub(crate) fn rejoined(&self) {
        self.released.store(false, Ordering::Relaxed);
    }

    /// Puts worker `worker`'s listening socket `socket` (bound to `local`) into its
    /// listener's socket array and makes sure the group's program is attached. Failures are
    /// logged (the kernel's hash then places this listener's connections), never returned.
    pub(crate) fn join(&self, worker: usize, local: SocketAddr, socket: RawFd) {
        let Loads::Mapped(map) = &self.loads else {
            return;
        };
        // A socket without SO_REUSEPORT is shared by the workers (socket activation): one
        // accept queue, which every worker takes from; there is nothing to steer.
        // SAFETY: `socket` is the caller's open listening socket, borrowed for this call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket) };
        if !socket2::SockRef::from(&borrowed)
            .reuse_port()
            .unwrap_or(true)
        {
            log::debug!("listener on {local}: one accept queue shared by the workers");
            return;
        }
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            let group = match groups.entry(local) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let sockets = create_map(MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, self.workers, 0)?;
                    let insns = program(self.workers, map.fd(), sockets.as_raw_fd());
                    let program = load_program(PROG_TYPE_SK_REUSEPORT, &insns, "steering")?;
                    e.insert(Group { sockets, program })
                }
            };
            update_elem(
                group.sockets.as_raw_fd(),
                &(worker as u32),
                &(socket as u64),
            )?;
            // Attaching to any socket of the group sets the group's program; doing it for
            // every socket covers a group whose first sockets came from another process
            // (an upgrade) or were replaced (a worker restart).
            let fd = group.program.as_raw_fd();
            // SAFETY: setsockopt reads one c_int from a valid pointer.
            let r = unsafe {
                libc::setsockopt(
                    socket,
                    libc::SOL_SOCKET,
                    SO_ATTACH_REUSEPORT_EBPF,
                    (&fd as *const RawFd).cast(),
                    std::mem::size_of::<RawFd>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.failed.store(true, Ordering::Relaxed);
            log::warn!(
                "listener on {local}: worker {worker}'s connections are placed by the kernel's \
                 hash, not by load: {e}"
            );
        }
    }
}

const MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const PROG_TYPE_SK_REUSEPORT: u32 = 21;
/// `SO_ATTACH_REUSEPORT_EBPF` (asm-generic/socket.h).
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
const FN_SK_SELECT_REUSEPORT: i32 = 82;

/// The loads map: one element of `2 × workers` u64 (`active` then `pending`), mapped here.
fn map_loads(workers: usize) -> io::Result<Loads> {
    SharedArray::new(1, 16 * workers).map(Loads::Mapped)
}

/// The program for `workers` workers (unrolled: one compare per worker), reading loads from
/// map `loads` and selecting from socket array `sockets`. Registers: r6 ctx, r7 chosen
/// worker, r8 its load, r9 the loads value.
fn program(workers: usize, loads: RawFd, sockets: RawFd) -> Vec<Insn> {
    let mut p = Vec::with_capacity(24 + 8 * workers);
    let map_fd = load_map_fd;
    p.push(insn(MOV64_X, 6, 1, 0, 0));
    p.push(insn(ST_W, 10, 0, -4, 0)); // key 0
    map_fd(&mut p, 1, loads);
    p.push(insn(MOV64_X, 2, 10, 0, 0));
    p.push(insn(ADD64_K, 2, 0, 0, -4));
    p.push(insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM));
    let no_value = p.len();
    p.push(insn(JEQ_K, 0, 0, 0, 0)); // to `out`, patched below
    p.push(insn(MOV64_X, 9, 0, 0, 0));
    p.push(insn(MOV64_K, 7, 0, 0, 0));
    p.push(insn(MOV64_K, 8, 0, 0, -1)); // u64::MAX
    for k in 0..workers {
        p.push(insn(LDX_DW, 1, 9, (8 * k) as i16, 0));
        p.push(insn(LDX_DW, 2, 9, (8 * (workers + k)) as i16, 0));
        p.push(insn(ADD64_X, 1, 2, 0, 0));
        p.push(insn(JGE_X, 1, 8, 2, 0)); // not lower: keep the earlier worker
        p.push(insn(MOV64_X, 8, 1, 0, 0));
        p.push(insn(MOV64_K, 7, 0, 0, k as i32));
    }
    p.push(insn(STX_W, 10, 7, -8, 0));
    p.push(insn(MOV64_X, 1, 6, 0, 0));
    map_fd(&mut p, 2, sockets);
    p.push(insn(MOV64_X, 3, 10, 0, 0));
    p.push(insn(ADD64_K, 3, 0, 0, -8));
    p.push(insn(MOV64_K, 4, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, FN_SK_SELECT_REUSEPORT));
    let not_selected = p.len();
    p.push(insn(JNE_K, 0, 0, 0, 0)); // to `out`, patched below
                                     // pending[chosen] += 1, at a constant offset per worker: a pointer moved by a variable
                                     // would need CAP_PERFMON besides CAP_BPF (the verifier's Spectre v1 rules).
    p.push(insn(MOV64_K, 2, 0, 0, 1));
    for k in 0..workers {
        p.push(insn(JNE_K, 7, 0, 1, k as i32));
        p.push(insn(ATOMIC_DW, 9, 2, (8 * (workers + k)) as i16, 0));
    }
    let out = p.len();
    p.push(insn(MOV64_K, 0, 0, 0, SK_PASS));
    p.push(insn(EXIT, 0, 0, 0, 0));
    for at in [no_value, not_selected] {
        p[at].off = (out - at - 1) as i16;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_the_exit_block() {
        let p = program(3, 7, 8);
        let out = p.len() - 2;
        for (at, i) in p.iter().enumerate() {
            if i.code == JEQ_K || (i.code == JNE_K && i.regs == 0) {
                assert_eq!(at + 1 + i.off as usize, out, "jump at {at}");
            }
            if i.code == JNE_K && i.regs == 7 {
                // Each worker's increment: skip it unless this worker was chosen.
                assert_eq!((i.off, p[at + 1].code), (1, ATOMIC_DW));
            }
            if i.code == JGE_X {
                // Skips exactly the two moves that take the lower load.
                assert_eq!(i.off, 2);
                assert_eq!((p[at + 1].code, p[at + 2].code), (MOV64_X, MOV64_K));
            }
        }
        assert_eq!(p[out].imm, SK_PASS);
        assert_eq!(p[out + 1].code, EXIT);
    }

    #[test]
    fn plain_loads_are_published_and_pending_reset() {
        let s = Steering::hash_only(2);
        s.publish(1, 5);
        assert_eq!(s.active(1), 5);
        s.accept_queue_empty(1, 3);
        assert_eq!(s.active(1), 3);
        assert_eq!(s.active(0), 0);
        assert!(!s.load_aware());
    }
}
