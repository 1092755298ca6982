//! Apache httpd's configuration grammar: one directive a line (a `\` at the end continues it),
//! `#` comment lines, arguments bare or in single or double quotes, `<Section args>` ...
//! `</Section>` blocks; `Include` and `IncludeOptional` spliced in where they stand. Errors name
//! the file and line, in httpd's words.

use std::path::Path;
use std::rc::Rc;

use super::{include_paths, read_file, ImportError, Loc};

/// A directive, or a section with the directives inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// As written (httpd compares names without case).
    pub name: String,
    pub args: Vec<String>,
    pub loc: Loc,
    /// `Some` for a `<Section>`.
    pub children: Option<Vec<Node>>,
}

impl Node {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// As written, for notes: `ProxyPass /notice ws://127.0.0.1:50001/`.
    pub fn text(&self) -> String {
        let mut s = if self.children.is_some() {
            format!("<{}", self.name)
        } else {
            self.name.clone()
        };
        super::push_args(&mut s, &self.args, |a| a.contains(char::is_whitespace));
        if self.children.is_some() {
            s.push('>');
        }
        s
    }
}

/// Parses `path` and everything it includes.
pub(crate) fn parse_file(path: &Path) -> Result<Vec<Node>, ImportError> {
    parse_at(path, None, 0)
}

fn parse_at(path: &Path, from: Option<&Loc>, depth: usize) -> Result<Vec<Node>, ImportError> {
    let text = read_file(path, from)?;
    let file: Rc<str> = Rc::from(path.display().to_string());
    expand(parse_str(&text, &file)?, path, depth)
}

/// One logical line: its first physical line and its text, continuations joined.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                joined.push_str(head);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(line);
                out.push((start, joined));
            }
        }
    }
    if let Some(last) = pending {
        out.push(last);
    }
    out
}

/// Parses one file's text; `Include` is left as a directive.
pub(crate) fn parse_str(text: &str, file: &Rc<str>) -> Result<Vec<Node>, ImportError> {
    let at = |line| Loc {
        file: file.clone(),
        line,
    };
    // Open sections: (name, args, line, children so far); the bottom one is the file.
    let mut stack: Vec<(String, Vec<String>, usize, Vec<Node>)> =
        vec![(String::new(), Vec::new(), 0, Vec::new())];
    for (line, text) in logical_lines(text) {
        let body = text.trim();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(rest) = body.strip_prefix("</") {
            let name = rest.trim_end_matches('>').trim();
            if stack.len() < 2 {
                return Err(ImportError::at(
                    &at(line),
                    format!("</{name}> without matching <{name}> section"),
                ));
            }
            let Some((open, args, open_line, children)) = stack.pop() else {
                continue;
            };
            if !open.eq_ignore_ascii_case(name) {
                return Err(ImportError::at(
                    &at(line),
                    format!("expected </{open}> (opened on line {open_line}) but saw </{name}>"),
                ));
            }
            let node = Node {
                name: open,
                args,
                loc: at(open_line),
                children: Some(children),
            };
            if let Some(parent) = stack.last_mut() {
                parent.3.push(node);
            }
            continue;
        }
        if let Some(rest) = body.strip_prefix('<') {
            let name_len = rest
                .find(|c: char| c.is_whitespace() || c == '>')
                .unwrap_or(rest.len());
            let name = &rest[..name_len];
            let Some(close) = rest.rfind('>') else {
                return Err(ImportError::at(
                    &at(line),
                    format!("<{name}> directive missing closing '>'"),
                ));
            };
            if name.is_empty() {
                return Err(ImportError::at(
                    &at(line),
                    "a section needs a name: <Name args>",
                ));
            }
            let args = words(&rest[name_len..close.max(name_len)]);
            stack.push((name.to_owned(), args, line, Vec::new()));
            continue;
        }
        let mut all = words(body);
        let name = all.remove(0);
        if let Some(parent) = stack.last_mut() {
            parent.3.push(Node {
                name,
                args: all,
                loc: at(line),
                children: None,
            });
        }
    }
    if stack.len() > 1 {
        let (name, _, line, _) = &stack[stack.len() - 1];
        return Err(ImportError::at(
            &at(*line),
            format!("<{name}> was not closed"),
        ));
    }
    Ok(stack.pop().map(|s| s.3).unwrap_or_default())
}

/// httpd's `ap_getword_conf`: words split on white space; a word in `"` or `'` keeps its
/// spaces, `\` before the quote character escapes it.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return out;
        };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&first) {
                    word.push(first);
                    chars.next();
                } else if c == first {
                    break;
                } else {
                    word.push(c);
                }
            }
        } else {
            word.push(first);
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        out.push(word);
    }
}

/// Replaces each `Include` / `IncludeOptional` with the directives of the files it names.
fn expand(tree: Vec<Node>, path: &Path, depth: usize) -> Result<Vec<Node>, ImportError> {
    let mut out = Vec::with_capacity(tree.len());
    for mut n in tree {
        let optional = n.is("IncludeOptional");
        if (optional || n.is("Include")) && n.children.is_none() {
            let [pattern] = &n.args[..] else {
                return Err(ImportError::at(
                    &n.loc,
                    format!(
                        "{} takes one argument, a file or a wildcard pattern",
                        n.name
                    ),
                ));
            };
            let files = match include_paths(&n.loc, path, pattern, depth) {
                Ok(files) => files,
                Err(_) if optional && !pattern.contains(['*', '?', '[']) => Vec::new(),
                Err(e) => return Err(e),
            };
            for file in files {
                out.extend(parse_at(&file, Some(&n.loc), depth + 1)?);
            }
            continue;
        }
        if let Some(inner) = n.children.take() {
            n.children = Some(expand(inner, path, depth)?);
        }
        out.push(n);
    }
    Ok(out)
}
