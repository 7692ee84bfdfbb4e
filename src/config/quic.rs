//! `quic:` of a UDP listener: QUIC connection-ID routing (QUIC-LB,
//! draft-ietf-quic-load-balancers-19). The servers encode their `server_id` in the connection
//! IDs they issue; Ballast decodes it from each packet's destination connection ID
//! ([`crate::quic`]) and sends the packet to that target, whatever address it comes from.

use crate::quic::lb::LbConfig;

/// Default `nonce_length`, octets: the draft's least; with a 3-octet server ID the connection
/// ID is 8 octets, quinn's default length.
pub const DEFAULT_NONCE_LENGTH: usize = 4;

/// `algorithm:` of `quic:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuicAlgorithm {
    /// The server ID as it is (§5.2): anyone on the path can read which server a connection
    /// is on, and link a client's addresses before and after a migration.
    Plaintext,
    /// AES-128 (§5.4): one block when server ID and nonce make 16 octets, else a four-round
    /// Feistel network.
    BlockCipher,
}

/// A QUIC-LB key: 16 octets, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct QuicKey(pub [u8; 16]);

impl std::fmt::Debug for QuicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuicKey(…)")
    }
}

/// A listener's QUIC routing, as validated.
#[derive(Debug, Clone)]
pub struct QuicRouting {
    /// The configuration servers and balancer share (codepoint, lengths, key).
    pub lb: LbConfig,
    /// `plaintext` or `block_cipher`.
    pub algorithm: QuicAlgorithm,
    /// The key of `block_cipher`.
    pub key: Option<QuicKey>,
    /// The length of a short header's destination connection ID, octets (short headers do
    /// not carry it): 1 + server ID + nonce, or more when servers append octets (at least
    /// the retiring configuration's too).
    pub connection_id_length: usize,
    /// `retiring:`: the configuration being replaced, routed beside `lb` (another codepoint).
    pub retiring: Option<RetiringLb>,
}

/// `quic.retiring:` as validated: an older configuration still routed.
#[derive(Debug, Clone)]
pub struct RetiringLb {
    /// Its codepoint, lengths and key.
    pub lb: LbConfig,
    /// Its key, for comparing configurations across reloads.
    pub key: Option<QuicKey>,
}

impl QuicRouting {
    /// The server ID connection ID `cid` carries under the current configuration or the
    /// retiring one (told apart by codepoint), `None` when under neither.
    pub fn decode(&self, cid: &[u8]) -> Option<u64> {
        self.lb
            .decode(cid)
            .or_else(|| self.retiring.as_ref()?.lb.decode(cid))
    }

    /// Why `target`'s server ID cannot be carried by these connection IDs (the current
    /// configuration's or the retiring one's), if it cannot: the one check of the file's
    /// targets and of those the API adds.
    pub fn misfit(&self, target: &super::TargetConfig) -> Option<String> {
        let id = target.server_id?;
        let retiring = self.retiring.as_ref().map(|r| (&r.lb, " (retiring)"));
        std::iter::once((&self.lb, ""))
            .chain(retiring)
            .find(|(lb, _)| id > lb.max_server_id())
            .map(|(lb, which)| {
                let (_, octets, _) = lb.params();
                format!(
                    "server_id {id}, which does not fit {octets} octet(s){which} (at most {})",
                    lb.max_server_id()
                )
            })
    }
}

impl PartialEq for QuicRouting {
    fn eq(&self, other: &Self) -> bool {
        let retiring = |r: &Option<RetiringLb>| r.as_ref().map(|r| (r.lb.params(), r.key.clone()));
        self.algorithm == other.algorithm
            && self.key == other.key
            && self.connection_id_length == other.connection_id_length
            && self.lb.params() == other.lb.params()
            && retiring(&self.retiring) == retiring(&other.retiring)
    }
}

/// `capture:` of `token:`: where a datagram carries its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenCapture {
    /// The datagram's first `size` octets.
    Prefix,
    /// Its last `size` octets.
    Suffix,
}

/// A listener's token routing (Quilkin's TokenRouter model), as validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRouting {
    /// Where the token is.
    pub capture: TokenCapture,
    /// Its length, octets.
    pub size: usize,
    /// Whether it is removed before the datagram goes up.
    pub strip: bool,
}

impl TokenRouting {
    /// Why one of `target`'s tokens cannot be read here, if one cannot: another size.
    pub fn misfit(&self, target: &super::TargetConfig) -> Option<String> {
        let bad = target.tokens.iter().find(|k| k.len() != self.size)?;
        Some(format!(
            "token `{}` is {} octet(s); this listener reads tokens of {}",
            show_token(bad),
            bad.len(),
            self.size
        ))
    }

    /// The token of `datagram`, `None` when it is shorter than a token.
    pub fn token<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        match self.capture {
            TokenCapture::Prefix => datagram.get(..self.size),
            TokenCapture::Suffix => datagram.get(datagram.len().checked_sub(self.size)?..),
        }
    }

    /// What to cut from a datagram's front and back to strip its token (nothing without
    /// `strip`).
    pub fn cut(&self) -> (usize, usize) {
        match (self.strip, self.capture) {
            (false, _) => (0, 0),
            (true, TokenCapture::Prefix) => (self.size, 0),
            (true, TokenCapture::Suffix) => (0, self.size),
        }
    }
}

/// A token as the API and messages show it: its text when printable ASCII, else `base64:…`
/// (what [`parse_token`] reads back).
pub fn show_token(token: &[u8]) -> String {
    use base64::Engine;
    if token.iter().all(|b| b.is_ascii_graphic() || *b == b' ') && !token.starts_with(b"base64:") {
        String::from_utf8_lossy(token).into_owned()
    } else {
        format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(token)
        )
    }
}

/// A token as written in the file or the API: its text's octets, or after `base64:` the
/// octets it encodes.
///
/// # Errors
/// A message when the base64 is not valid.
pub fn parse_token(text: &str) -> Result<Box<[u8]>, String> {
    use base64::Engine;
    match text.strip_prefix("base64:") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Vec::into_boxed_slice)
            .map_err(|e| format!("token `{text}`: bad base64: {e}")),
        None => Ok(text.as_bytes().into()),
    }
}
