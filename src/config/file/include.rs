//! `include:`: the files the main file names, found on disk.
//!
//! Each entry is a path or a glob relative to the main file's directory (absolute paths too).
//! A glob has `*` (any run of characters) or `?` (one character) in its file name only, not in
//! its directories: `conf.d/*.yaml`. Its files are taken in name order (bytes, as `ls` in the C
//! locale); hidden files (`.name`) only when the glob itself starts with `.`; only regular files
//! (or links to them), so an editor's directory or a socket beside them is skipped. A glob that
//! matches nothing is fine (an empty `conf.d/`), but its directory must exist, so a typo in it
//! is not silently an empty list. A named file must exist and be a regular file.
//!
//! A file matched twice is read once, where first named; the main file is never read again
//! (a glob beside it skips it, naming it is an error). Included files cannot include: there is
//! one level, so no cycle can form.

use std::path::{Path, PathBuf};

/// Most files `include:` may bring in, all entries together: a glob over a huge directory is
/// refused with its key instead of reading every file (a conf.d holds tens of files).
pub(crate) const MAX_INCLUDED_FILES: usize = 1000;

/// An included file and the index of the `include:` entry that named it first.
pub(crate) type Included = (usize, PathBuf);

/// The files `patterns` name, each with the index of the entry that named it first, in order.
///
/// # Errors
/// `(entry index, message)` for every entry that names a missing file, a directory, a glob
/// whose directory cannot be read or that has a wildcard outside the file name, or that would
/// pass [`MAX_INCLUDED_FILES`].
pub(crate) fn resolve(
    main: &Path,
    patterns: &[String],
) -> Result<Vec<Included>, Vec<(usize, String)>> {
    let base = main.parent().unwrap_or(Path::new(""));
    let main_real = std::fs::canonicalize(main).ok();
    let mut found: Vec<Included> = Vec::new();
    let mut seen = Vec::new();
    let mut wrong = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let files = match files(base, pattern) {
            Ok(files) => files,
            Err(m) => {
                wrong.push((i, m));
                continue;
            }
        };
        let glob = has_wildcard(pattern);
        for file in files {
            let real = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if main_real.as_ref() == Some(&real) {
                if !glob {
                    wrong.push((i, format!("{pattern} is the main file itself")));
                }
                continue;
            }
            if seen.contains(&real) {
                continue;
            }
            if found.len() == MAX_INCLUDED_FILES {
                wrong.push((
                    i,
                    format!("more than {MAX_INCLUDED_FILES} files included; at `{pattern}`"),
                ));
                return Err(wrong);
            }
            seen.push(real);
            found.push((i, file));
        }
    }
    if wrong.is_empty() {
        Ok(found)
    } else {
        Err(wrong)
    }
}

fn has_wildcard(text: &str) -> bool {
    text.contains(['*', '?'])
}

/// The files one entry names, sorted when it is a glob.
fn files(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    if pattern.trim().is_empty() {
        return Err("an empty path: name a file or a glob such as conf.d/*.yaml".into());
    }
    let path = base.join(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !has_wildcard(pattern) {
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(vec![path]),
            Ok(m) if m.is_dir() => Err(format!(
                "{} is a directory: include its files with a glob, e.g. {}/*.yaml",
                path.display(),
                pattern.trim_end_matches('/')
            )),
            Ok(_) => Err(format!("{} is not a regular file", path.display())),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    if !has_wildcard(name) || has_wildcard(&dir.to_string_lossy()) {
        return Err(format!(
            "`{pattern}`: `*` and `?` go in the file name only, e.g. conf.d/*.yaml"
        ));
    }
    let entries = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        let Some(file) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if file.starts_with('.') && !name.starts_with('.') {
            continue;
        }
        let full = dir.join(&file);
        if matches(name, &file) && std::fs::metadata(&full).is_ok_and(|m| m.is_file()) {
            names.push(file);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Whether `name` matches `glob` (`*`: any run of characters, `?`: one): the classic greedy
/// match that backtracks to the last `*`, linear in practice.
fn matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (glob.chars().collect(), name.chars().collect());
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match g.get(gi) {
            Some('*') => {
                star = Some((gi, ni));
                gi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                gi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    gi = sg + 1;
                    ni = sn + 1;
                    star = Some((sg, sn + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(matches("*.yaml", "a.yaml"));
        assert!(matches("*.yaml", ".yaml"));
        assert!(!matches("*.yaml", "a.yml"));
        assert!(matches("1?-*.y*ml", "10-pg.yaml"));
        assert!(!matches("?", ""));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
    }

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), "").unwrap();
    }

    #[test]
    fn entries_resolve_in_name_order_and_bad_ones_name_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("ballast.yaml");
        touch(dir.path(), "ballast.yaml");
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::create_dir(dir.path().join("conf.d/sub.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        for name in ["b.yaml", "a.yaml", ".hidden.yaml", "c.txt"] {
            touch(&dir.path().join("conf.d"), name);
        }
        let patterns = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = resolve(
            &main,
            &patterns(&["conf.d/*.yaml", "empty/*.yaml", "conf.d/a.yaml", "*.yaml"]),
        )
        .unwrap();
        let names: Vec<_> = got
            .iter()
            .map(|(i, p)| {
                (
                    *i,
                    p.strip_prefix(dir.path()).unwrap().display().to_string(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                (0, "conf.d/a.yaml".into()),
                (0, "conf.d/b.yaml".to_string())
            ]
        );
        assert!(resolve(&main, &[]).unwrap().is_empty());
        let wrong = resolve(
            &main,
            &patterns(&[
                "missing.yaml",
                "conf.d",
                "nodir/*.yaml",
                "*/a.yaml",
                "",
                "ballast.yaml",
            ]),
        )
        .unwrap_err();
        let indices: Vec<_> = wrong.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, [0, 1, 2, 3, 4, 5], "{wrong:?}");
        assert!(wrong[0].1.contains("missing.yaml"), "{wrong:?}");
        assert!(wrong[1].1.contains("is a directory"), "{wrong:?}");
        assert!(wrong[2].1.contains("cannot read directory"), "{wrong:?}");
        assert!(wrong[3].1.contains("file name only"), "{wrong:?}");
        assert!(wrong[5].1.contains("main file"), "{wrong:?}");
    }

    #[test]
    fn a_huge_glob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..=MAX_INCLUDED_FILES {
            touch(dir.path(), &format!("{i}.yaml"));
        }
        let wrong = resolve(&dir.path().join("main.yml"), &["*.yaml".into()]).unwrap_err();
        assert!(wrong[0].1.contains("more than 1000"), "{wrong:?}");
    }
}
