//! A connection whose established bytes the kernel forwards (`forwarding: sockmap`): where
//! each direction stands ([`Gate`]) and the decisions about it, without I/O — the worker makes
//! the calls into [`crate::sockmap`] and feeds their answers here.
//!
//! A direction starts in the kernel and leaves it for good when its source sends its FIN, an
//! error, or bytes the program kept in the source's own queue (the budget spent, or bytes that
//! arrived between the worker's last read and the join). Leaving, the worker first waits for
//! the bytes redirected before to reach the destination's socket (the kernel's queue for it
//! is invisible to the destination: a FIN, a reset or bytes written before it empties would
//! overtake them), then reads the source itself, as without sockmap.

use std::time::{Duration, Instant};

use crate::sockmap::Pair;

/// Bytes a direction may have redirected beyond what its destination's socket has taken: the
/// kernel's queue between them has no backpressure of its own, so this bounds what a client
/// can push towards a target that stopped reading (and a target towards such a client).
/// Raised by the worker's sweep as the destination takes bytes; a direction that spends it
/// faster than the sweep raises it (bulk, over ~[`WINDOW`] / 2 per [`SWEEP`]) leaves the
/// kernel for buffers.
pub(crate) const WINDOW: u64 = 4 << 20;
/// How often the worker raises budgets, counts the kernel's bytes (access log, metrics) and
/// notes activity for the idle timeout, while it has connections in the kernel.
pub(crate) const SWEEP: Duration = Duration::from_millis(10);
/// The first wait before asking again whether a leaving direction's queue has drained.
const RECHECK_FIRST: Duration = Duration::from_millis(1);
/// The longest (the wait doubles: a destination that does not read costs a few syscalls a
/// second, not a thousand).
const RECHECK_MAX: Duration = Duration::from_millis(200);

/// Where one direction's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// The kernel moves them; the worker reads nothing from the source.
    Kernel,
    /// Leaving the kernel: the worker waits for the bytes redirected before to reach the
    /// destination's socket before it reads the source itself.
    Leaving,
    /// The worker moves them (the pump, through buffers).
    User,
}

/// A direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client → target: the client's socket is the source (`pair.a`).
    Up,
    /// Target → client.
    Down,
}

impl Dir {
    /// Both, up first.
    pub(crate) const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];
}

/// One direction of a joined connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Way {
    /// Where its bytes go.
    pub gate: Gate,
    /// Bytes redirected already counted in the flow's half (and the target's counters).
    pub counted: u64,
    /// The budget last set (see [`WINDOW`]).
    pub budget: u64,
    /// Bytes redirected and not yet taken by the destination, at the last look: what an
    /// idle timeout would cut.
    pub in_flight: u64,
    /// Bytes the source's socket had given up at the join (received, less what was unread).
    pub consumed_at_join: u64,
    /// The flow's half's byte count at the join (nothing was pending then).
    pub bytes_at_join: u64,
    /// When it started leaving: its queue is looked at no sooner than [`RECHECK_FIRST`]
    /// after, whatever event drives the connection meanwhile.
    pub left_at: Option<Instant>,
    /// The source's verdicts started when it started leaving: until as many have finished,
    /// one that read the slot before the divert may still be handing a segment on (its
    /// bytes not yet counted as redirected), and the worker's reads could overtake it.
    pub verdicts_at_divert: u64,
}

impl Way {
    /// A direction just joined, with `WINDOW` bytes of budget.
    fn new() -> Way {
        Way {
            gate: Gate::Kernel,
            counted: 0,
            budget: WINDOW,
            in_flight: 0,
            consumed_at_join: 0,
            bytes_at_join: 0,
            left_at: None,
            verdicts_at_divert: 0,
        }
    }

    /// Whether a leaving direction has waited long enough to look at its queue, at `now`.
    pub(crate) fn settled_since_leaving(&self, now: Instant) -> bool {
        self.left_at.is_none_or(|at| now >= at + RECHECK_FIRST)
    }

    /// Whether every byte the source's socket received is accounted for — given up before
    /// the join, or since then redirected or read by the worker — once its FIN is in:
    /// `received` is its `tcpi_bytes_received` now (which counts the FIN as one), `bytes` and
    /// `pending` what the half has moved (kernel bytes counted in) and holds. Then a read of 0
    /// is the end; before, bytes the kernel holds for the source are still to come.
    pub(crate) fn all_accounted(&self, received: u64, bytes: u64, pending: u64) -> bool {
        self.held(received, bytes, pending) <= 1
    }

