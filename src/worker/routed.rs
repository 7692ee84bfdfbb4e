//! The worker's side of UDP listeners that route each datagram by what it carries: a QUIC
//! connection ID (`quic:`) or a token (`token:`). Datagrams of one flow may go to different
//! targets; consecutive ones to the same session go up in one `sendmmsg`.
//!
//! **QUIC** (draft-ietf-quic-load-balancers-19 §3.2, with the sessions as the 4-tuple table):
//! - A short header (1-RTT) packet whose connection ID carries a server ID of the group goes to
//!   that target, whatever address it comes from: a client that moved (a new Wi-Fi, a NAT
//!   rebinding) gets a new session to the same server, which sees a new path of the same
//!   connection and answers on it.
//! - A long header packet of a flow that has a session follows it: the handshake stays where
//!   it began (clients do not migrate before the handshake is confirmed, RFC 9000 §9).
//! - A long header packet without a session goes by its connection ID's server when that is a
//!   target in service and healthy, or for a Handshake packet any target still keeping its
//!   flows (a client reconnecting to a server it knows, or a flow whose session expired);
//!   else an Initial or 0-RTT packet, whose connection ID the client chose, is
//!   balanced by the group's algorithm on that ID (so a retransmitted Initial from another
//!   address, or to another Ballast node, meets the same target under `maglev`).
//! - Anything else (not QUIC, another configuration's IDs, an unknown server ID) is routed by
//!   its 5-tuple, as any UDP flow: the fallback, counted (`unknown_server_id` too for an
//!   unknown server ID outside an Initial, whose ID may be the client's random choice).
//!
//! **Tokens** (Quilkin's TokenRouter): a datagram goes to the target listing its token (a
//! prefix or suffix of `size` octets), stripped first unless `strip: false`; a datagram with
//! an unknown token, or too short to carry one, is dropped and counted, never sent to a guess.
//! The flow's session carries the replies back, and moves when the client's token does.

use std::ops::Range;
use std::sync::atomic::Ordering;

use super::udp::Choice;
use super::Worker;
use crate::config::{QuicRouting, TokenRouting};
use crate::quic::{header, Kind};
use crate::udp::batch::Batch;

/// What became of datagrams on a routing listener, counted per `recvmmsg` batch and added to
/// the listener's counters once.
#[derive(Debug, Default)]
pub(super) struct RouteCounts {
    /// Routed by the server ID in their connection ID.
    pub by_connection_id: u64,
    /// Initial or 0-RTT packets of new flows balanced on their connection ID.
    pub balanced: u64,
    /// Routed by 5-tuple: not QUIC, or a connection ID no server of the group issued.
    pub fallback: u64,
    /// Of the fallback: a connection ID of this configuration naming no target of the group.
    pub unknown_server_id: u64,
    /// Short header packets that arrived from an address with no session: a migrated or
    /// rebound client (or one whose session expired), taken to its server.
    pub migrations: u64,
    /// Routed by their token.
    pub by_token: u64,
    /// Dropped: no target lists their token (or too short to carry one).
    pub unknown_token: u64,
}

impl Worker {
    /// Sends datagrams `range` of `batch` (one flow: `client` to `local` on listener `i`) up
    /// the sessions `decide` routes each to (`None`: dropped, counted by `decide`),
    /// consecutive datagrams of one session in one `sendmmsg`.
    fn route_each(
        &mut self,
        i: usize,
        batch: &mut Batch,
        range: Range<usize>,
        mut decide: impl FnMut(&Worker, &mut Batch, usize) -> Option<Choice>,
    ) {
        let (Some(client), local) = (batch.source(range.start), batch.local(range.start)) else {
            return;
        };
        let mut run: Option<(usize, Range<usize>)> = None;
        for j in range {
            let choice = decide(self, batch, j);
            // A datagram for another target than its session's moves the session (its
            // upstream socket is connected anew): those gathered before it go first, where
            // they were routed.
            if let (Some(Choice::Target(t)), Some((k, _))) = (&choice, &run) {
                if self.sessions.get(*k).is_some_and(|s| s.target != *t) {
                    if let Some((k, r)) = run.take() {
                        self.send_up(k, batch, r);
                    }
                }
            }
            let key = match choice {
                None => Err(None),
                Some(choice) => self.session_for(i, client, local, choice),
            };
            let key = match key {
                Ok(key) => key,
                Err(why) => {
                    if let Some((key, r)) = run.take() {
                        self.send_up(key, batch, r);
                    }
                    match why {
                        Some(why) => self.generation.listeners[i].refuse_many(why, 1),
                        None => self.count_drops(i, 1, "no session or no target"),
                    }
                    continue;
                }
            };
            run = match run.take() {
                Some((k, r)) if k == key => Some((k, r.start..j + 1)),
                Some((k, r)) => {
                    self.send_up(k, batch, r);
                    Some((key, j..j + 1))
                }
                None => Some((key, j..j + 1)),
            };
        }
        if let Some((key, r)) = run {
            self.send_up(key, batch, r);
        }
    }

