use super::*;

#[test]
fn route_lines_sum_workers_and_escape_labels() {
    let a = vec![("/app".to_owned(), [0, 2, 0, 1, 0, 0])];
    let b = vec![
        ("/app".to_owned(), [0, 3, 0, 0, 0, 1]),
        ("h/\"x".to_owned(), [0; 6]),
    ];
    let t = render_routes(&[a, b]);
    assert!(t.starts_with("# HELP wsplice_route_requests_total "), "{t}");
    assert!(
        t.contains("\nwsplice_route_requests_total{route=\"/app\",class=\"2xx\"} 5\n"),
        "{t}"
    );
    assert!(t.contains("{route=\"/app\",class=\"none\"} 1\n"), "{t}");
    assert!(t.contains("{route=\"h/\\\"x\",class=\"5xx\"} 0\n"), "{t}");
}

#[test]
fn every_slot_is_one_field_once() {
    let want: [u64; FIELDS] = std::array::from_fn(|i| i as u64 + 1);
    assert_eq!(flatten(&unflatten(&want)), want);
    // Every field of Counters (and of the structs it embeds) is a 64-bit sample: a field the
    // list does not name would make Counters larger than its slots.
    #[cfg(target_pointer_width = "64")]
    assert_eq!(std::mem::size_of::<Counters>(), FIELDS * 8);
}

#[test]
fn sum_adds_every_sample() {
    let mut a = Counters {
        accepted: 2,
        ..Counters::default()
    };
    a.pipes.in_use = 3;
    a.count_close(CloseReason::Drain);
    a.count_reject(Reject::NoRoute);
    a.observe_handshake(Duration::from_millis(3));
    let s = sum([a, a, Counters::default()]);
    assert_eq!(s.accepted, 4);
    assert_eq!(s.pipes.in_use, 6);
    assert_eq!(s.closed(CloseReason::Drain), 2);
    assert_eq!(s.handshake.count(), 2);
    assert_eq!(s.handshake.sum_us, 6000);
    let p = Published::default();
    p.store(&s);
    assert_eq!(flatten(&p.load()), flatten(&s));
}

#[test]
fn text_groups_each_family_under_one_header() {
    let mut c = Counters::default();
    c.count_close(CloseReason::Drain);
    c.observe_handshake(Duration::from_secs(10));
    let t = render(&c);
    assert!(
        t.contains("\nwsplice_tunnels_closed_total{reason=\"drain\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("\nwsplice_handshake_seconds_bucket{le=\"5\"} 0\n"),
        "{t}"
    );
    assert!(
        t.contains("\nwsplice_handshake_seconds_bucket{le=\"+Inf\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("\nwsplice_handshake_seconds_sum 10.000000\n"),
        "{t}"
    );
    let mut seen = std::collections::HashSet::new();
    let mut last = "";
    for line in t.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("");
            assert!(
                seen.insert(name.to_string()),
                "{name} has two TYPE lines:\n{t}"
            );
            last = name;
        } else if !line.starts_with('#') {
            assert!(
                line.starts_with(last),
                "{line} is outside its family {last}:\n{t}"
            );
        }
    }
    let names: Vec<&str> = families().iter().map(|f| f.name).collect();
    for s in &seen {
        assert!(names.contains(&s.as_str()), "{s} is not in families()");
    }
}

#[test]
fn backend_counters_do_not_go_down_while_workers_drop_their_rows() {
    let x: std::net::SocketAddr = "127.0.0.2:9000".parse().expect("addr");
    let row = |active, tunnels, failures| {
        (
            (7, x),
            BackendCounts {
                active,
                tunnels,
                failures,
            },
        )
    };
    let shown = BackendTotals::default();
    let line = |t: &str, f: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("{f}{{backend=\"127.0.0.2:9000\"}} ")))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
    };
    let t = render_backends(&[vec![row(0, 5, 1)], vec![row(2, 3, 0)]], &shown);
    assert_eq!(
        line(&t, "wsplice_backend_tunnels_total").as_deref(),
        Some("8")
    );
    assert_eq!(line(&t, "wsplice_backend_active").as_deref(), Some("2"));
    // The backend left the routes: worker 0 (idle there) dropped its row, worker 1 still has
    // tunnels to it. The counters stay where they were; the gauge is the sum.
    let t = render_backends(&[vec![], vec![row(1, 3, 0)]], &shown);
    assert_eq!(
        line(&t, "wsplice_backend_tunnels_total").as_deref(),
        Some("8")
    );
    assert_eq!(
        line(&t, "wsplice_backend_failures_total").as_deref(),
        Some("1")
    );
    assert_eq!(line(&t, "wsplice_backend_active").as_deref(), Some("1"));
    // No worker has it: not shown, and forgotten.
    let t = render_backends(&[vec![], vec![]], &shown);
    assert_eq!(line(&t, "wsplice_backend_tunnels_total"), None);
    let t = render_backends(&[vec![row(1, 1, 0)], vec![]], &shown);
    assert_eq!(
        line(&t, "wsplice_backend_tunnels_total").as_deref(),
        Some("1")
    );
}