    /// Bytes the source's socket received (`received`, its `tcpi_bytes_received`, the FIN
    /// counted as one) that were neither given up before the join nor, since, redirected or
    /// read by the worker (`bytes` and `pending`, as [`Way::all_accounted`]): what the kernel
    /// still holds for the worker from that source.
    pub(crate) fn held(&self, received: u64, bytes: u64, pending: u64) -> u64 {
        let since = (bytes + pending).saturating_sub(self.bytes_at_join);
        received.saturating_sub(self.consumed_at_join + since)
    }

    /// The budget this direction should have now that its destination has taken `taken`
    /// bytes since the join, when it has `redirected` so far: raised to `taken + WINDOW` once
    /// less than half the window is left; `None` to leave it.
    pub(crate) fn raised_budget(&self, redirected: u64, taken: u64) -> Option<u64> {
        let raised = taken.saturating_add(WINDOW);
        (self.budget_low(redirected) && raised > self.budget).then_some(raised)
    }

    /// Whether, having redirected `redirected` bytes, it has less than half a window of its
    /// budget left.
    pub(crate) fn budget_low(&self, redirected: u64) -> bool {
        redirected.saturating_add(WINDOW / 2) > self.budget
    }

    /// Counts `redirected` (the total since the join): returns what is new since the last
    /// count.
    pub(crate) fn count(&mut self, redirected: u64) -> u64 {
        advance(&mut self.counted, redirected)
    }
}

/// Moves `counted` up to `total` (a counter that only grows): what is new since the last
/// look; a lower reading counts nothing.
fn advance(counted: &mut u64, total: u64) -> u64 {
    let new = total.saturating_sub(*counted);
    *counted = (*counted).max(total);
    new
}

/// The kernel's part of a joined connection.
#[derive(Debug)]
pub(crate) struct KernelPath {
    /// The slots the sockets hold in the worker's maps (`a` the client's).
    pub pair: Pair,
    /// Client → target.
    pub up: Way,
    /// Target → client.
    pub down: Way,
    /// While a direction waits to leave, or a held end waits for the kernel's bytes: when to
    /// ask again, and the wait after that.
    pub recheck: Option<(Instant, Duration)>,
    /// A held end (see `Half::hold_end`) still waits for bytes the kernel holds.
    pub ends_waiting: bool,
    /// Bytes the program cut or dropped as already forwarded (both sockets), already
    /// counted in the listener's metric.
    pub trimmed_counted: u64,
}

impl KernelPath {
    /// A pair just joined with `WINDOW` bytes of budget each way.
    pub(crate) fn new(pair: Pair) -> KernelPath {
        KernelPath {
            pair,
            up: Way::new(),
            down: Way::new(),
            recheck: None,
            ends_waiting: false,
            trimmed_counted: 0,
        }
    }

    /// Counts `trimmed` (both sockets' total since the join): returns what is new since the
    /// last count.
    pub(crate) fn count_trimmed(&mut self, trimmed: u64) -> u64 {
        advance(&mut self.trimmed_counted, trimmed)
    }

    /// Direction `dir`.
    pub(crate) fn way(&self, dir: Dir) -> &Way {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    /// Direction `dir`, mutable.
    pub(crate) fn way_mut(&mut self, dir: Dir) -> &mut Way {
        match dir {
            Dir::Up => &mut self.up,
            Dir::Down => &mut self.down,
        }
    }

    /// The slot of direction `dir`'s source.
    pub(crate) fn source_slot(&self, dir: Dir) -> u32 {
        match dir {
            Dir::Up => self.pair.a,
            Dir::Down => self.pair.b,
        }
    }

    /// What direction `dir`'s destination had taken to send at the join.
    pub(crate) fn destination_base(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Up => self.pair.b_taken,
            Dir::Down => self.pair.a_taken,
        }
    }

    /// Whether direction `dir` is the worker's to pump.
    pub(crate) fn pumps(&self, dir: Dir) -> bool {
        self.way(dir).gate == Gate::User
    }

