//! QUIC-LB connection IDs (draft-ietf-quic-load-balancers-19, "QUIC-LB: Generating Routable
//! QUIC Connection IDs"): servers encode a server ID in the connection IDs they issue, and a
//! load balancer that shares the configuration decodes it from any packet's destination
//! connection ID, whatever address the packet comes from.
//!
//! A connection ID is a first octet (3 bits of config rotation, §2.1, then 5 bits of length or
//! random), then the server ID and a nonce, either as they are (`plaintext`, §5.2) or
//! encrypted with AES-128 (`block_cipher`): one AES-ECB block when server ID and nonce make 16
//! octets (§5.4.1), else a four-round Feistel network with AES-ECB as its round function
//! (§5.4.2). Both directions are here: [`LbConfig::decode`] for the balancer, and
//! [`LbConfig::encode`] for servers written in Rust and for the tests (the draft's test
//! vectors, §A, are unit tests below).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;

/// Config rotation codepoint no configuration may use: a server without one marks its
/// connection IDs unroutable with it (§2.2).
pub const UNROUTABLE_CONFIG: u8 = 0b111;

/// Longest server ID plus nonce, octets: QUIC v1 connection IDs are at most 20 octets with
/// the first (§5.2).
pub const MAX_PLAINTEXT: usize = 19;

/// One QUIC-LB configuration: what a server and a balancer must agree on.
#[derive(Clone)]
pub struct LbConfig {
    /// Config rotation codepoint, 0 to 6: the first octet's three most significant bits.
    config_id: u8,
    /// Server ID length, octets (1 to 8 here; the draft allows more, a u64 holds 8).
    server_id_len: usize,
    /// Nonce length, octets (at least 4; with the server ID at most 19).
    nonce_len: usize,
    /// `None`: plaintext; `Some`: the AES-128 key.
    cipher: Option<Aes128>,
}

