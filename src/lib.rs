//! # Ballast
//!
//! An L4 (TCP and UDP) load balancer. Clients reach a **listener**; each listener forwards to
//! one **target group**: targets with weights, a balancing algorithm, and a health check.
//! Forwarding is NAT-style in user space. TCP: Ballast accepts the client, connects to a target
//! it picks, and moves bytes both ways until both sides are done. UDP: a client flow's first
//! datagram creates a **session** with its own upstream socket pinned to one target; replies go
//! back from the listener's address ([`udp`]).
//!
//! ```text
//!              ┌──────────── worker 0 (mio Poll) ───────────┐
//!  clients ──▶ │ SO_REUSEPORT listeners → accept → pick     │ ──▶ targets
//!              │ target → connect → pump both ways          │
//!              │ connection table (slab + 5-tuple index)    │
//!              └────────────────────────────────────────────┘
//!              ┌──────────── worker 1 … N-1 (same) ─────────┐
//!              └────────────────────────────────────────────┘
//!    prober thread: every health check on its own schedule; flips health atomics
//!    admin thread:  HTTP API (/healthz, /targets, /metrics, /node) over the shared atomics
//!    upgrade thread: hands the listening sockets to a new process (`upgrade_socket`)
//!    main thread:   CLI, config, binds, signals, graceful stop
//! ```
//!
//! ## Threads and what they share
//! - `worker`: one per core. Each owns its poll, its own SO_REUSEPORT socket per listener (the
//!   kernel spreads accepts: to the worker with the fewest connections where `steering`'s
//!   eBPF program can be attached, else by hash), and its [`conntrack`] table. No lock on the
//!   data path.
//! - [`health`]: the prober thread. It runs TCP, HTTP and UDP checks, counts consecutive
//!   results ([`health::threshold`]) and flips target health in [`target`]'s atomics; on a
//!   change it also rebuilds the lookup tables of `maglev` and `source_hash` ([`balancer`]).
//! - [`admin`]: the HTTP admin API on its own thread; it reads the shared state and asks
//!   [`control`] for the workers' connection tables.
//! - [`control`]: not a thread but the one place that changes the running configuration (hot
//!   reload, targets added and removed, admin states, the prober's health flips), behind a
//!   mutex no data path takes, and the one that talks to the workers (`worker::Message`
//!   over each worker's channel, waking its poll).
//! - [`runtime`]: binds everything before any thread starts, then waits for SIGINT/SIGTERM
//!   (SIGHUP reloads, SIGUSR1 reopens the access log). A worker thread that panics is
//!   replaced (`supervise`); the prober and admin handlers catch their own panics.
//! - [`access_log`]: a writer thread fed by the workers over a bounded queue, so logging
//!   never blocks forwarding.
//! - [`node`]: the node's service state (serving, draining, drained, stopping) and its
//!   readiness (`/healthz`), for keepalived, BGP speakers and DNS; [`control`] drives a drain.
//! - [`fleet`]: with `cluster:`, a thread with its own tokio runtime that follows the fleet's
//!   state in etcd (targets, admin states, node records) and applies it through [`control`],
//!   and writes the admin API's changes there ([`control::fleet`]).
//! - [`handover`]: with `upgrade_socket`, a thread that passes duplicates of every listening
//!   socket to a new process (`ballast run --upgrade-from`) over SCM_RIGHTS, then tells the
//!   runtime to stop accepting and drain.
//!
//! Shared state is one *generation* of the configuration ([`generation::Generation`]) in an
//! `Arc`, with atomics for what changes while it runs: per-target health and counters
//! ([`target`]), per-listener counts and refusals ([`listener`]), each group's round-robin
//! cursor, stickiness table and lookup table (swapped whole with `arc-swap`). A reload builds the next generation aside and sends it to
//! each worker, which switches between two events; indices of listeners, groups and targets
//! never change, so connections in flight keep finding their target.
//!
//! ## Layers
//! Modules import only downward (a test, `integration/layers.rs`, reads this list and keeps it
//! so). Each row is a layer, from the top; within a row `a → b` puts `a` above `b`, and names
//! between commas are peers (they may import each other, never in a cycle). A module imports
//! from its own place or below, never from above; every module of `src/` is listed once.
//!
//! ```text
//!   main → ctl → cli, deploy → client, progress     the command line; the admin API's client
//!   runtime, preflight → supervise                  start, stop, crashes; `check`'s probes
//!   admin, cert_watch, discovery, fleet, health     threads that drive the control plane
//!   control → node, notify, scaling                 the control plane; node state; hooks
//!   worker → tcp, udp, access_log                   the event loop; connections; sessions
//!   bind → activation, handover, steering           binding listeners, or taking them over
//!   generation → listener, balancer → target, per_source    one generation and its parts
//!   hash → conntrack → config                       hashing; the 5-tuple; the configuration
//!   sockmap → bpf, btf                              the kernel's forwarding; eBPF; offsets
//!   tls, sni, proxy_protocol, postgres, quic, net, timers, fault, throttle  the ground floor
//! ```
//!
//! ## Lint policy
//! Crate-wide (below): `missing_docs` denied; `unreachable_pub`, `missing_debug_implementations`
//! and `clippy::undocumented_unsafe_blocks` (every `unsafe` block says why it is sound in a
//! `// SAFETY:` comment) warned, and CI denies warnings. The rustdoc lint on links into
//! crate-private items is off: these docs are read with `--document-private-items`.
//!
//! The data path must not panic on anything that arrives from the network (README, "Limits and
//! faults"). These modules say so at their top, outside tests (unit tests may unwrap), with
//! `#![cfg_attr(not(test), deny(…))]` of the lints named here; `integration/layers.rs` checks
//! that each one listed carries exactly these, and that no other module carries the block:
//!
//! ```text
//!   no-panic lints: unwrap_used expect_used panic unreachable todo unimplemented indexing_slicing
//!   no-panic: tcp        parses what arrives (PROXY headers, ClientHellos) and pumps bytes
//!   no-panic: postgres   parses PostgreSQL's startup packets and the server's first messages
//!   no-panic: quic       parses QUIC headers and decodes QUIC-LB connection IDs
//!   no-panic: udp        the session table and the recvmmsg/sendmmsg batches
//!   no-panic: worker     all but indexing_slicing: its indices are its own (listener, group
//!                        and target indices of a generation; its tables' slot keys), never
//!                        taken from the network
//! ```
//!
//! ## The path of one TCP connection
//! A connection goes through stages (`tcp::Stage`), each holding only what it needs:
//! `Preamble` (whatever must be read from the client before a target is chosen: a PROXY
//! header, PostgreSQL's SSLRequest, a TLS handshake or a ClientHello), `Connecting`,
//! `TargetPreamble` (the target's SSLRequest answer or TLS handshake), `Established`,
//! `Closing`. The stages decide (`tcp::Action`) and the worker acts; the only I/O of the
//! decisions goes through `tcp::socket::Socket`, so `tcp::sim` drives them over simulated
//! sockets from a seed. Each side's bytes cross a `tcp::transport::Transport` (plain or TLS).
//! 1. A listener is readable: the worker accepts (at most a budget per wake) after reserving a
//!    place under the listener's `max_connections` (a guard, given back when dropped).
//! 2. The preamble is complete; the group's [`balancer`] picks a healthy target; a
//!    non-blocking connect starts.
//! 3. The target socket becomes writable: `take_error` tells whether the connect worked. A
//!    failure (refused, unreachable, `connect_timeout`) tries the next target, up to `retries`;
//!    the connection counts its tries (`tcp::Attempts`).
//! 4. Established: `tcp::pump` moves bytes both ways through a pooled buffer, switching to
//!    `splice(2)` once a direction carries bulk data. A direction whose destination is full
//!    stops reading its source; nothing is dropped or reordered.
//! 5. EOF from one side becomes `shutdown(Write)` on the other; the reverse direction flows on.
//!    Each direction ends on its own: a side that resets (or can no longer take data) ends the
//!    direction toward it, while what it sent before still reaches the other side, which is
//!    then reset, not closed with a FIN (`tcp`).
//! 6. Both directions over, or `idle_timeout`, closes both sockets and removes the table entry.
//!    A client Ballast gives up on (no target, connect timeout, stop, disable) is reset.
//!
//! ## The path of one UDP datagram
//! 1. A UDP listener is readable: `recvmmsg` fills up to `batch` preallocated slots.
//! 2. Each client's datagrams find its session by 5-tuple, or create one (a target from the
//!    group's [`balancer::Picker`], a connected upstream socket), up to `max_sessions`.
//! 3. They go up that socket in one `sendmmsg`, equal-sized runs as one UDP GSO message.
//! 4. Replies on the upstream socket go back to the client from the listener's socket; the
//!    session ends after `max_responses` replies or `session_idle_timeout` of silence.
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]
// These docs are for the crate's developers as much as for its few library users: read them
// with `cargo doc --document-private-items`, where links into crate-private modules resolve.
#![allow(rustdoc::private_intra_doc_links)]

