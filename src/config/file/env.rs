//! `${VAR}` in the file: environment variables substituted into scalar values.
//!
//! The syntax, as a shell or docker-compose reads it, less what is risky in a config file:
//! - `${NAME}`: the variable's value; unset is an error naming the variable (with the file,
//!   line and column, which `serde_yaml` attaches to the scalar); set but empty gives `""`.
//! - `${NAME:-default}`: `default` when the variable is unset or empty (the default is taken
//!   as written, up to the first `}`; it is not substituted again).
//! - `$$`: one literal `$`. Any other `$` (`pa$word`, `$HOME`) is kept as written: only `${`
//!   starts a substitution.
//!
//! Substitution happens on scalar *values* as the deserializer hands them over ([`Expand`]
//! wraps `serde_yaml`'s deserializer), never on the text and never on keys: a value holding a
//! newline, `: `, `- ` or `{` stays one string and cannot add keys or entries, and a value is
//! never substituted twice. The substituted text is then read as its key expects: a number for
//! `workers: ${WORKERS}`, `true`/`false` for a flag, the text itself for everything else.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// Where variables are looked up: the process environment in production, a table in tests.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment (a value that is not UTF-8 counts as unset).
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `text` with every `${NAME}`, `${NAME:-default}` and `$$` replaced.
///
/// # Errors
/// A message naming the variable that is unset (and has no default), or the malformed
/// reference (`${` without `}`, a name that is not `[A-Za-z_][A-Za-z0-9_]*`).
pub(crate) fn expand(text: &str, env: Lookup) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err(format!(
                    "`${{` without a closing `}}` in `{text}` (write `$$` for a literal `$`)"
                ));
            };
            let reference = &inner[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if !is_name(name) {
                return Err(format!(
                    "`${{{reference}}}` is not a variable: write ${{NAME}} or ${{NAME:-default}}, \
                     NAME of letters, digits and `_` (`$$` for a literal `$`)"
                ));
            }
            match (env(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write ${{{name}:-default}} \
                         for a default)"
                    ))
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A shell variable name: a letter or `_`, then letters, digits and `_`.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What the type being read asked for: the substituted text is offered in that form.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Text (strings, names, enum variants).
    Text,
    /// An integer or float.
    Number,
    /// `true` or `false`.
    Flag,
    /// Whatever the value is (durations, payloads, TLS versions): an integer if it reads as
    /// one, as YAML would, else the text.
    Any,
}

/// A deserializer that substitutes variables in every scalar value it hands over (keys are
/// left as written), wrapping another (`serde_yaml`'s) so errors keep its line and column.
pub(crate) struct Expand<'a, D> {
    /// The wrapped deserializer.
    pub(crate) inner: D,
    /// Where variables are looked up.
    pub(crate) env: Lookup<'a>,
}

impl<'a, D> Expand<'a, D> {
    fn visitor<V>(&self, visitor: V, want: Want) -> ExpandVisitor<'a, V> {
        ExpandVisitor {
            inner: visitor,
            env: self.env,
            want,
        }
    }
}

macro_rules! forward {
    ($($method:ident => $how:ident, $want:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.visitor(visitor, Want::$want);
            self.inner.$how(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Expand<'_, D> {
    type Error = D::Error;

    // Numbers and flags are read through `deserialize_any`: serde_yaml refuses a plain
    // `${WORKERS}` for a number before any visitor sees it.
    forward! {
        deserialize_any => deserialize_any, Any;
        deserialize_bool => deserialize_any, Flag;
        deserialize_i8 => deserialize_any, Number;
        deserialize_i16 => deserialize_any, Number;
        deserialize_i32 => deserialize_any, Number;
        deserialize_i64 => deserialize_any, Number;
        deserialize_i128 => deserialize_any, Number;
        deserialize_u8 => deserialize_any, Number;
        deserialize_u16 => deserialize_any, Number;
        deserialize_u32 => deserialize_any, Number;
        deserialize_u64 => deserialize_any, Number;
        deserialize_u128 => deserialize_any, Number;
        deserialize_f32 => deserialize_any, Number;
        deserialize_f64 => deserialize_any, Number;
        deserialize_char => deserialize_char, Text;
        deserialize_str => deserialize_str, Text;
        deserialize_string => deserialize_string, Text;
        deserialize_bytes => deserialize_bytes, Text;
        deserialize_byte_buf => deserialize_byte_buf, Text;
        deserialize_option => deserialize_option, Any;
        deserialize_unit => deserialize_unit, Any;
        deserialize_seq => deserialize_seq, Any;
        deserialize_map => deserialize_map, Any;
        deserialize_identifier => deserialize_identifier, Text;
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_ignored_any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Want::Any);
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Want::Any);
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Want::Any);
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Want::Any);
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Want::Any);
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, Want::Text);
        self.inner.deserialize_enum(name, variants, visitor)
    }
}