impl std::fmt::Debug for LbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LbConfig")
            .field("config_id", &self.config_id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

impl LbConfig {
    /// A configuration: codepoint `config_id`, a server ID of `server_id_len` octets, a nonce
    /// of `nonce_len`, and `key` for `block_cipher` (`None`: plaintext).
    ///
    /// # Errors
    /// A message when `config_id` is over 6, `server_id_len` is not 1 to 8, `nonce_len` is
    /// under 4, or the two sum to more than 19 (§5.3).
    pub fn new(
        config_id: u8,
        server_id_len: usize,
        nonce_len: usize,
        key: Option<[u8; 16]>,
    ) -> Result<LbConfig, String> {
        if config_id >= UNROUTABLE_CONFIG {
            return Err(format!(
                "config_rotation must be 0 to 6 (7 marks unroutable IDs), not {config_id}"
            ));
        }
        if !(1..=8).contains(&server_id_len) {
            return Err(format!(
                "server_id_length must be 1 to 8 octets, not {server_id_len}"
            ));
        }
        if nonce_len < 4 {
            return Err(format!(
                "nonce_length must be at least 4 octets, not {nonce_len}"
            ));
        }
        if server_id_len + nonce_len > MAX_PLAINTEXT {
            return Err(format!(
                "server_id_length + nonce_length must be at most {MAX_PLAINTEXT} octets \
                 (a QUIC connection ID is at most 20 with its first octet), not {}",
                server_id_len + nonce_len
            ));
        }
        Ok(LbConfig {
            config_id,
            server_id_len,
            nonce_len,
            cipher: key.map(|k| Aes128::new(&k.into())),
        })
    }

    /// Codepoint, server ID length and nonce length.
    pub fn params(&self) -> (u8, usize, usize) {
        (self.config_id, self.server_id_len, self.nonce_len)
    }

    /// The length of the connection IDs this configuration makes, octets (first octet
    /// included).
    pub fn cid_len(&self) -> usize {
        1 + self.server_id_len + self.nonce_len
    }

    /// The largest server ID that fits `server_id_len` octets.
    pub fn max_server_id(&self) -> u64 {
        u64::MAX >> (64 - 8 * self.server_id_len)
    }

    /// The server ID encoded in connection ID `cid`, or `None` when `cid` is unroutable
    /// under this configuration: another config rotation codepoint (7 included), or too
    /// short (§3.1). Bytes after the configuration's length (a server's own) are ignored.
    /// Whether the ID belongs to a server is the caller's question.
    pub fn decode(&self, cid: &[u8]) -> Option<u64> {
        let (&first, rest) = cid.split_first()?;
        if first >> 5 != self.config_id {
            return None;
        }
        let len = self.server_id_len + self.nonce_len;
        let block = rest.get(..len)?;
        let sid_len = self.server_id_len;
        let Some(cipher) = &self.cipher else {
            return Some(be(block.get(..sid_len)?));
        };
        if len == 16 {
            let mut b = [0u8; 16];
            b.copy_from_slice(block);
            cipher.decrypt_block((&mut b).into());
            return Some(be(b.get(..sid_len)?));
        }
        let plain = feistel(cipher, block, Way::Decrypt(sid_len))?;
        Some(be(plain.get(..sid_len)?))
    }

    /// The connection ID of server `server_id` with `nonce` (its first `nonce_len` octets),
    /// the first octet's low five bits `low_bits` (the length after it, when a server
    /// self-describes, or random bits).
    ///
    /// # Errors
    /// A message when `server_id` does not fit `server_id_len` octets or `nonce` is short.
    pub fn encode(&self, server_id: u64, nonce: &[u8], low_bits: u8) -> Result<Vec<u8>, String> {
        if server_id > self.max_server_id() {
            return Err(format!(
                "server ID {server_id} does not fit {} octet(s)",
                self.server_id_len
            ));
        }
        let nonce = nonce
            .get(..self.nonce_len)
            .ok_or_else(|| format!("a nonce of {} octets is needed", self.nonce_len))?;
        let octets = server_id.to_be_bytes();
        let mut plain: Vec<u8> = octets
            .iter()
            .skip(8 - self.server_id_len)
            .copied()
            .collect();
        plain.extend_from_slice(nonce);
        let body = match &self.cipher {
            None => plain,
            Some(cipher) if plain.len() == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&plain);
                cipher.encrypt_block((&mut b).into());
                b.to_vec()
            }
            Some(cipher) => feistel(cipher, &plain, Way::Encrypt)
                .ok_or_else(|| "cannot encrypt the connection ID".to_string())?,
        };
        let mut cid = Vec::with_capacity(1 + body.len());
        cid.push(self.config_id << 5 | low_bits & 0x1f);
        cid.extend_from_slice(&body);
        Ok(cid)
    }
}

/// A big-endian integer of up to 8 octets.
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |n, &b| n << 8 | u64::from(b))
}

/// Which way the Feistel network runs.
#[derive(Clone, Copy)]
enum Way {
    Encrypt,
    /// Decrypt, far enough to read a server ID of this many octets (3 passes when the
    /// server ID lies in the left half, 4 otherwise; §5.5.2).
    Decrypt(usize),
}

