//! `quic:` of a UDP listener: the QUIC-LB configuration, its key, and its group's server IDs.

use std::path::Path;

use super::super::file::{FileQuic, FileToken};
use super::super::*;
use super::Wrong;
use crate::quic::lb::LbConfig;

/// The `quic:` section at `key` (`listeners[i].quic`) of a listener of `protocol` whose
/// target group is `group` (`None` when the group is itself wrong). Relative `key_file`s are
/// `base`'s.
///
/// # Errors
/// `(key, message)` of its first problem: a TCP listener; lengths the draft refuses; a
/// `block_cipher` without a key, a key with `plaintext`; a key file that cannot be read, is
/// readable by others, or holds anything but 32 hex digits; a target's `server_id` too large
/// for `server_id_length`.
pub(super) fn quic(
    key: &str,
    raw: FileQuic,
    protocol: Protocol,
    group: Option<&TargetGroupConfig>,
    base: &Path,
) -> Result<QuicRouting, Wrong> {
    if protocol != Protocol::Udp {
        return Err((
            key.to_string(),
            "QUIC routing applies to udp listeners only".into(),
        ));
    }
    let config_id = raw.config_rotation.map_or(0, |c| c.0 as u8);
    let (lb, algorithm, quic_key) = lb_config(
        key,
        raw.algorithm,
        raw.key_file,
        (
            raw.server_id_length.0,
            raw.nonce_length.map(|n| n.0),
            config_id,
        ),
        base,
    )?;
    let retiring = match raw.retiring {
        None => None,
        Some(r) => {
            let rkey = format!("{key}.retiring");
            if r.config_rotation.0 as u8 == config_id {
                return Err((
                    format!("{rkey}.config_rotation"),
                    format!(
                        "{config_id} is the current configuration's codepoint: a retiring \
                         one needs its own, or their IDs cannot be told apart"
                    ),
                ));
            }
            let (lb, _, key) = lb_config(
                &rkey,
                r.algorithm,
                r.key_file,
                (
                    r.server_id_length.0,
                    r.nonce_length.map(|n| n.0),
                    r.config_rotation.0 as u8,
                ),
                base,
            )?;
            Some(RetiringLb { lb, key })
        }
    };
    // Short headers are read at the longer of the two configurations' lengths (a decode
    // ignores what follows its own).
    let least = retiring
        .as_ref()
        .map_or(lb.cid_len(), |r| r.lb.cid_len().max(lb.cid_len()));
    let connection_id_length = match raw.connection_id_length {
        None => least,
        Some(n) if (n.0 as usize) < least => {
            return Err((
                format!("{key}.connection_id_length"),
                format!(
                    "{} is shorter than 1 + server_id_length + nonce_length = {least}{}",
                    n.0,
                    if least > lb.cid_len() {
                        " (the retiring configuration's)"
                    } else {
                        ""
                    }
                ),
            ))
        }
        Some(n) => n.0 as usize,
    };
    let routing = QuicRouting {
        lb,
        algorithm,
        key: quic_key,
        connection_id_length,
        retiring,
    };
    misfits(&format!("{key}.server_id_length"), group, |t| {
        routing.misfit(t)
    })?;
    Ok(routing)
}

/// One QUIC-LB configuration at `key` (`quic` or `quic.retiring`): `algorithm` (default
/// plaintext) with `key_file` (read from `base`), and `(server_id_length, nonce_length,
/// config_rotation)`.
///
/// # Errors
/// `(key, message)`: a `block_cipher` without a key, a key with `plaintext`, a key file that
/// cannot be read, is readable by others or holds anything but 32 hex digits, lengths the
/// draft refuses.
fn lb_config(
    key: &str,
    algorithm: Option<QuicAlgorithm>,
    key_file: Option<String>,
    (server_id_length, nonce_length, config_id): (u64, Option<u64>, u8),
    base: &Path,
) -> Result<(LbConfig, QuicAlgorithm, Option<QuicKey>), Wrong> {
    let algorithm = algorithm.unwrap_or(QuicAlgorithm::Plaintext);
    let quic_key = match (algorithm, key_file) {
        (QuicAlgorithm::Plaintext, None) => None,
        (QuicAlgorithm::Plaintext, Some(_)) => {
            return Err((
                format!("{key}.key_file"),
                "a key goes with `algorithm: block_cipher` (plaintext uses none)".into(),
            ))
        }
        (QuicAlgorithm::BlockCipher, None) => {
            return Err((
                format!("{key}.key_file"),
                "`algorithm: block_cipher` needs a key_file (16 octets as 32 hex digits)".into(),
            ))
        }
        (QuicAlgorithm::BlockCipher, Some(file)) => {
            let fkey = format!("{key}.key_file");
            let text = super::read_secret(&fkey, base, &file)?;
            Some(QuicKey(parse_key(&text).map_err(|m| (fkey, m))?))
        }
    };
    let nonce_len = nonce_length.map_or(DEFAULT_NONCE_LENGTH, |n| n as usize);
    let lb = LbConfig::new(
        config_id,
        server_id_length as usize,
        nonce_len,
        quic_key.as_ref().map(|k| k.0),
    )
    .map_err(|m| (key.to_string(), m))?;
    Ok((lb, algorithm, quic_key))
}

/// The `token:` section at `key` (`listeners[i].token`) of a listener of `protocol` (with
/// `quic:` too when `with_quic`) whose target group is `group` (`None` when it is wrong).
///
/// # Errors
/// `(key, message)`: a TCP listener, `quic:` beside it, a target's token of another size.
pub(super) fn token(
    key: &str,
    raw: FileToken,
    protocol: Protocol,
    with_quic: bool,
    group: Option<&TargetGroupConfig>,
) -> Result<TokenRouting, Wrong> {
    if protocol != Protocol::Udp {
        return Err((
            key.to_string(),
            "token routing applies to udp listeners only".into(),
        ));
    }
    if with_quic {
        return Err((
            key.to_string(),
            "a listener routes by `quic:` connection IDs or by `token:`, not both".into(),
        ));
    }
    let size = raw.size.0 as usize;
    let routing = TokenRouting {
        capture: raw.capture,
        size,
        strip: raw.strip.unwrap_or(true),
    };
    misfits(&format!("{key}.size"), group, |t| routing.misfit(t))?;
    Ok(routing)
}

/// The first of `group`'s targets `misfit` refuses, as an error at `key`.
fn misfits(
    key: &str,
    group: Option<&TargetGroupConfig>,
    misfit: impl Fn(&TargetConfig) -> Option<String>,
) -> Result<(), Wrong> {
    let Some(g) = group else {
        return Ok(());
    };
    for (j, t) in g.targets.iter().enumerate() {
        if let Some(why) = misfit(t) {
            return Err((
                key.to_string(),
                format!(
                    "target {} (targets[{j}]) of group `{}`: {why}",
                    t.address, g.name
                ),
            ));
        }
    }
    Ok(())
}

/// A key written as 32 hex digits (spaces and a `0x` ignored).
fn parse_key(text: &str) -> Result<[u8; 16], String> {
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bad = || "the key is 16 octets written as 32 hex digits".to_string();
    if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}