/// A seed whose value is read through [`Expand`].
struct ExpandSeed<'a, S> {
    inner: S,
    env: Lookup<'a>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ExpandSeed<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Expand {
            inner: d,
            env: self.env,
        })
    }
}

/// A visitor that substitutes in the strings it is given, then hands them to `inner` in the
/// form it [wants](Want); maps, sequences and enums are wrapped so their values are too.
struct ExpandVisitor<'a, V> {
    inner: V,
    env: Lookup<'a>,
    want: Want,
}

impl<'de, V: Visitor<'de>> ExpandVisitor<'_, V> {
    /// `written` (which holds a `$`) substituted, offered to `inner` as it wants it.
    fn substituted<E: de::Error>(self, written: &str) -> Result<V::Value, E> {
        let text = expand(written, self.env).map_err(E::custom)?;
        // The error names the reference, never the value: a variable may hold a secret, and
        // the message reaches logs and `POST /reload` answers.
        let value = text.clone();
        let context = |e: E| {
            let mut message = e.to_string();
            if !value.is_empty() && value != written {
                message = message.replace(&value, "<value not shown>");
            }
            E::custom(format!("{message} (after substituting `{written}`)"))
        };
        let inner = self.inner;
        match self.want {
            Want::Number | Want::Any => {
                if let Ok(n) = text.parse::<u64>() {
                    return inner.visit_u64(n).map_err(context);
                }
                if let Ok(n) = text.parse::<i64>() {
                    return inner.visit_i64(n).map_err(context);
                }
                let numeric = text
                    .chars()
                    .all(|c| c.is_ascii_digit() || "+-.eE".contains(c));
                if matches!(self.want, Want::Number) && numeric {
                    if let Ok(x) = text.parse::<f64>() {
                        return inner.visit_f64(x).map_err(context);
                    }
                }
                inner.visit_string(text).map_err(context)
            }
            Want::Flag => match text.as_str() {
                "true" => inner.visit_bool(true).map_err(context),
                "false" => inner.visit_bool(false).map_err(context),
                _ => inner.visit_string(text).map_err(context),
            },
            Want::Text => inner.visit_string(text).map_err(context),
        }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for ExpandVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<V::Value, E> {
        self.inner.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<V::Value, E> {
        self.inner.visit_i64(v)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<V::Value, E> {
        self.inner.visit_i128(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<V::Value, E> {
        self.inner.visit_u64(v)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<V::Value, E> {
        self.inner.visit_u128(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<V::Value, E> {
        self.inner.visit_f64(v)
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<V::Value, E> {
        self.inner.visit_char(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        if v.contains('$') {
            self.substituted(v)
        } else {
            self.inner.visit_str(v)
        }
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        if v.contains('$') {
            self.substituted(v)
        } else {
            self.inner.visit_borrowed_str(v)
        }
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        if v.contains('$') {
            self.substituted(&v)
        } else {
            self.inner.visit_string(v)
        }
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.inner.visit_bytes(v)
    }
    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Expand {
            inner: d,
            env: self.env,
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Expand {
            inner: d,
            env: self.env,
        })
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(ExpandAccess {
            inner: seq,
            env: self.env,
        })
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(ExpandAccess {
            inner: map,
            env: self.env,
        })
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(ExpandAccess {
            inner: data,
            env: self.env,
        })
    }
}

/// A sequence, map, enum or variant whose values are read through [`Expand`].
struct ExpandAccess<'a, A> {
    inner: A,
    env: Lookup<'a>,
}

impl<'a, A> ExpandAccess<'a, A> {
    fn seed<S>(&self, seed: S) -> ExpandSeed<'a, S> {
        ExpandSeed {
            inner: seed,
            env: self.env,
        }
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for ExpandAccess<'_, A> {
    type Error = A::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for ExpandAccess<'_, A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        // Keys are read as written: a variable never names a key.
        self.inner.next_key_seed(seed)
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for ExpandAccess<'a, A> {
    type Error = A::Error;
    type Variant = ExpandAccess<'a, A::Variant>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let env = self.env;
        let (value, variant) = self.inner.variant_seed(ExpandSeed { inner: seed, env })?;
        Ok((
            value,
            ExpandAccess {
                inner: variant,
                env,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for ExpandAccess<'_, A> {
    type Error = A::Error;
    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = ExpandVisitor {
            inner: visitor,
            env: self.env,
            want: Want::Any,
        };
        self.inner.tuple_variant(len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = ExpandVisitor {
            inner: visitor,
            env: self.env,
            want: Want::Any,
        };
        self.inner.struct_variant(fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("5432".into()),
            "EMPTY" => Some(String::new()),
            "EVIL" => Some("x\nlisteners: []\n- {a: b}: ${PORT}".into()),
            _ => None,
        }
    }

    #[test]
    fn references_defaults_and_escapes() {
        let env: Lookup = &table;
        assert_eq!(expand("db:${PORT}", env).unwrap(), "db:5432");
        assert_eq!(expand("${NOPE:-6432}", env).unwrap(), "6432");
        assert_eq!(expand("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(expand("${EMPTY}", env).unwrap(), "");
        assert_eq!(expand("${PORT:-1}", env).unwrap(), "5432");
        assert_eq!(expand("pa$$word ${NOPE:-}", env).unwrap(), "pa$word ");
        assert_eq!(expand("$HOME and $", env).unwrap(), "$HOME and $");
        // Not substituted twice.
        assert_eq!(expand("$${PORT}", env).unwrap(), "${PORT}");
    }

    #[test]
    fn unset_and_malformed_references_are_errors_naming_them() {
        let env: Lookup = &table;
        let e = expand("a${NOPE}b", env).unwrap_err();
        assert!(e.contains("`NOPE` is not set"), "{e}");
        assert!(expand("${PORT", env).unwrap_err().contains("closing"));
        assert!(expand("${}", env).unwrap_err().contains("not a variable"));
        assert!(expand("${1X}", env).unwrap_err().contains("not a variable"));
        assert!(expand("${A B}", env)
            .unwrap_err()
            .contains("not a variable"));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        workers: Option<std::num::NonZeroU32>,
        flag: Option<bool>,
        name: String,
        list: Vec<String>,
    }

    fn sample(yaml: &str) -> Result<Sample, serde_yaml::Error> {
        let env: Lookup = &table;
        serde::Deserialize::deserialize(Expand {
            inner: serde_yaml::Deserializer::from_str(yaml),
            env,
        })
    }

    #[test]
    fn values_take_the_form_their_key_wants_and_keys_stay_as_written() {
        let s =
            sample("workers: ${PORT}\nflag: ${X:-true}\nname: '${PORT}'\nlist: [a, '${NOPE:-b}']")
                .unwrap();
        assert_eq!(s.workers.unwrap().get(), 5432);
        assert_eq!(s.flag, Some(true));
        assert_eq!(s.name, "5432");
        assert_eq!(s.list, ["a", "b"]);
        let e = sample("${NAME:-name}: x\nlist: []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `${NAME:-name}`"), "{e}");
    }

    #[test]
    fn a_value_cannot_inject_structure() {
        let s = sample("name: ${EVIL}\nlist: []").unwrap();
        assert_eq!(s.name, "x\nlisteners: []\n- {a: b}: ${PORT}");
        assert!(s.list.is_empty());
    }

    #[test]
    fn an_unset_variable_is_reported_at_its_line_and_column() {
        let e = sample("name: ok\nlist:\n  - fine\n  - ${NOPE}\n").unwrap_err();
        let at = e.location().unwrap();
        assert_eq!((at.line(), at.column()), (4, 5), "{e}");
        assert!(e.to_string().contains("`NOPE` is not set"), "{e}");
        let e = sample("workers: ${EMPTY}\nname: a\nlist: []")
            .unwrap_err()
            .to_string();
        assert!(e.contains("after substituting `${EMPTY}`"), "{e}");
    }
}