/// The four-pass Feistel network of §5.4.2 over `input` (5 to 19 octets but 16): its output
/// of the same length. The halves are `half = ⌈len/2⌉` octets; with an odd length the middle
/// octet is split, its high nibble the left's and its low nibble the right's.
fn feistel(cipher: &Aes128, input: &[u8], way: Way) -> Option<Vec<u8>> {
    let len = input.len();
    if !(5..=MAX_PLAINTEXT).contains(&len) || len == 16 {
        return None;
    }
    let half = len.div_ceil(2);
    let odd = len % 2 == 1;
    let mut left = [0u8; 10];
    let mut right = [0u8; 10];
    for (d, s) in left.iter_mut().zip(input.iter().take(half)) {
        *d = *s;
    }
    // The right half ends with the input; with an odd length it starts at the middle octet.
    for (d, s) in right.iter_mut().zip(input.iter().skip(len - half)) {
        *d = *s;
    }
    // With an odd length the middle octet is shared: the left keeps its high nibble, the
    // right its low one.
    let clear = |half_bytes: &mut [u8; 10], is_left: bool| {
        if !odd {
            return;
        }
        if is_left {
            if let Some(b) = half_bytes.get_mut(half - 1) {
                *b &= 0xf0;
            }
        } else if let Some(b) = half_bytes.first_mut() {
            *b &= 0x0f;
        }
    };
    clear(&mut left, true);
    clear(&mut right, false);
    // One pass: `target ^= AES(expand(len, pass, source))`, truncated to a half.
    let round = |target: &mut [u8; 10], source: &[u8; 10], pass: u8, is_left: bool| {
        let mut block = [0u8; 16];
        for (b, s) in block.iter_mut().zip(source.iter().take(half)) {
            *b = *s;
        }
        block[14] = len as u8;
        block[15] = pass;
        cipher.encrypt_block((&mut block).into());
        for (t, b) in target.iter_mut().zip(block.iter().take(half)) {
            *t ^= b;
        }
        clear(target, is_left);
    };
    match way {
        Way::Encrypt => {
            round(&mut right, &left, 1, false);
            round(&mut left, &right, 2, true);
            round(&mut right, &left, 3, false);
            round(&mut left, &right, 4, true);
        }
        Way::Decrypt(sid_len) => {
            round(&mut left, &right, 4, true);
            round(&mut right, &left, 3, false);
            round(&mut left, &right, 2, true);
            // The left half holds the server ID when it is no longer than the left half
            // minus an odd length's shared nibble: three passes are enough then.
            if sid_len > len / 2 {
                round(&mut right, &left, 1, false);
            }
        }
    }
    let mut out: Vec<u8> = left.iter().take(half).copied().collect();
    if odd {
        // The middle octet: the left's high nibble and the right's low one.
        if let (Some(last), Some(&first)) = (out.last_mut(), right.first()) {
            *last |= first;
        }
        out.extend(right.iter().take(half).skip(1));
    } else {
        out.extend(right.iter().take(half));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key() -> [u8; 16] {
        hex("8f95f09245765f80256934e50c66207f").try_into().unwrap()
    }

    /// §A: each vector as (config rotation, server ID, nonce, connection ID). The server
    /// self-describes the length: the first octet's low bits are the length after it.
    fn check(vectors: &[(u8, &str, &str, &str)], key: Option<[u8; 16]>) {
        for &(cr, sid, nonce, cid) in vectors {
            let (sid, nonce, cid) = (hex(sid), hex(nonce), hex(cid));
            let config = LbConfig::new(cr, sid.len().min(8), nonce.len(), key);
            if sid.len() > 8 {
                // Longer server IDs than a u64: the Feistel network itself is checked.
                let cipher = Aes128::new(&key.unwrap().into());
                let mut plain = sid.clone();
                plain.extend_from_slice(&nonce);
                let body = feistel(&cipher, &plain, Way::Encrypt).unwrap();
                assert_eq!(body, cid[1..], "encrypt {plain:02x?}");
                let back = feistel(&cipher, &body, Way::Decrypt(plain.len())).unwrap();
                assert_eq!(back, plain);
                continue;
            }
            let config = config.unwrap();
            let id = be(&sid);
            let made = config
                .encode(id, &nonce, (sid.len() + nonce.len()) as u8)
                .unwrap();
            assert_eq!(made, cid, "encode sid {sid:02x?}");
            assert_eq!(config.decode(&cid), Some(id), "decode {cid:02x?}");
        }
    }

    /// The draft's second unencrypted vector (`1 350d28b420 3487d970b …`) has a nonce of nine
    /// hex digits, a typo in every revision: it cannot be checked, so a hand-made one of the
    /// same shape stands beside the first.
    #[test]
    fn unencrypted_test_vectors() {
        check(
            &[
                (0, "c4605e", "4504cc4f", "07c4605e4504cc4f"),
                (1, "350d28b420", "3487d970", "29350d28b4203487d970"),
            ],
            None,
        );
    }

    /// §5.4.2.4's worked example: an odd length (7), the middle octet split in two.
    #[test]
    fn the_encryption_example() {
        let key: [u8; 16] = hex("fdf726a9893ec05c0632d3956680baf0").try_into().unwrap();
        let config = LbConfig::new(0, 3, 4, Some(key)).unwrap();
        let cid = config.encode(0x31441a, &hex("9c69c275"), 7).unwrap();
        assert_eq!(cid, hex("0767947d29be054a"));
        assert_eq!(config.decode(&cid), Some(0x31441a));
    }

    /// Every server ID round-trips whatever the lengths, and other codepoints, short IDs and
    /// the unroutable codepoint decode to nothing.
    #[test]
    fn round_trips_and_unroutable_ids() {
        for (sid_len, nonce_len) in [
            (1, 4),
            (2, 5),
            (3, 13),
            (4, 12),
            (8, 11),
            (5, 6),
            (8, 4),
            (5, 4),
        ] {
            for key in [None, Some(key())] {
                let c = LbConfig::new(2, sid_len, nonce_len, key).unwrap();
                for sid in [0, 1, c.max_server_id() / 3, c.max_server_id()] {
                    let nonce: Vec<u8> = (0..nonce_len as u8)
                        .map(|i| i.wrapping_mul(37) ^ 11)
                        .collect();
                    let cid = c.encode(sid, &nonce, 0x15).unwrap();
                    assert_eq!(cid.len(), c.cid_len());
                    assert_eq!(cid[0], 2 << 5 | 0x15);
                    assert_eq!(c.decode(&cid), Some(sid), "{sid_len}+{nonce_len} {key:?}");
                    let mut longer = cid.clone();
                    longer.extend_from_slice(b"server's own");
                    assert_eq!(c.decode(&longer), Some(sid));
                    assert_eq!(c.decode(&cid[..cid.len() - 1]), None, "too short");
                    let mut other = cid.clone();
                    other[0] = 3 << 5;
                    assert_eq!(c.decode(&other), None, "another codepoint");
                    other[0] = UNROUTABLE_CONFIG << 5;
                    assert_eq!(c.decode(&other), None, "unroutable");
                }
                if sid_len < 8 {
                    assert!(c.encode(c.max_server_id() + 1, &[0; 19], 0).is_err());
                }
                assert!(c.encode(1, &[0; 3], 0).is_err(), "a short nonce");
            }
        }
        assert_eq!(LbConfig::new(0, 1, 4, None).unwrap().decode(&[]), None);
        assert!(LbConfig::new(7, 1, 4, None).is_err());
        assert!(LbConfig::new(0, 0, 4, None).is_err());
        assert!(LbConfig::new(0, 1, 3, None).is_err());
        assert!(LbConfig::new(0, 8, 12, None).is_err());
    }

    #[test]
    fn encrypted_test_vectors() {
        check(
            &[
                (0, "ed793a", "ee080dbf", "0720b1d07b359d3c"),
                (
                    1,
                    "ed793a51d49b8f5fab65",
                    "ee080dbf48",
                    "2fcc381bc74cb4fbad2823a3d1f8fed2",
                ),
                (
                    2,
                    "ed793a51d49b8f5f",
                    "ee080dbf48c0d1e5",
                    "504dd2d05a7b0de9b2b9907afb5ecf8cc3",
                ),
                (
                    3,
                    "ed793a51d49b8f5fab",
                    "ee080dbf48c0d1e55d",
                    "125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
                ),
            ],
            Some(key()),
        );
    }
}
