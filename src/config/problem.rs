//! Where a configuration is wrong: [`Problem`] (file, line, column, key path, message), built
//! from `serde_yaml`'s errors or from a key path the whole-file checks name, which [`locate`]
//! finds in the text again. Also "did you mean" for a mistyped key or value.
//!
//! `serde_yaml` keeps no positions once a file is parsed, but attaches the position of the node
//! being read to any error raised there. [`locate`] uses that: it walks the text down a key path
//! ([`Nav`]) and raises an error at the node it reaches, then reads the position off the error.
//! [`Nav`] also reads one entry of a list on its own ([`read_entry`]), which is how the loader
//! reports an error in every listener and every target group, not only the first.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, Visitor};

/// One thing wrong in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file: the main one or an included one.
    pub file: PathBuf,
    /// Line in that file, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// Key path in that file, e.g. `listeners[1].target_group`; empty for the file as a whole
    /// (a YAML syntax error).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// `file:line:column: key.path: message`, as compilers print, so editors jump to it.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl Problem {
    /// A problem from `serde_yaml`'s error while reading `file`: its position, and its message
    /// split into the key path and the rest, with a suggestion for an unknown key or value.
    pub(crate) fn from_yaml(file: &Path, e: &serde_yaml::Error) -> Problem {
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
        let text = e
            .to_string()
            .replacen(&format!(" at line {line} column {column}"), "", 1);
        let (key, message) = match text.split_once(": ") {
            Some((path, rest)) if is_path(path) => (path.to_string(), rest.to_string()),
            _ => (String::new(), text.clone()),
        };
        let (key, message) = suggest(key, message);
        Problem {
            file: file.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    }

    /// A problem at `key` of `file`, whose text is `text`, found there by [`locate`].
    pub(crate) fn at(file: &Path, text: &str, key: &str, message: String) -> Problem {
        let (line, column) = locate(text, key);
        Problem {
            file: file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }
}

/// Whether `text` reads as a key path of `serde_yaml`'s (`listeners[0].health_check`).
fn is_path(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.[]?".contains(c))
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant"), the
/// closest expected name when it is close: at most a third of the name's length in edits
/// (rustc's rule for its own suggestions). An unknown field's key becomes its own path.
fn suggest(key: String, message: String) -> (String, String) {
    let (kind, rest) = match message.split_once(' ') {
        Some(("unknown", rest)) => match rest.split_once(' ') {
            Some((kind @ ("field" | "variant"), rest)) => (kind, rest),
            _ => return (key, message),
        },
        _ => return (key, message),
    };
    let mut ticks = rest.split('`').skip(1).step_by(2);
    let Some(typed) = ticks.next() else {
        return (key, message);
    };
    let key = match (kind, key.is_empty()) {
        ("field", true) => typed.to_string(),
        ("field", false) => format!("{key}.{typed}"),
        _ => key,
    };
    let best = ticks
        .map(|c| (distance(typed, c), c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= typed.chars().count().max(3) / 3);
    match best {
        // The list of every expected name is noise once one is suggested.
        Some((_, c)) => (
            key,
            format!("unknown {kind} `{typed}`: did you mean `{c}`?"),
        ),
        None => (key, message),
    }
}

/// Edit distance between `a` and `b`, in characters: insertions, deletions, substitutions and
/// swaps of two neighbours (`tpc` for `tcp`), each one edit (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (previous[j - 1] + cost)
                .min(previous[j] + 1)
                .min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, row);
    }
    previous[b.len()]
}

/// One step of a key path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<'k> {
    /// A map's key.
    Key(&'k str),
    /// A sequence's entry, from 0.
    Index(usize),
}

/// `listeners[0].tls.certificates[1].cert` as steps; `None` for text that is not a key path.
pub(crate) fn steps(key: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, mut indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(Step::Key(name));
        }
        while let Some(rest) = indices.strip_prefix('[') {
            let (n, tail) = rest.split_once(']')?;
            out.push(Step::Index(n.parse().ok()?));
            indices = tail;
        }
        if !indices.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// Line and column (from 1) of the node at `key` in `text`, or of the deepest node on the way
/// there that exists (the map a missing key belongs in); `(1, 1)` when nothing is found.
pub(crate) fn locate(text: &str, key: &str) -> (usize, usize) {
    let Some(path) = steps(key).filter(|p| !p.is_empty()) else {
        return (1, 1);
    };
    let nav = Nav {
        path: &path,
        then: Here,
    };
    match nav.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(never) => match never {},
        Err(e) => e
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1))),
    }
}

