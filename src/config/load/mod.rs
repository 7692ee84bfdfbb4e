//! Loading: the main file and the files it includes, read with `${VAR}` substituted, merged,
//! then checked as a whole; every error of every file reported at once, each where it is.
//!
//! A file is read in one pass when it is right. When it is not, it is read again piece by
//! piece ([`problem::read_entry`]): its top-level keys without the lists, then each listener and
//! each target group on its own, so one bad entry does not hide the next (within one entry, the
//! first error is reported). Files with such errors stop the load before the whole-file checks,
//! whose every finding (missing group, duplicate name, …) is then placed in the file and at the
//! line that holds its key, duplicates naming where the first one is.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IgnoredAny};

use super::file::env::{process_env, Expand, Lookup};
use super::file::include;
use super::file::{FileConfig, FileIncluded, FileListener, FileTargetGroup};
use super::problem::{self, Problem, Step};
use super::{validate, Config, ConfigError};

/// Largest file read (main or included): a configuration is kilobytes; this refuses a wrong
/// path (a log, a device) before it fills memory.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads, parses and validates the file at `path`, with the files it includes and the process
/// environment's variables.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Problems`] listing
/// everything wrong in it and in the files it includes.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_with(path, &text, &process_env)
}

/// Parses and validates `text` as the file at `path` (its includes read from disk), with the
/// process environment's variables.
///
/// ```
/// use std::path::Path;
/// let yaml = "
/// listeners:
///   - {name: web, protocol: tcp, bind: '127.0.0.1:8080', target_group: web}
/// target_groups:
///   - name: web
///     targets: [{address: '127.0.0.1:9000'}]
/// ";
/// let config = ballast::config::parse(Path::new("web.yaml"), yaml).unwrap();
/// assert_eq!(config.listeners[0].retries, 2);
///
/// let err = ballast::config::parse(Path::new("web.yaml"), &yaml.replace("9000", "0")).unwrap_err();
/// assert!(err.to_string().contains("web.yaml:6:25: target_groups[0].targets[0].address"));
/// ```
///
/// # Errors
/// As [`load`], less [`ConfigError::Read`] for `path` itself.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path, text, &process_env)
}

/// The text of `path`, at most [`MAX_FILE_BYTES`].
fn read(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB: not a configuration file",
            MAX_FILE_BYTES >> 20
        )));
    }
    Ok(text)
}

/// A file read, kept to place the whole-file checks' findings.
struct Source {
    path: PathBuf,
    text: String,
}

/// Where each merged entry came from: (index into the sources, index in that file).
#[derive(Default)]
struct Origins {
    listeners: Vec<(usize, usize)>,
    target_groups: Vec<(usize, usize)>,
}

/// [`parse`] with variables looked up in `env`.
pub(crate) fn parse_with(path: &Path, text: &str, env: Lookup) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let Some(mut raw) = read_file::<FileConfig>(path, text, env, &mut problems) else {
        return Err(ConfigError::Problems(problems));
    };
    let mut origins = Origins {
        listeners: (0..raw.listeners.len()).map(|j| (0, j)).collect(),
        target_groups: (0..raw.target_groups.len()).map(|j| (0, j)).collect(),
    };
    let mut sources = vec![Source {
        path: path.to_path_buf(),
        text: text.to_string(),
    }];
    let mut included = Vec::new();
    let patterns = raw.include.take().unwrap_or_default();
    let files = include::resolve(path, &patterns).unwrap_or_else(|wrong| {
        for (i, message) in wrong {
            problems.push(Problem::at(path, text, &format!("include[{i}]"), message));
        }
        Vec::new()
    });
    for (i, file) in files {
        let text = match read(&file) {
            Ok(text) => text,
            Err(e) => {
                let message = format!("cannot read {}: {e}", file.display());
                problems.push(Problem::at(path, text, &format!("include[{i}]"), message));
                continue;
            }
        };
        if let Some(part) = read_file::<FileIncluded>(&file, &text, env, &mut problems) {
            let at = sources.len();
            let count = |n: usize| (0..n).map(move |j| (at, j));
            origins.listeners.extend(count(part.listeners.len()));
            origins
                .target_groups
                .extend(count(part.target_groups.len()));
            raw.listeners.extend(part.listeners);
            raw.target_groups.extend(part.target_groups);
        }
        included.push(file.clone());
        sources.push(Source { path: file, text });
    }
    if !problems.is_empty() {
        return Err(ConfigError::Problems(problems));
    }
    match validate(path, raw) {
        Ok(mut config) => {
            config.included = included;
            Ok(config)
        }
        Err(wrong) => Err(ConfigError::Problems(
            wrong
                .into_iter()
                .map(|(key, message)| place(&sources, &origins, &key, &message))
                .collect(),
        )),
    }
}

