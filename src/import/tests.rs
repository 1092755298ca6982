//! The grammars and the small rules; the importers end to end are tests/import.rs.

use std::rc::Rc;
use std::time::Duration;

use super::apache_parse::{self, Node};
use super::nginx::hash_key;
use super::nginx_parse::{self, Directive};
use super::rules::{nginx_time, path_rule, rewrite_pattern};

fn nginx(text: &str) -> Result<Vec<Directive>, String> {
    nginx_parse::parse_str(text, &Rc::from("t.conf")).map_err(|e| e.to_string())
}

fn apache(text: &str) -> Result<Vec<Node>, String> {
    apache_parse::parse_str(text, &Rc::from("t.conf")).map_err(|e| e.to_string())
}

/// The one top-level item of a text that parses.
#[track_caller]
fn only<T: std::fmt::Debug>(parsed: Result<Vec<T>, String>) -> T {
    let mut tree = parsed.expect("parses");
    assert_eq!(tree.len(), 1, "{tree:?}");
    tree.remove(0)
}

/// Each text of `cases` fails to parse with its message.
fn assert_errors<T: std::fmt::Debug>(parse: fn(&str) -> Result<T, String>, cases: &[(&str, &str)]) {
    for &(text, want) in cases {
        assert_eq!(parse(text).expect_err(text), want, "{text:?}");
    }
}

#[test]
fn nginx_words_quotes_escapes_comments() {
    let server = only(nginx(
        "# a comment { ; }\nserver {\n  listen 80 ; # trailing\n  return 200 \"a \\\"b\\\" ; { }\";\n  add_header X 'it\\'s' ;\n  set $x ${host}x;\n  a\\ b c#d;\n}\n",
    ));
    assert_eq!((server.name.as_str(), server.loc.line), ("server", 2));
    let block = server.block.as_ref().expect("a block");
    let got: Vec<(String, Vec<String>, usize)> = block
        .iter()
        .map(|d| (d.name.clone(), d.args.clone(), d.loc.line))
        .collect();
    let want = vec![
        ("listen", vec!["80"], 3),
        ("return", vec!["200", "a \"b\" ; { }"], 4),
        ("add_header", vec!["X", "it's"], 5),
        ("set", vec!["$x", "${host}x"], 6),
        ("a\\ b", vec!["c#d"], 7),
    ];
    let want: Vec<(String, Vec<String>, usize)> = want
        .into_iter()
        .map(|(n, a, l)| (n.to_owned(), a.into_iter().map(String::from).collect(), l))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn nginx_nested_blocks_and_multiline_directives() {
    let tree = nginx("http {\n upstream u {\n  server\n   127.0.0.1:1\n   weight=2;\n }\n}")
        .expect("parses");
    let up = &tree[0].block.as_ref().expect("http")[0];
    assert_eq!(up.args, ["u"]);
    let server = &up.block.as_ref().expect("upstream")[0];
    assert_eq!((server.loc.line, server.args.len()), (3, 2));
}

#[test]
fn nginx_syntax_errors_name_the_line() {
    let cases = [
        ("server {\n listen 80;\n", "t.conf:2: unexpected end of file, expecting \"}\" (the block opened on line 1 is not closed)"),
        ("server {\n listen 80\n}\n", "t.conf:3: unexpected \"}\": the directive before it needs a \";\""),
        ("listen 80;\n}\n", "t.conf:2: unexpected \"}\""),
        ("a;\n;\n", "t.conf:2: unexpected \";\""),
        ("a \"b\nc;\n", "t.conf:1: unexpected end of file: the \" quote opened here is never closed"),
        ("a \"b\"c;\n", "t.conf:1: unexpected \"c\" after a quoted string"),
        ("a b", "t.conf:1: unexpected end of file, expecting \";\" or \"}\""),
    ];
    assert_errors(nginx, &cases);
}

#[test]
fn apache_sections_quotes_continuations() {
    let vh = only(apache(
        "# comment\n<VirtualHost *:443>\n  ServerName chat.example.com\n  ProxyPass \"/a b\" 'ws://127.0.0.1:1/' \\\n     timeout=5\n  <Proxy \"balancer://c\">\n    BalancerMember ws://127.0.0.1:2 loadfactor=2\n  </proxy>\n  Header set X \"say \\\"hi\\\"\"\n</VirtualHost>\n",
    ));
    assert!(vh.is("virtualhost"));
    assert_eq!(
        (vh.args.clone(), vh.loc.line),
        (vec!["*:443".to_owned()], 2)
    );
    let inner = vh.children.as_ref().expect("children");
    assert_eq!(inner[1].args, ["/a b", "ws://127.0.0.1:1/", "timeout=5"]);
    assert_eq!(inner[1].loc.line, 4);
    assert_eq!(inner[2].args, ["balancer://c"]);
    let member = &inner[2].children.as_ref().expect("members")[0];
    assert_eq!((member.loc.line, member.args.len()), (7, 2));
    assert_eq!(inner[3].args, ["set", "X", "say \"hi\""]);
}

#[test]
fn apache_syntax_errors_name_the_line() {
    let cases = [
        (
            "<VirtualHost *:80>\nServerName a\n",
            "t.conf:1: <VirtualHost> was not closed",
        ),
        (
            "<VirtualHost *:80\n</VirtualHost>\n",
            "t.conf:1: <VirtualHost> directive missing closing '>'",
        ),
        (
            "ServerName a\n</Proxy>\n",
            "t.conf:2: </Proxy> without matching <Proxy> section",
        ),
        (
            "<VirtualHost *:80>\n<Proxy *>\n</VirtualHost>\n",
            "t.conf:3: expected </Proxy> (opened on line 2) but saw </VirtualHost>",
        ),
    ];
    assert_errors(apache, &cases);
}

#[test]
fn proxy_pass_path_rule() {
    assert_eq!(path_rule("/notice", None), Ok(false));
    assert_eq!(path_rule("/notice/", Some("/")), Ok(true));
    assert_eq!(path_rule("/notice", Some("")), Ok(true));
    assert_eq!(path_rule("/app/", Some("/app/")), Ok(false));
    assert!(path_rule("/app/", Some("/v2/")).is_err());
}

#[test]
fn nginx_times() {
    let secs = Duration::from_secs;
    for (text, want) in [
        ("75", Some(secs(75))),
        ("1m30s", Some(secs(90))),
        ("500ms", Some(Duration::from_millis(500))),
        ("1h", Some(secs(3600))),
        ("1x", None),
        ("s", None),
    ] {
        assert_eq!(nginx_time(text), want, "{text:?}");
    }
}

#[test]
fn hash_keys() {
    for (key, want) in [
        ("$remote_addr", Some("client_ip")),
        ("$cookie_sid", Some("cookie:sid")),
        ("$arg_room", Some("query:room")),
        ("$http_x_user", Some("header:x-user")),
        ("$request_uri", None),
    ] {
        assert_eq!(hash_key(key).as_deref(), want, "{key:?}");
    }
}

#[test]
fn rewrite_patterns() {
    // (pattern, the prefix it rewrites to, or None: not one wsplice can follow)
    let cases = [
        ("^/?(.*)", Some("/")),
        ("/(.*)", Some("/")),
        ("^/ws/(.*)$", Some("/ws/")),
        ("^/socket\\.io/?(.*)", Some("/socket.io/")),
        ("^(.*)", Some("")),
        ("^/a[0-9]/(.*)", None),
        ("ws/(.*)", None),
        ("^/ws/", None),
    ];
    for (pattern, want) in cases {
        assert_eq!(rewrite_pattern(pattern).as_deref(), want, "{pattern:?}");
    }
}
