//! [`ConfigError`]: where a configuration is wrong and what is wrong with it.

/// A configuration error, formatted like `nginx -t`: `FILE:LINE: KEY: what is wrong`.
///
/// Parts that do not apply are left out: a missing required key has no line
/// (`wsplice.toml: listen: missing required key`), a TOML syntax error has no key, and errors in
/// command-line flags name the flag instead of a file (`--route: invalid value "/x": ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: Option<String>,
    line: Option<usize>,
    key: Option<String>,
    message: String,
    /// The message already quotes the key (`unknown key `x``), so Display does not repeat it.
    key_in_message: bool,
}

impl ConfigError {
    pub(super) fn new(
        file: Option<&str>,
        line: Option<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.map(str::to_owned),
            line,
            key: key.map(str::to_owned),
            message: message.into(),
            key_in_message: false,
        }
    }

    /// An error in a command-line flag: no file, no line.
    pub(super) fn flag(flag: &str, message: impl Into<String>) -> Self {
        ConfigError::new(None, None, Some(flag), message)
    }

    /// Marks the message as quoting the key already, so that Display does not repeat it.
    pub(super) fn key_quoted(mut self) -> Self {
        self.key_in_message = true;
        self
    }

    /// The file the error is in; `None` for command-line flags.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// 1-based line of the offending key or value; `None` when there is no such line (a missing
    /// top-level key, an unreadable file, a command-line flag).
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Dotted key path (`timeouts.idle`, `route.backends`) or flag (`--route`).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, _) => {}
        }
        match &self.key {
            Some(key) if !self.key_in_message => write!(f, "{key}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}