/// A finding of the whole-file checks at merged `key`, placed in the file that holds it; a
/// "first at KEY" in the message becomes that key's place.
fn place(sources: &[Source], origins: &Origins, key: &str, message: &str) -> Problem {
    let (source, local) = local_key(origins, key);
    let message = match message.split_once("first at ") {
        Some((before, first)) => {
            let (first_source, first_key) = local_key(origins, first);
            let s = &sources[first_source];
            let (line, column) = problem::locate(&s.text, &first_key);
            format!("{before}first at {}:{line}:{column}", s.path.display())
        }
        None => message.to_string(),
    };
    let s = &sources[source];
    Problem::at(&s.path, &s.text, &local, message)
}

/// The source and the key in it of merged `key` (`listeners[5].bind` may be
/// `listeners[1].bind` of the second included file).
fn local_key(origins: &Origins, key: &str) -> (usize, String) {
    for (list, table) in [
        ("listeners", &origins.listeners),
        ("target_groups", &origins.target_groups),
    ] {
        let Some(rest) = key.strip_prefix(list).and_then(|r| r.strip_prefix('[')) else {
            continue;
        };
        let Some((n, tail)) = rest.split_once(']') else {
            continue;
        };
        if let Some(&(source, j)) = n.parse::<usize>().ok().and_then(|n| table.get(n)) {
            return (source, format!("{list}[{j}]{tail}"));
        }
    }
    (0, key.to_string())
}

/// A kind of file: the main one or an included one, each with its two lists.
trait Kind: DeserializeOwned {
    /// The same file with the lists' entries skipped.
    type Shape: DeserializeOwned;
    /// Whether this is an included file.
    const INCLUDED: bool;
}

impl Kind for FileConfig {
    type Shape = FileConfig<IgnoredAny, IgnoredAny>;
    const INCLUDED: bool = false;
}

impl Kind for FileIncluded {
    type Shape = FileIncluded<IgnoredAny, IgnoredAny>;
    const INCLUDED: bool = true;
}

/// The file `path` holding `text`, read as `K` with variables substituted; `None` after
/// pushing every problem found to `problems`.
fn read_file<K: Kind>(
    path: &Path,
    text: &str,
    env: Lookup,
    problems: &mut Vec<Problem>,
) -> Option<K> {
    let before = problems.len();
    let tree: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(tree) => tree,
        Err(e) => {
            problems.push(Problem::from_yaml(path, &e));
            return None;
        }
    };
    if K::INCLUDED && tree.get("include").is_some() {
        problems.push(Problem::at(
            path,
            text,
            "include",
            "includes do not nest: only the main file may have `include`".into(),
        ));
    }
    let text = match tree {
        // An empty file (or only comments): an included one adds nothing.
        serde_yaml::Value::Null if K::INCLUDED => "{}",
        serde_yaml::Value::Null => {
            problems.push(Problem::at(
                path,
                text,
                "",
                "the file is empty: it needs `listeners` and `target_groups`".into(),
            ));
            return None;
        }
        _ => text,
    };
    let whole = K::deserialize(Expand {
        inner: serde_yaml::Deserializer::from_str(text),
        env,
    });
    match whole {
        Ok(file) if problems.len() == before => return Some(file),
        Ok(_) => return None,
        Err(e) => {
            let shape = <K::Shape as serde::Deserialize>::deserialize(Expand {
                inner: serde_yaml::Deserializer::from_str(text),
                env,
            });
            if let Err(e) = shape {
                let p = Problem::from_yaml(path, &e);
                // Already said: includes do not nest.
                if !(K::INCLUDED && p.key == "include") {
                    problems.push(included_hint::<K>(p));
                }
            }
            let tree: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
            entries::<FileListener>(path, text, &tree, "listeners", env, problems);
            entries::<FileTargetGroup>(path, text, &tree, "target_groups", env, problems);
            if problems.len() == before {
                problems.push(Problem::from_yaml(path, &e));
            }
        }
    }
    None
}

/// An included file's unknown key says what such a file holds.
fn included_hint<K: Kind>(mut p: Problem) -> Problem {
    if K::INCLUDED && p.message.starts_with("unknown field") && !p.key.contains('.') {
        p.message
            .push_str(" (an included file holds only listeners and target groups)");
    }
    p
}

/// Every entry of the list `list` read on its own as `T`, each one's error pushed.
fn entries<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    tree: &serde_yaml::Value,
    list: &str,
    env: Lookup,
    problems: &mut Vec<Problem>,
) {
    let count = tree
        .get(list)
        .and_then(serde_yaml::Value::as_sequence)
        .map_or(0, Vec::len);
    for i in 0..count {
        let seed = Entry::<T> {
            env,
            kind: PhantomData,
        };
        if let Err(e) = problem::read_entry(text, &[Step::Key(list), Step::Index(i)], seed) {
            problems.push(Problem::from_yaml(path, &e));
        }
    }
}

/// Reads one `T` with variables substituted.
struct Entry<'a, T> {
    env: Lookup<'a>,
    kind: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> serde::de::DeserializeSeed<'de> for Entry<'_, T> {
    type Value = T;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Expand {
            inner: d,
            env: self.env,
        })
    }
}

#[cfg(test)]
mod tests;
