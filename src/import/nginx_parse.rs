//! nginx's configuration grammar: words (bare, or in single or double quotes with backslash
//! escapes), `#` comments, `;` ending a directive and `{ }` around a block; `include` spliced in
//! where it stands. Errors name the file and line, in nginx's words where it has them.

use std::path::Path;
use std::rc::Rc;

use super::{include_paths, read_file, ImportError, Loc};

/// A directive: its name, its arguments (quotes and escapes resolved) and its block, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub loc: Loc,
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// As written, for notes: `proxy_set_header Upgrade $http_upgrade`.
    pub fn text(&self) -> String {
        let mut s = self.name.clone();
        super::push_args(&mut s, &self.args, |a| a.contains([' ', '\t', ';', '{']));
        if self.block.is_some() {
            s.push_str(" { ... }");
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Semi,
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Parses `path` and everything it includes.
pub(crate) fn parse_file(path: &Path) -> Result<Vec<Directive>, ImportError> {
    parse_at(path, None, 0)
}

fn parse_at(path: &Path, from: Option<&Loc>, depth: usize) -> Result<Vec<Directive>, ImportError> {
    let text = read_file(path, from)?;
    let file: Rc<str> = Rc::from(path.display().to_string());
    let tree = parse_str(&text, &file)?;
    expand(tree, path, depth)
}

/// Parses one file's text; `include` is left as a directive.
pub(crate) fn parse_str(text: &str, file: &Rc<str>) -> Result<Vec<Directive>, ImportError> {
    let tokens = tokenize(text, file)?;
    let mut pos = 0;
    let end_line = text.lines().count().max(1);
    block(&tokens, &mut pos, file, None, end_line)
}

/// Replaces each `include FILE;` with the directives of the files it names.
fn expand(tree: Vec<Directive>, path: &Path, depth: usize) -> Result<Vec<Directive>, ImportError> {
    let mut out = Vec::with_capacity(tree.len());
    for mut d in tree {
        if d.name == "include" && d.block.is_none() {
            let [pattern] = &d.args[..] else {
                return Err(ImportError::at(
                    &d.loc,
                    "invalid number of arguments in \"include\" directive",
                ));
            };
            for file in include_paths(&d.loc, path, pattern, depth)? {
                out.extend(parse_at(&file, Some(&d.loc), depth + 1)?);
            }
            continue;
        }
        if let Some(inner) = d.block.take() {
            d.block = Some(expand(inner, path, depth)?);
        }
        out.push(d);
    }
    Ok(out)
}

fn block(
    tokens: &[Token],
    pos: &mut usize,
    file: &Rc<str>,
    opened: Option<usize>,
    end_line: usize,
) -> Result<Vec<Directive>, ImportError> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut first_line = 0;
    let at = |line| Loc {
        file: file.clone(),
        line,
    };
    loop {
        let Some(t) = tokens.get(*pos) else {
            let why = match (words.is_empty(), opened) {
                (false, _) => "unexpected end of file, expecting \";\" or \"}\"".to_owned(),
                (true, Some(line)) => format!(
                    "unexpected end of file, expecting \"}}\" (the block opened on line {line} is not closed)"
                ),
                (true, None) => return Ok(out),
            };
            return Err(ImportError::at(&at(end_line), why));
        };
        *pos += 1;
        match &t.tok {
            Tok::Word(w) => {
                if words.is_empty() {
                    first_line = t.line;
                }
                words.push(w.clone());
            }
            Tok::Semi | Tok::Open if words.is_empty() => {
                let c = if t.tok == Tok::Semi { ";" } else { "{" };
                return Err(ImportError::at(&at(t.line), format!("unexpected \"{c}\"")));
            }
            Tok::Semi => {
                let name = words.remove(0);
                out.push(Directive {
                    name,
                    args: std::mem::take(&mut words),
                    loc: at(first_line),
                    block: None,
                });
            }
            Tok::Open => {
                let inner = block(tokens, pos, file, Some(t.line), end_line)?;
                let name = words.remove(0);
                out.push(Directive {
                    name,
                    args: std::mem::take(&mut words),
                    loc: at(first_line),
                    block: Some(inner),
                });
            }
            Tok::Close if !words.is_empty() => {
                return Err(ImportError::at(
                    &at(t.line),
                    "unexpected \"}\": the directive before it needs a \";\"",
                ));
            }
            Tok::Close if opened.is_none() => {
                return Err(ImportError::at(&at(t.line), "unexpected \"}\""));
            }
            Tok::Close => return Ok(out),
        }
    }
}

fn tokenize(text: &str, file: &Rc<str>) -> Result<Vec<Token>, ImportError> {
    let err = |line: usize, why: String| {
        ImportError::at(
            &Loc {
                file: file.clone(),
                line,
            },
            why,
        )
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' | '}' | ';' => {
                let tok = match c {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    _ => Tok::Semi,
                };
                out.push(Token { tok, line });
                i += 1;
            }
            '"' | '\'' => {
                let start = line;
                let mut word = String::new();
                i += 1;
                loop {
                    let Some(&ch) = chars.get(i) else {
                        return Err(err(
                            start,
                            format!(
                                "unexpected end of file: the {c} quote opened here is never closed"
                            ),
                        ));
                    };
                    i += 1;
                    if ch == c {
                        break;
                    }
                    if ch == '\n' {
                        line += 1;
                    }
                    if ch == '\\' {
                        if let Some(&next) = chars.get(i) {
                            i += 1;
                            escape(&mut word, next);
                            if next == '\n' {
                                line += 1;
                            }
                            continue;
                        }
                    }
                    word.push(ch);
                }
                if let Some(&next) = chars.get(i) {
                    if !(next.is_whitespace() || next == ';' || next == '{' || next == '}') {
                        return Err(err(
                            line,
                            format!("unexpected \"{next}\" after a quoted string"),
                        ));
                    }
                }
                out.push(Token {
                    tok: Tok::Word(word),
                    line: start,
                });
            }
            _ => {
                let start = line;
                let mut word = String::new();
                while let Some(&ch) = chars.get(i) {
                    // `${name}` is a variable, not a block.
                    let variable = ch == '{' && word.ends_with('$');
                    if ch.is_whitespace() || ch == ';' || (ch == '{' && !variable) {
                        break;
                    }
                    i += 1;
                    if ch == '\\' {
                        if let Some(&next) = chars.get(i) {
                            i += 1;
                            if next == '\n' {
                                line += 1;
                            }
                            escape(&mut word, next);
                            continue;
                        }
                    }
                    word.push(ch);
                }
                out.push(Token {
                    tok: Tok::Word(word),
                    line: start,
                });
            }
        }
    }
    Ok(out)
}

/// nginx's escapes: `\" \' \\ \t \r \n`; any other backslash is kept as written.
fn escape(word: &mut String, next: char) {
    match next {
        '"' | '\'' | '\\' => word.push(next),
        't' => word.push('\t'),
        'r' => word.push('\r'),
        'n' => word.push('\n'),
        _ => {
            word.push('\\');
            word.push(next);
        }
    }
}
