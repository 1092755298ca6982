//! The metric list as one JSON object for `/status`: every family of [`Counters`] under its
//! Prometheus name, so the status page reads the same samples `/metrics` shows.
//!
//! ```text
//! "wsplice_connections_active": 3                         a single sample
//! "wsplice_tunnels_closed_total": {"client_closed": 1, ...}   a labelled family, by label value
//! "wsplice_handshake_seconds": {"le": [...], "counts": [...], "sum_us": n}
//!                                                         buckets not cumulative; the last +Inf
//! ```

use super::expand::{LabelPair, Slot, Visit};
use super::{visit, Counters, Family, Histogram};
use std::fmt::Write as _;

/// `s` as a JSON string, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            // `<` escaped keeps a value from closing a script element of a page that inlines it.
            '<' => out.push_str("\\u003c"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Default)]
struct Families {
    /// (family name, its JSON value so far, true while it is an open labelled object)
    out: Vec<(&'static str, String, bool)>,
}

impl Visit for Families {
    fn sample(&mut self, f: &Family, label: Option<LabelPair<'_>>, slot: &mut impl Slot) {
        let v = slot.get();
        match label {
            None => self.out.push((f.name, v.to_string(), false)),
            Some((_, l)) => {
                let pair = format!("{}:{v}", string(&l.text()));
                match self.out.last_mut() {
                    Some((name, body, true)) if *name == f.name => {
                        body.push(',');
                        body.push_str(&pair);
                    }
                    _ => self.out.push((f.name, pair, true)),
                }
            }
        }
    }

    fn histogram<const N: usize>(&mut self, f: &Family, bounds: &[f64], h: &mut Histogram<N>) {
        let le: Vec<String> = bounds.iter().map(f64::to_string).collect();
        let counts: Vec<String> = h.counts.iter().map(u64::to_string).collect();
        let body = format!(
            "{{\"le\":[{}],\"counts\":[{}],\"sum_us\":{}}}",
            le.join(","),
            counts.join(","),
            h.sum_us
        );
        self.out.push((f.name, body, false));
    }
}

/// Every family of `c` as the members of a JSON object (without the braces).
pub fn families(c: &Counters) -> String {
    let mut j = Families::default();
    let mut c = *c;
    visit(&mut c, &mut j);
    let members: Vec<String> = j
        .out
        .into_iter()
        .map(|(name, body, labelled)| {
            if labelled {
                format!("\"{name}\":{{{body}}}")
            } else {
                format!("\"{name}\":{body}")
            }
        })
        .collect();
    members.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::relay::CloseReason;
    use std::time::Duration;

    #[test]
    fn families_are_one_valid_object_with_labels_and_buckets() {
        let mut c = Counters {
            connections: 4,
            ..Counters::default()
        };
        c.count_close(CloseReason::Drain);
        c.count_close(CloseReason::Drain);
        c.observe_handshake(Duration::from_micros(700));
        c.relay.bytes_up = 5;
        c.relay.bytes_down = 6;
        let text = format!("{{{}}}", families(&c));
        let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(v["wsplice_connections_active"], 4);
        assert_eq!(v["wsplice_tunnels_closed_total"]["drain"], 2);
        assert_eq!(
            v["wsplice_bytes_total"]["client_to_backend"], 5,
            "two fields of one family merge: {text}"
        );
        assert_eq!(v["wsplice_bytes_total"]["backend_to_client"], 6);
        let h = &v["wsplice_handshake_seconds"];
        assert_eq!(h["counts"][1], 1, "0.7 ms is in the le=0.001 bucket: {h}");
        assert_eq!(h["sum_us"], 700);
        assert_eq!(
            h["counts"].as_array().map(Vec::len),
            Some(h["le"].as_array().map_or(0, Vec::len) + 1)
        );
    }

    #[test]
    fn strings_escape_quotes_controls_and_tags() {
        assert_eq!(string("a\"b\\c\n</"), "\"a\\\"b\\\\c\\u000a\\u003c/\"");
    }
}
