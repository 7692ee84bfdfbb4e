//! The tests of `faults.rs` again, with `forwarding: sockmap` on every listener
//! `common::config` builds (see `common::forwarding_override`): aborts, half-close, urgent
//! data, idle cuts and the churn test, with the kernel forwarding established bytes.

#[path = "faults.rs"]
mod faults;
