//! The span-aware TOML walker: every value is read with its file, line and dotted key at hand, so
//! every error can name them.
//!
//! Loading is two passes: `toml` parses the document into a span-carrying tree (`DeTable`), then
//! each section's [`Key`] table walks its part of that tree key by key. Walking by hand rather
//! than through `serde` derives is deliberate: serde's errors carry a span but not the key path
//! (`timeouts.idle`), and the key is what the operator searches the file for.

use std::ops::{Bound, Range, RangeBounds};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

/// The text being parsed and the name to report it under.
pub(super) struct Source<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn error(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(
            Some(self.file),
            Some(self.line_of(span.start)),
            Some(key),
            message,
        )
    }

    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| self.line_of(s.start));
        let mut message = format!("invalid TOML: {}", e.message());
        // For "duplicate key" the span is the key itself; quote it so the line is easy to read.
        if let Some(quoted) = e
            .span()
            .and_then(|s| self.text.get(s))
            .filter(|s| !s.trim().is_empty() && s.len() <= 64)
        {
            if e.message().contains("duplicate") {
                message.push_str(&format!(" `{}`", quoted.trim()));
            }
        }
        ConfigError::new(Some(self.file), line, None, message)
    }
}

/// What reading one key does to the value being built.
pub(super) type Setter<T> = fn(&mut T, &Field<'_>) -> Result<(), ConfigError>;

/// One key a table accepts and how it is read.
///
/// A section's `&[Key<T>]` is the only list of its keys: reading, the "unknown key" check and
/// its "expected one of" hint all come from it, so adding a key is one line there.
pub(super) struct Key<T> {
    name: &'static str,
    required: bool,
    set: Setter<T>,
}

/// An optional key: left out, the value being built keeps its default.
pub(super) const fn key<T>(name: &'static str, set: Setter<T>) -> Key<T> {
    Key {
        name,
        required: false,
        set,
    }
}

/// A key that must be present; left out, the error points at the table's header line.
pub(super) const fn required<T>(name: &'static str, set: Setter<T>) -> Key<T> {
    Key {
        name,
        required: true,
        set,
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A TOML table and the dotted path it was found under (empty for the document root).
pub(super) struct Table<'a> {
    src: &'a Source<'a>,
    path: String,
    /// `None` for the document root, which has no header line.
    span: Option<Range<usize>>,
    entries: &'a DeTable<'a>,
}

impl<'a> Table<'a> {
    /// The document itself.
    pub(super) fn root(src: &'a Source<'a>, entries: &'a DeTable<'a>) -> Table<'a> {
        Table {
            src,
            path: String::new(),
            span: None,
            entries,
        }
    }

    /// Rejects any key not in `keys`, then reads the keys present into `target` in the order of
    /// `keys` (so a key may rely on one listed before it).
    pub(super) fn read<T>(&self, target: &mut T, keys: &[Key<T>]) -> Result<(), ConfigError> {
        self.check_known(keys)?;
        for k in keys {
            match self.get(k.name) {
                Some(field) => (k.set)(target, &field)?,
                None if k.required => return Err(self.missing(k.name, "missing required key")),
                None => {}
            }
        }
        Ok(())
    }

    fn check_known<T>(&self, keys: &[Key<T>]) -> Result<(), ConfigError> {
        // The map is sorted by key, not by position: report the first unknown key in file order.
        let unknown = self
            .entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !keys.iter().any(|known| *k.get_ref() == *known.name))
            .min_by_key(|k| k.span().start);
        let Some(k) = unknown else {
            return Ok(());
        };
        let key = join_key(&self.path, k.get_ref());
        let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
        let message = format!(
            "unknown key `{key}` (expected one of: {})",
            names.join(", ")
        );
        Err(self.src.error(&k.span(), &key, message).key_quoted())
    }

    pub(super) fn get(&self, key: &str) -> Option<Field<'a>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, value)| Field {
                src: self.src,
                key: join_key(&self.path, key),
                value,
            })
    }

    pub(super) fn require(&self, key: &str) -> Result<Field<'a>, ConfigError> {
        self.get(key)
            .ok_or_else(|| self.missing(key, "missing required key"))
    }

    /// An error about `key` of this table that has no value to point at (the key is missing, or
    /// its absence clashes with another key): reported at the table's header line, or with no
    /// line for the document root.
    pub(super) fn missing(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.span.as_ref().map(|s| self.src.line_of(s.start));
        ConfigError::new(
            Some(self.src.file),
            line,
            Some(&join_key(&self.path, key)),
            message,
        )
    }
}