    /// Routes datagrams `range` of `batch` (one flow on listener `i`) by their QUIC
    /// connection IDs.
    pub(super) fn route_quic(
        &mut self,
        i: usize,
        quic: &QuicRouting,
        batch: &mut Batch,
        range: Range<usize>,
        counts: &mut RouteCounts,
    ) {
        let (Some(client), local) = (batch.source(range.start), batch.local(range.start)) else {
            return;
        };
        let g = self.generation.listeners[i].config.target_group;
        self.route_each(i, batch, range, |w, batch, j| {
            Some(w.quic_choice(i, g, quic, batch.payload(j), client, local, counts))
        });
    }

    /// Routes datagrams `range` of `batch` (one flow on listener `i`) by their tokens,
    /// stripping them when asked.
    pub(super) fn route_tokens(
        &mut self,
        i: usize,
        token: TokenRouting,
        batch: &mut Batch,
        range: Range<usize>,
        counts: &mut RouteCounts,
    ) {
        let (Some(client), local) = (batch.source(range.start), batch.local(range.start)) else {
            return;
        };
        let g = self.generation.listeners[i].config.target_group;
        let (front, back) = token.cut();
        self.route_each(i, batch, range, |w, batch, j| {
            let group = &w.generation.groups[g];
            // A disabled or removed target's players already on it go on (until its
            // drain_timeout closes their sessions); no new flow is sent to it.
            let target = token
                .token(batch.payload(j))
                .and_then(|k| group.by_token(k))
                .filter(|&t| group.keeps_flows(t) || w.session_target(i, client, local) == Some(t));
            let Some(t) = target else {
                counts.unknown_token += 1;
                return None;
            };
            counts.by_token += 1;
            batch.trim(j, front, back);
            Some(Choice::Target(t))
        });
    }

    /// Where one datagram (`payload`, from `client` to `local` on listener `i` of group `g`)
    /// goes, by the order in this module's documentation.
    #[allow(clippy::too_many_arguments)]
    fn quic_choice(
        &self,
        i: usize,
        g: usize,
        quic: &QuicRouting,
        payload: &[u8],
        client: std::net::SocketAddr,
        local: Option<std::net::IpAddr>,
        counts: &mut RouteCounts,
    ) -> Choice {
        let Some(h) = header(payload, quic.connection_id_length) else {
            counts.fallback += 1;
            return Choice::Pick(None);
        };
        let group = &self.generation.groups[g];
        let decoded = quic.decode(h.dcid);
        let named = decoded.and_then(|id| group.by_server_id(id));
        // An Initial's connection ID is often the client's own random choice, which may look
        // like one of this configuration's: only IDs a server must have issued count.
        if decoded.is_some() && named.is_none() && h.kind != Kind::ClientChosen {
            counts.unknown_server_id += 1;
        }
        // A disabled or removed target keeps the flows already on it (until its drain_timeout
        // closes them); others naming it go by 5-tuple.
        let server = named
            .filter(|&t| group.keeps_flows(t) || self.session_target(i, client, local) == Some(t));
        let has_session = || self.sessions.find(&self.flow(i, client, local)).is_some();
        match (h.kind, server) {
            (Kind::Short, Some(t)) => {
                counts.by_connection_id += 1;
                if !has_session() {
                    counts.migrations += 1;
                }
                Choice::Target(t)
            }
            (Kind::ClientChosen | Kind::OtherLong, _) if has_session() => {
                counts.by_connection_id += u64::from(server.is_some());
                counts.fallback += u64::from(server.is_none());
                Choice::Pick(None)
            }
            // An Initial naming a server goes there only if it may take new connections
            // (in service, healthy): else it is balanced, as a new connection is.
            (Kind::ClientChosen | Kind::OtherLong, Some(t))
                if h.kind == Kind::OtherLong
                    || group.targets[t].in_service() && group.targets[t].is_available() =>
            {
                counts.by_connection_id += 1;
                Choice::Target(t)
            }
            (Kind::ClientChosen, _) => {
                counts.balanced += 1;
                Choice::Pick(Some(crate::hash::fnv1a(h.dcid, 0)))
            }
            (Kind::Short | Kind::OtherLong, _) => {
                counts.fallback += 1;
                Choice::Pick(None)
            }
        }
    }

    /// The target of the session of the flow from `client` to `local` on listener `i`, if it
    /// has one.
    fn session_target(
        &self,
        i: usize,
        client: std::net::SocketAddr,
        local: Option<std::net::IpAddr>,
    ) -> Option<usize> {
        let key = self.sessions.find(&self.flow(i, client, local))?;
        self.sessions.get(key).map(|s| s.target)
    }

    /// Adds `counts` to listener `i`'s routing counters.
    pub(super) fn add_route_counts(&self, i: usize, counts: &RouteCounts) {
        let stats = &self.generation.listeners[i].routed;
        for (counter, n) in [
            (&stats.by_connection_id, counts.by_connection_id),
            (&stats.balanced, counts.balanced),
            (&stats.fallback, counts.fallback),
            (&stats.unknown_server_id, counts.unknown_server_id),
            (&stats.migrations, counts.migrations),
            (&stats.by_token, counts.by_token),
            (&stats.unknown_token, counts.unknown_token),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}