// The public API: what `main.rs`, the integration tests, the benches, the examples and the
// fuzz targets use. `cli`, `ctl` and `preflight` are the binary's; `config` and `runtime` start Ballast from
// a library (examples/); `proxy_protocol` is a codec of its own, fuzzed and checked against
// HAProxy; `quic` makes the QUIC-LB connection IDs a server in Rust issues (and the tests'
// quinn servers do). Everything else is the crate's, with the few items used outside re-exported below.
pub mod cli;
pub mod config;
pub mod ctl;
pub mod preflight;
pub mod proxy_protocol;
pub mod quic;
pub mod runtime;

pub use admin::{answer, Method};
pub use balancer::{for_algorithm, Request};
pub use conntrack::FiveTuple;
pub use control::Control;
pub use generation::Generation;
pub use udp::batch::pktinfo_in;

pub(crate) mod access_log;
pub(crate) mod activation;
pub(crate) mod admin;
pub(crate) mod balancer;
pub(crate) mod bind;
pub(crate) mod bpf;
pub(crate) mod btf;
pub(crate) mod cert_watch;
pub(crate) mod client;
pub(crate) mod conntrack;
pub(crate) mod control;
pub(crate) mod deploy;
pub(crate) mod discovery;
pub(crate) mod fault;
pub(crate) mod fleet;
pub(crate) mod generation;
pub(crate) mod handover;
pub(crate) mod hash;
pub(crate) mod health;
pub(crate) mod listener;
pub(crate) mod net;
pub(crate) mod node;
pub(crate) mod notify;
pub(crate) mod per_source;
pub(crate) mod postgres;
pub(crate) mod progress;
pub(crate) mod scaling;
pub(crate) mod sni;
pub(crate) mod sockmap;
pub(crate) mod steering;
pub(crate) mod supervise;
pub(crate) mod target;
pub(crate) mod tcp;
pub(crate) mod throttle;
pub(crate) mod timers;
pub(crate) mod tls;
pub(crate) mod udp;
pub(crate) mod worker;
