use super::*;

pub(super) fn two() -> (Shared, Shared) {
    let a = Shared::create(Layout::new(2, 40)).expect("create");
    let dup = a.fd().try_clone_to_owned().expect("dup");
    let b = Shared::attach(SharedMap::attach(dup).expect("map")).expect("attach");
    (a, b)
}

#[test]
fn connections_are_exact_across_mappings_and_a_dead_worker_gives_its_share_back() {
    let (sup, w) = two();
    sup.set_max_connections(3);
    assert!(w.conn_acquire(0) && w.conn_acquire(1) && w.conn_acquire(1));
    assert!(!w.conn_acquire(0), "the fourth is refused");
    assert_eq!(sup.connections(), 3);
    // Worker 1 dies holding the lock after counting the total but not its own share.
    assert!(w
        .w(H_LOCK)
        .compare_exchange(0, 2, Ordering::Acquire, Ordering::Relaxed)
        .is_ok());
    w.w(H_ACTIVE).store(4, Ordering::Relaxed);
    let r = sup.reclaim(1);
    assert_eq!(
        r,
        Reclaimed {
            connections: 3,
            ips: 0,
            held_lock: true
        }
    );
    assert_eq!(sup.connections(), 1);
    assert!(w.conn_acquire(1) && w.conn_acquire(0));
    assert!(!w.conn_acquire(1));
    w.conn_release(0);
    assert_eq!(sup.connections(), 2);
}

#[test]
fn per_ip_counts_survive_collisions_and_reclaim() {
    let (sup, w) = two();
    sup.set_ip_limit(Some(2));
    let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
    // Fill far past a few probe runs so removals must shift entries back.
    for i in 0..60 {
        assert_eq!(w.ip_acquire((i % 2) as usize, ip(i)), Some(true));
        assert_eq!(w.ip_acquire(1, ip(i)), Some(true));
        assert_eq!(w.ip_acquire(0, ip(i)), Some(false), "ip {i} over its limit");
    }
    assert_eq!(sup.tracked_ips(), 60);
    for i in (0..60).step_by(3) {
        w.ip_release(1, ip(i));
    }
    for i in 0..60 {
        let want = if i % 3 == 0 { Some(true) } else { Some(false) };
        assert_eq!(w.ip_acquire(0, ip(i)), want, "ip {i} after releases");
    }
    // Worker 1 dies: every IP keeps exactly what workers 0 still holds.
    let r = sup.reclaim(1);
    assert!(!r.held_lock);
    for i in 0..60 {
        let held_by_0 = if i % 2 == 0 { 1 } else { 0 } + u64::from(i % 3 == 0);
        for _ in held_by_0..2 {
            assert_eq!(w.ip_acquire(0, ip(i)), Some(true), "ip {i} given back");
        }
        assert_eq!(w.ip_acquire(0, ip(i)), Some(false), "ip {i} not over-given");
    }
    for i in 0..60 {
        w.ip_release(0, ip(i));
        w.ip_release(0, ip(i));
    }
    assert_eq!(sup.tracked_ips(), 0);
    sup.set_ip_limit(None);
    assert_eq!(w.ip_acquire(0, ip(1)), None);
}

#[test]
fn backend_mirror_round_trips_addresses() {
    let (sup, w) = two();
    let list = vec![
        (
            (7, "127.0.0.1:5000".parse().expect("addr")),
            BackendCounts {
                active: 1,
                tunnels: 2,
                failures: 3,
            },
        ),
        (
            (u32::MAX, "[::1]:80".parse().expect("addr")),
            BackendCounts::default(),
        ),
        (
            (0, "[::ffff:10.0.0.1]:81".parse().expect("addr")),
            BackendCounts::default(),
        ),
    ];
    let ticket = sup.request_backends(1);
    assert!(!sup.backends_answered(1, ticket));
    w.mirror_backends(1, &list);
    assert!(sup.backends_answered(1, ticket));
    assert_eq!(sup.backends(1), list);
    assert!(sup.backends(0).is_empty());
    sup.clear_backends(1);
    assert!(sup.backends(1).is_empty());
}