/// One value and the dotted key it was found under.
pub(super) struct Field<'a> {
    src: &'a Source<'a>,
    key: String,
    value: &'a Spanned<DeValue<'a>>,
}

impl<'a> Field<'a> {
    pub(super) fn error(&self, message: impl Into<String>) -> ConfigError {
        self.src.error(&self.value.span(), &self.key, message)
    }

    pub(super) fn type_error(&self, expected: &str) -> ConfigError {
        let found = match self.value.get_ref() {
            DeValue::String(s) => format!("string {s:?}"),
            DeValue::Integer(i) => format!("integer {i}"),
            DeValue::Boolean(b) => format!("boolean {b}"),
            other => other.type_str().to_owned(),
        };
        self.error(format!("expected {expected}, found {found}"))
    }

    /// The value as parsed, for readers that accept more than one TOML type.
    pub(super) fn value(&self) -> &'a DeValue<'a> {
        self.value.get_ref()
    }

    /// 1-based line of the value.
    pub(super) fn line(&self) -> usize {
        self.src.line_of(self.value.span().start)
    }

    pub(super) fn str(&self) -> Result<&'a str, ConfigError> {
        match self.value.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.type_error("a string")),
        }
    }

    pub(super) fn bool(&self) -> Result<bool, ConfigError> {
        match self.value.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.type_error("true or false")),
        }
    }

    /// The elements of an array, each reported under the array's key.
    pub(super) fn items(&self, expected: &str) -> Result<Vec<Field<'a>>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Array(a) => Ok(a
                .iter()
                .map(|value| Field {
                    src: self.src,
                    key: self.key.clone(),
                    value,
                })
                .collect()),
            _ => Err(self.type_error(expected)),
        }
    }

    /// The value as a table whose path is this field's key.
    pub(super) fn table(&self) -> Result<Table<'a>, ConfigError> {
        match self.value.get_ref() {
            DeValue::Table(entries) => Ok(Table {
                src: self.src,
                path: self.key.clone(),
                span: Some(self.value.span()),
                entries,
            }),
            _ => Err(self.type_error("a table")),
        }
    }

    /// A section such as `[timeouts]`, read into `target`.
    pub(super) fn section<T>(&self, target: &mut T, keys: &[Key<T>]) -> Result<(), ConfigError> {
        self.table()?.read(target, keys)
    }

    /// Reads this key into `part`, the part of the value an earlier key of the table turns on
    /// (such as `[route.health]`'s check after `kind`); while it is off (`None`), an error
    /// saying what to add (`needs`).
    pub(super) fn read_into<T>(
        &self,
        part: Option<&mut T>,
        set: Setter<T>,
        needs: &str,
    ) -> Result<(), ConfigError> {
        match part {
            Some(p) => set(p, self),
            None => Err(self.error(needs)),
        }
    }

    pub(super) fn int(&self) -> Result<i128, ConfigError> {
        match self.value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.error(format!("integer {i} is out of range"))),
            _ => Err(self.type_error("an integer")),
        }
    }

    /// A non-negative integer in `range`; an open end means "as large as `usize` holds".
    pub(super) fn uint_in<T: TryFrom<u64>>(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<T, ConfigError> {
        let n = self.int()?;
        check_range(n, range).map_err(|m| self.error(m))?;
        // In range, so it fits u64; the target type may still be narrower (usize on 32-bit).
        u64::try_from(n)
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| self.error(format!("{n} is too large")))
    }
}

/// `n` in `range`; an open end is `usize::MAX`, what the largest target type holds.
pub(super) fn check_range(n: i128, range: impl RangeBounds<u64>) -> Result<(), String> {
    let min = match range.start_bound() {
        Bound::Included(&min) => min,
        Bound::Excluded(&min) => min.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let max = match range.end_bound() {
        Bound::Included(&max) => Some(max),
        Bound::Excluded(&max) => Some(max.saturating_sub(1)),
        Bound::Unbounded => None,
    };
    let in_range = |max: u64| n >= i128::from(min) && n <= i128::from(max);
    match max {
        Some(max) if in_range(max) => Ok(()),
        Some(max) => Err(format!("must be between {min} and {max}, got {n}")),
        None if in_range(usize::MAX as u64) => Ok(()),
        None => Err(format!("must be at least {min}, got {n}")),
    }
}
