//! UDP load balancing: a NAT-style session per client flow.
//!
//! The first datagram of a flow (5-tuple: udp, client ip/port, listener ip/port) creates a
//! [`session::Session`]: a target picked by the group's balancer and a connected upstream
//! socket on an ephemeral port. Datagrams from the client go up through that socket; each
//! reply goes back to the client from the listener's socket, so the client only ever sees the
//! listener's address. Boundaries are kept: one datagram in, one datagram out, in order.
//!
//! - [`session`]: the per-worker session table and its idle expiry, with no I/O (it takes
//!   `now`), so it is tested deterministically.
//! - [`batch`]: `recvmmsg`/`sendmmsg` over preallocated buffers: no allocation per datagram.
//!
//! The worker's glue (`worker/udp.rs`) ties them to the poll.
// The data path: nothing reachable from network input may panic (the no-panic block of
// lib.rs's "Lint policy"; integration/layers.rs keeps it identical). Unit tests may unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]

pub(crate) mod batch;
pub(crate) mod session;
