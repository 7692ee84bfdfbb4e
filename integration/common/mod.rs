//! Helpers for the end-to-end tests, one file per concern: a Ballast process started from a
//! YAML string ([`process`]) and what it notifies ([`notify`]), the admin API's client
//! ([`admin`]), TCP and UDP backends on real sockets ([`tcp_backends`], [`udp_backends`]),
//! configuration builders ([`configs`]) and bounded waits ([`waits`]).
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod configs;
pub mod etcd;
pub mod netns;
pub mod notify;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod servers;
pub mod tcp_backends;
pub mod udp_backends;
pub mod waits;

pub use admin::*;
pub use configs::*;
pub use process::*;
pub use servers::*;
pub use tcp_backends::*;
pub use udp_backends::*;
pub use waits::*;