/// The entry at `path` of `text`, read on its own as `seed` reads it (the rest of the file
/// skipped), so its error carries its own key path, line and column.
///
/// # Errors
/// The seed's, or an error at the deepest node that exists when `path` does not.
pub(crate) fn read_entry<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    path: &[Step<'_>],
    seed: S,
) -> Result<S::Value, serde_yaml::Error> {
    Nav { path, then: seed }.deserialize(serde_yaml::Deserializer::from_str(text))
}

/// Walks down `path`, skipping every other node, and reads the node there with `then`.
struct Nav<'p, 'k, S> {
    path: &'p [Step<'k>],
    then: S,
}

/// Raised where a path ends or breaks off; only its position is read.
const HERE: &str = "here";

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nav<'_, '_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        if self.path.is_empty() {
            self.then.deserialize(d)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nav<'_, '_, S> {
    type Value = S::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map or a list")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<S::Value, A::Error> {
        let Some((Step::Key(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        while let Some(key) = map.next_key::<KeyText>()? {
            if key.0 == *want {
                let value = map.next_value_seed(Nav {
                    path: rest,
                    then: self.then,
                })?;
                // serde_yaml counts the entries a visitor leaves unread as an error.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(value);
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(de::Error::custom(HERE))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<S::Value, A::Error> {
        let Some((Step::Index(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom(HERE));
            }
        }
        let value = seq.next_element_seed(Nav {
            path: rest,
            then: self.then,
        })?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        value.ok_or_else(|| de::Error::custom(HERE))
    }
}

/// A map key as text, whatever scalar it is written as (`80:` is the key `80`).
struct KeyText(String);

impl<'de> serde::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<KeyText, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(KeyText(String::new()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeyText, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyText(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads nothing: every node it is given is an error, raised at that node.
struct Here;

/// What [`Here`] never produces.
enum Never {}

impl<'de> DeserializeSeed<'de> for Here {
    type Value = Never;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Never, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for Here {
    type Value = Never;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(HERE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
workers: 2
listeners:
  - name: a
    bind: ':1'
  - {name: b, bind: ':2', target_group: g}
target_groups:
  - name: g
    targets:
      - address: 127.0.0.1:1
";

    #[test]
    fn key_paths_are_found_in_the_text() {
        assert_eq!(locate(TEXT, "workers"), (1, 10));
        assert_eq!(locate(TEXT, "listeners[0]"), (3, 5));
        assert_eq!(locate(TEXT, "listeners[0].bind"), (4, 11));
        assert_eq!(locate(TEXT, "listeners[1].target_group"), (5, 41));
        assert_eq!(locate(TEXT, "target_groups[0].targets[0].address"), (9, 18));
        // A key that is not there: the map it belongs in.
        assert_eq!(locate(TEXT, "listeners[0].target_group"), (3, 5));
        assert_eq!(locate(TEXT, "listeners[7]"), (3, 3));
        assert_eq!(locate(TEXT, "admin.bind"), (1, 1));
        assert_eq!(locate("", "listeners"), (1, 1));
        assert_eq!(locate("[broken", "listeners"), (1, 1));
        assert_eq!(locate(TEXT, "not a [path"), (1, 1));
    }

    #[test]
    fn steps_of_a_key_path() {
        assert_eq!(
            steps("a[1][2].b").unwrap(),
            [
                Step::Key("a"),
                Step::Index(1),
                Step::Index(2),
                Step::Key("b")
            ]
        );
        assert!(steps("a[x]").is_none());
        assert!(steps("a[1]b").is_none());
    }

    #[test]
    fn close_names_are_suggested_far_ones_not() {
        let s = |key: &str, m: &str| suggest(key.into(), m.into());
        let (key, m) = s(
            "target_groups[0]",
            "unknown field `healthcheck`, expected one of `name`, `health_check`, `targets`",
        );
        assert_eq!(key, "target_groups[0].healthcheck");
        assert_eq!(
            m,
            "unknown field `healthcheck`: did you mean `health_check`?"
        );
        let (_, m) = s(
            "",
            "unknown field `wrokers`, expected one of `workers`, `admin`",
        );
        assert!(m.ends_with("did you mean `workers`?"), "{m}");
        let (_, m) = s(
            "x",
            "unknown field `colour`, expected one of `name`, `bind`",
        );
        assert!(!m.contains("did you mean"), "{m}");
        let (key, m) = s(
            "x.protocol",
            "unknown variant `tpc`, expected one of `tcp`, `udp`",
        );
        assert_eq!(key, "x.protocol");
        assert!(m.ends_with("did you mean `tcp`?"), "{m}");
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("tpc", "tcp"), 1);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("", "ab"), 2);
    }
}