    /// A direction still waits to leave: when to look again (the wait doubles up to
    /// [`RECHECK_MAX`]). `None` when a look is already due then or sooner.
    pub(crate) fn next_recheck(&mut self, now: Instant) -> Option<Instant> {
        let wait = match self.recheck {
            Some((at, _)) if at > now => return None,
            Some((_, wait)) => wait,
            None => RECHECK_FIRST,
        };
        let at = now + wait;
        self.recheck = Some((at, (wait * 2).min(RECHECK_MAX)));
        Some(at)
    }

    /// Whether a direction is still leaving, or a held end still waits: rechecks go on.
    pub(crate) fn waiting(&self) -> bool {
        self.up.gate == Gate::Leaving || self.down.gate == Gate::Leaving || self.ends_waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> KernelPath {
        KernelPath::new(Pair {
            a: 0,
            b: 1,
            a_taken: 0,
            b_taken: 0,
        })
    }

    #[test]
    fn the_budget_rises_with_what_the_destination_took_once_half_is_spent() {
        let w = path().up;
        assert_eq!(w.raised_budget(WINDOW / 2 - 1, 0), None, "half left");
        assert_eq!(w.raised_budget(WINDOW / 2 + 1, 0), None, "nothing taken");
        assert_eq!(w.raised_budget(WINDOW / 2 + 1, 100), Some(WINDOW + 100));
        // Never lowered: what was allowed stays allowed.
        assert_eq!(w.raised_budget(WINDOW, 0), None);
        // Counters near their end saturate rather than wrap to a small budget.
        let mut far = path().down;
        far.budget = u64::MAX - 1;
        assert_eq!(
            far.raised_budget(u64::MAX - 2, u64::MAX - 5),
            Some(u64::MAX)
        );
    }

    #[test]
    fn an_end_is_an_end_once_every_byte_received_is_accounted_for() {
        let mut w = path().up;
        // At the join the socket had received 1,000 bytes, 100 of them still unread; the
        // half had moved 900.
        (w.consumed_at_join, w.bytes_at_join) = (900, 900);
        // 500 more and the FIN (one more): the 100 unread and 300 redirected (counted into
        // `bytes`), 150 read.
        assert!(!w.all_accounted(1_501, 900 + 100 + 300 + 100, 50));
        assert!(w.all_accounted(1_501, 900 + 100 + 300 + 150, 50));
        // The bytes unread at the join do not stand in for bytes still to come (review: a
        // join with 1.2 MB unread let an upload end 0.8 MB short).
        assert!(!w.all_accounted(1_501, 900 + 100 + 300 + 50, 0));
    }

    #[test]
    fn counting_takes_only_what_is_new_and_never_goes_back() {
        let mut w = path().up;
        assert_eq!(w.count(10), 10);
        assert_eq!(w.count(15), 5);
        assert_eq!(w.count(15), 0);
        assert_eq!(w.count(3), 0, "a lower reading counts nothing");
        assert_eq!(w.counted, 15);
        // Trimmed bytes, counted by every sweep and at the leave, only once.
        let mut p = path();
        assert_eq!(p.count_trimmed(4_095), 4_095);
        assert_eq!(
            p.count_trimmed(4_095),
            0,
            "the leave after a sweep adds nothing"
        );
        assert_eq!(p.count_trimmed(5_000), 905);
    }

    #[test]
    fn rechecks_back_off_and_are_not_doubled() {
        let mut p = path();
        let t0 = Instant::now();
        assert_eq!(p.next_recheck(t0), Some(t0 + RECHECK_FIRST));
        assert_eq!(p.next_recheck(t0), None, "one already due at t0 + 1 ms");
        let t1 = t0 + RECHECK_FIRST;
        assert_eq!(p.next_recheck(t1), Some(t1 + 2 * RECHECK_FIRST));
        let mut t = t1;
        for _ in 0..20 {
            t += RECHECK_MAX;
            p.next_recheck(t);
        }
        assert_eq!(p.recheck.map(|(_, w)| w), Some(RECHECK_MAX));
    }

    #[test]
    fn the_slots_and_bases_follow_the_direction() {
        let p = KernelPath::new(Pair {
            a: 4,
            b: 5,
            a_taken: 40,
            b_taken: 50,
        });
        assert_eq!(
            (p.source_slot(Dir::Up), p.destination_base(Dir::Up)),
            (4, 50)
        );
        assert_eq!(
            (p.source_slot(Dir::Down), p.destination_base(Dir::Down)),
            (5, 40)
        );
        assert!(!p.pumps(Dir::Up) && !p.waiting());
    }
}
