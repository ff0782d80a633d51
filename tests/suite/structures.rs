//! The data-structure capabilities (`hash`, `set`, `sorted-set`, `list`,
//! `hyperloglog`, `keys`), driven through their WIT `Host` implementations
//! against a real Redis (and, in the Cluster pass, a loopback Cluster):
//! what each call stores, in which namespace, what it returns, what it is
//! charged, and the bounds and slot-group rule that refuse a call before it
//! reaches Redis.

use std::fmt::Debug;
use std::sync::Arc;

use redloom::bindings::types::{Error, Quota};
use redloom::bindings::{
    batch, hash, hyperloglog, keys, kv, list, script, set, sorted_set, stream,
};
use redloom::config::{Config, Quotas};
use redloom::data::{
    MAX_ITEMS, MAX_SCAN_COUNT, MAX_TRANSACTIONS, OWN_CONNECTION_RATE, PluginScripts,
};
use redloom::namespace::{Namespace, PluginName};
use redloom::store::Caps;
use redloom_tests::{
    RedisServer, acl_user, caps, connect, host_options, http_client, plugin, plugin_context,
    unique, with_timeout,
};

use keys::{KeyTtl, KeyType};
use list::End;
use sorted_set::{AddCondition, AddOptions, LexBound, RangeLimit, ScoreBound, ScoreUpdate, Scored};

/// The guest's result of a host call that did not trap.
fn ok<T, E: Debug>(r: Result<Result<T, Error>, E>) -> T {
    r.expect("no trap").expect("the call succeeds")
}

/// The guest's error of a host call that did not trap.
fn err<T: Debug, E: Debug>(r: Result<Result<T, Error>, E>) -> Error {
    r.expect("no trap").expect_err("the call fails")
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn redis_key(plugin: &str, key: &str) -> String {
    Namespace::new(&PluginName::parse(plugin).unwrap())
        .kv(key)
        .unwrap()
}

fn add(condition: AddCondition, update: ScoreUpdate) -> AddOptions {
    AddOptions {
        condition,
        update,
        count_changed: false,
    }
}

fn scored(pairs: &[(&str, f64)]) -> Vec<Scored> {
    pairs
        .iter()
        .map(|(m, s)| Scored {
            member: m.to_string(),
            score: *s,
        })
        .collect()
}

fn members(s: &[Scored]) -> Vec<&str> {
    s.iter().map(|m| m.member.as_str()).collect()
}

/// A hash round trip: every function, one command each, stored under the
/// plugin's namespace and invisible to another plugin.
#[tokio::test]
async fn hash_fields_live_in_the_plugins_namespace() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (a, b) = (unique("hash-a"), unique("hash-b"));
        let mut c = caps(&redis, &a, Quotas::default()).await;
        let mut other = caps(&redis, &b, Quotas::default()).await;
        use hash::Host as H;
        let entries = vec![
            ("name".to_string(), b"ada".to_vec()),
            ("visits".to_string(), b"1".to_vec()),
        ];
        assert_eq!(ok(H::set(&mut c, "user".into(), entries).await), 2);
        assert_eq!(c.redis_ops(), 1, "one command per call");
        assert_eq!(
            ok(H::get(&mut c, "user".into(), "name".into()).await),
            Some(b"ada".to_vec())
        );
        assert_eq!(
            ok(H::get(&mut other, "user".into(), "name".into()).await),
            None
        );
        assert_eq!(
            ok(H::increment(&mut c, "user".into(), "visits".into(), 4).await),
            5
        );
        let score = ok(H::increment_float(&mut c, "user".into(), "score".into(), 1.5).await);
        assert!((score - 1.5).abs() < 1e-9, "{score}");
        assert!(ok(H::set_if_absent(
            &mut c,
            "user".into(),
            "new".into(),
            b"x".to_vec()
        )
        .await));
        assert!(!ok(H::set_if_absent(
            &mut c,
            "user".into(),
            "new".into(),
            b"y".to_vec()
        )
        .await));
        assert_eq!(
            ok(H::get_many(&mut c, "user".into(), strings(&["name", "nope", "new"])).await),
            vec![Some(b"ada".to_vec()), None, Some(b"x".to_vec())]
        );
        assert!(ok(H::exists(&mut c, "user".into(), "name".into()).await));
        assert_eq!(ok(H::length(&mut c, "user".into()).await), 4);
        let mut names = ok(H::field_names(&mut c, "user".into()).await);
        names.sort();
        assert_eq!(names, strings(&["name", "new", "score", "visits"]));
        let mut all = ok(H::get_all(&mut c, "user".into()).await);
        all.sort();
        assert_eq!(all[0], ("name".to_string(), b"ada".to_vec()));
        assert_eq!(all.len(), 4);
        assert_eq!(
            ok(H::delete(&mut c, "user".into(), strings(&["new", "nope"])).await),
            1
        );
        // Redis holds it under the plugin's prefix.
        let mut conn = redis.client().await;
        let stored: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(redis_key(&a, "user"))
            .arg("name")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored.as_deref(), Some(&b"ada"[..]));
        // Scan pages through a hash bigger than one page (and than Redis's
        // listpack encoding, which answers in one page), each field once.
        let many: Vec<(String, Vec<u8>)> =
            (0..1000).map(|i| (format!("f{i}"), vec![b'v'])).collect();
        ok(H::set(&mut c, "big".into(), many).await);
        let (mut cursor, mut seen, mut pages) = (0, std::collections::BTreeSet::new(), 0);
        loop {
            let page = ok(H::scan(&mut c, "big".into(), cursor, 50).await);
            seen.extend(page.entries.into_iter().map(|(f, _)| f));
            pages += 1;
            cursor = page.cursor;
            if cursor == 0 || pages > 1_000 {
                break;
            }
        }
        assert_eq!(seen.len(), 1000, "every field, after {pages} pages");
        assert!(
            pages > 1,
            "a 1000-field hash (not a listpack) takes more than one page of 50"
        );
    })
    .await;
}

/// Sets, including the multi-key operations within one slot group.
#[tokio::test]
async fn sets_combine_keys_of_one_slot_group() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut c = caps(&redis, &unique("set"), Quotas::default()).await;
        use set::Host as S;
        assert_eq!(
            ok(S::add(&mut c, "{tags}a".into(), strings(&["x", "y", "z", "x"])).await),
            3
        );
        ok(S::add(&mut c, "{tags}b".into(), strings(&["y", "z", "w"])).await);
        assert!(ok(S::contains(&mut c, "{tags}a".into(), "x".into()).await));
        assert_eq!(ok(S::cardinality(&mut c, "{tags}a".into()).await), 3);
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(ok(S::inter(&mut c, strings(&["{tags}a", "{tags}b"])).await)),
            strings(&["y", "z"])
        );
        assert_eq!(
            sorted(ok(S::union(&mut c, strings(&["{tags}a", "{tags}b"])).await)),
            strings(&["w", "x", "y", "z"])
        );
        assert_eq!(
            ok(S::diff(&mut c, strings(&["{tags}a", "{tags}b"])).await),
            strings(&["x"])
        );
        // Keys of two groups are refused before anything is sent.
        let before = c.redis_ops();
        let e = err(S::inter(&mut c, strings(&["{tags}a", "{other}b"])).await);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("slot group")),
            "{e:?}"
        );
        assert_eq!(c.redis_ops(), before, "nothing reached Redis");
        let random = ok(S::random_members(&mut c, "{tags}a".into(), 2).await);
        assert_eq!(random.len(), 2);
        let popped = ok(S::pop(&mut c, "{tags}a".into(), 5).await);
        assert_eq!(sorted(popped), strings(&["x", "y", "z"]));
        assert_eq!(
            ok(S::members(&mut c, "{tags}a".into()).await),
            Vec::<String>::new()
        );
        assert_eq!(
            ok(S::remove(&mut c, "{tags}b".into(), strings(&["w", "q"])).await),
            1
        );
        let page = ok(S::scan(&mut c, "{tags}b".into(), 0, 10).await);
        assert_eq!(page.cursor, 0);
        assert_eq!(sorted(page.members), strings(&["y", "z"]));
    })
    .await;
}

/// A leaderboard on a sorted set: conditional adds, ranks, ranges by rank,
/// score and lex, counts, removals and pops.
#[tokio::test]
async fn sorted_sets_rank_and_range() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut c = caps(&redis, &unique("zset"), Quotas::default()).await;
        use sorted_set::Host as Z;
        let board = || "board".to_string();
        let always = add(AddCondition::Always, ScoreUpdate::Always);
        let players = scored(&[("ann", 10.0), ("bob", 30.0), ("cy", 20.0), ("dee", 40.0)]);
        assert_eq!(ok(Z::add(&mut c, board(), players, always).await), 4);
        // GT: a lower score does not replace a higher one.
        let gt = AddOptions {
            count_changed: true,
            ..add(AddCondition::Always, ScoreUpdate::IfGreater)
        };
        assert_eq!(
            ok(Z::add(&mut c, board(), scored(&[("bob", 5.0)]), gt).await),
            0
        );
        assert_eq!(
            ok(Z::add(&mut c, board(), scored(&[("bob", 35.0)]), gt).await),
            1
        );
        // NX: only new members.
        let nx = add(AddCondition::IfAbsent, ScoreUpdate::Always);
        assert_eq!(
            ok(Z::add(&mut c, board(), scored(&[("ann", 99.0), ("eve", 0.5)]), nx).await),
            1
        );
        assert_eq!(
            ok(Z::score(&mut c, board(), "ann".into()).await),
            Some(10.0)
        );
        assert_eq!(ok(Z::score(&mut c, board(), "nobody".into()).await), None);
        assert_eq!(
            ok(Z::rank(&mut c, board(), "dee".into(), true).await),
            Some(0)
        );
        assert_eq!(
            ok(Z::rank(&mut c, board(), "dee".into(), false).await),
            Some(4)
        );
        let top3 = ok(Z::range_by_rank(&mut c, board(), 0, 2, true).await);
        assert_eq!(members(&top3), ["dee", "bob", "cy"]);
        assert_eq!(top3[1].score, 35.0);
        let mid = ok(Z::range_by_score(
            &mut c,
            board(),
            ScoreBound::Exclusive(10.0),
            ScoreBound::Inclusive(35.0),
            false,
            None,
        )
        .await);
        assert_eq!(members(&mid), ["cy", "bob"]);
        let high_first = ok(Z::range_by_score(
            &mut c,
            board(),
            ScoreBound::Unbounded,
            ScoreBound::Unbounded,
            true,
            Some(RangeLimit {
                offset: 1,
                count: 2,
            }),
        )
        .await);
        assert_eq!(members(&high_first), ["bob", "cy"]);
        assert_eq!(
            ok(Z::count(
                &mut c,
                board(),
                ScoreBound::Inclusive(10.0),
                ScoreBound::Unbounded
            )
            .await),
            4
        );
        let new = ok(Z::increment(&mut c, board(), "ann".into(), 100.0).await);
        assert_eq!(new, 110.0);
        // Lex ranges over members of one score.
        let same = scored(&[("a", 0.0), ("b", 0.0), ("c", 0.0), ("d", 0.0)]);
        ok(Z::add(&mut c, "names".into(), same, always).await);
        let lex = ok(Z::range_by_lex(
            &mut c,
            "names".into(),
            LexBound::Exclusive("a".into()),
            LexBound::Inclusive("c".into()),
            false,
            None,
        )
        .await);
        assert_eq!(lex, strings(&["b", "c"]));
        let lex_rev = ok(Z::range_by_lex(
            &mut c,
            "names".into(),
            LexBound::Unbounded,
            LexBound::Unbounded,
            true,
            None,
        )
        .await);
        assert_eq!(lex_rev, strings(&["d", "c", "b", "a"]));
        assert_eq!(
            ok(Z::remove_by_score(
                &mut c,
                board(),
                ScoreBound::Unbounded,
                ScoreBound::Exclusive(20.0)
            )
            .await),
            1,
            "eve (0.5) goes"
        );
        assert_eq!(ok(Z::remove_by_rank(&mut c, "names".into(), 0, 1).await), 2);
        assert_eq!(
            ok(Z::remove(&mut c, "names".into(), strings(&["c", "zz"])).await),
            1
        );
        assert_eq!(ok(Z::cardinality(&mut c, board()).await), 4);
        let lowest = ok(Z::pop_min(&mut c, board(), 1).await);
        assert_eq!(members(&lowest), ["cy"]);
        let highest = ok(Z::pop_max(&mut c, board(), 2).await);
        assert_eq!(members(&highest), ["ann", "dee"]);
        // NX with GT is a Redis error, returned as invalid-argument.
        let both = add(AddCondition::IfAbsent, ScoreUpdate::IfGreater);
        let e = err(Z::add(&mut c, board(), scored(&[("x", 1.0)]), both).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    })
    .await;
}

/// Lists: pushes at both ends, ranges, a capped feed by trim, index and
/// set, removal, pops, and a move between lists of one slot group.
#[tokio::test]
async fn lists_push_trim_and_move() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut c = caps(&redis, &unique("list"), Quotas::default()).await;
        use list::Host as L;
        let v = |s: &str| s.as_bytes().to_vec();
        let feed = || "{feed}main".to_string();
        assert_eq!(
            ok(L::push(&mut c, feed(), End::Back, vec![v("b"), v("c")]).await),
            2
        );
        assert_eq!(
            ok(L::push(&mut c, feed(), End::Front, vec![v("a")]).await),
            3
        );
        assert_eq!(
            ok(L::push_if_exists(&mut c, "none".into(), End::Back, vec![v("x")]).await),
            0
        );
        for i in 0..10 {
            ok(L::push(
                &mut c,
                feed(),
                End::Front,
                vec![format!("e{i}").into_bytes()],
            )
            .await);
        }
        ok(L::trim(&mut c, feed(), 0, 4).await);
        assert_eq!(ok(L::length(&mut c, feed()).await), 5, "capped at five");
        assert_eq!(
            ok(L::range(&mut c, feed(), 0, -1).await),
            vec![v("e9"), v("e8"), v("e7"), v("e6"), v("e5")]
        );
        assert_eq!(ok(L::index(&mut c, feed(), -1).await), Some(v("e5")));
        assert_eq!(ok(L::index(&mut c, feed(), 99).await), None);
        ok(L::set(&mut c, feed(), 0, v("first")).await);
        let e = err(L::set(&mut c, feed(), 99, v("x")).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        ok(L::push(&mut c, feed(), End::Back, vec![v("e7"), v("e7")]).await);
        assert_eq!(ok(L::remove(&mut c, feed(), v("e7"), 0).await), 3);
        let moved = ok(L::move_(&mut c, feed(), "{feed}done".into(), End::Front, End::Back).await);
        assert_eq!(moved, Some(v("first")));
        assert_eq!(
            ok(L::range(&mut c, "{feed}done".into(), 0, -1).await),
            vec![v("first")]
        );
        let e = err(L::move_(&mut c, feed(), "elsewhere".into(), End::Front, End::Back).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert_eq!(
            ok(L::pop(&mut c, feed(), End::Back, 10).await),
            vec![v("e5"), v("e6"), v("e8")]
        );
        assert_eq!(
            ok(L::pop(&mut c, feed(), End::Back, 1).await),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(
            ok(L::move_(&mut c, feed(), "{feed}done".into(), End::Front, End::Back).await),
            None
        );
    })
    .await;
}

/// Unique visitors per day and their weekly merge.
#[tokio::test]
async fn hyperloglogs_count_and_merge() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut c = caps(&redis, &unique("hll"), Quotas::default()).await;
        use hyperloglog::Host as P;
        let day = |d: u32| format!("{{visits}}day-{d}");
        for d in 0..3u32 {
            let visitors = (0..100).map(|i| format!("user-{}", i + d * 50)).collect();
            assert!(ok(P::add(&mut c, day(d), visitors).await));
        }
        assert!(
            !ok(P::add(&mut c, day(0), strings(&["user-1"])).await),
            "seen already"
        );
        let one = ok(P::count(&mut c, vec![day(0)]).await);
        assert!((97..=103).contains(&one), "{one}");
        let union = ok(P::count(&mut c, vec![day(0), day(1), day(2)]).await);
        assert!((194..=206).contains(&union), "{union}");
        ok(P::merge(&mut c, "{visits}week".into(), vec![day(0), day(1), day(2)]).await);
        assert_eq!(
            ok(P::count(&mut c, vec!["{visits}week".into()]).await),
            union
        );
        let e = err(P::count(&mut c, vec![day(0), "other".into()]).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    })
    .await;
}

/// `keys` sees the plugin's own keys of every type, and only those: a scan
/// (over every primary of a Cluster) finds each once, never another
/// plugin's key of the same name nor the plugin's non-data keys.
#[tokio::test]
async fn keys_scan_only_the_plugins_own_keys() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (a, b) = (unique("keys-a"), unique("keys-b"));
        let mut c = caps(&redis, &a, Quotas::default()).await;
        let mut other = caps(&redis, &b, Quotas::default()).await;
        for i in 0..120 {
            let entry = vec![("f".to_string(), b"v".to_vec())];
            ok(hash::Host::set(&mut c, format!("user:{i}"), entry.clone()).await);
            ok(hash::Host::set(&mut other, format!("user:{i}"), entry).await);
        }
        ok(set::Host::add(&mut c, "tags".into(), strings(&["t"])).await);
        let mut conn = redis.client().await;
        // A key of the plugin outside its data key space (a lock's key).
        let _: () = redis::cmd("SET")
            .arg(format!("rl:{a}:lock:{{{a}/x}}"))
            .arg("held")
            .query_async(&mut conn)
            .await
            .unwrap();
        let all = scan_all(&mut c, "*").await;
        assert_eq!(all.len(), 121, "120 users and the tags, once each");
        assert!(all.contains(&"tags".to_string()));
        assert!(
            all.iter().all(|k| k == "tags" || k.starts_with("user:")),
            "{all:?}"
        );
        let ones = scan_all(&mut c, "user:1?").await;
        assert_eq!(ones.len(), 10, "{ones:?}");
        use keys::Host as K;
        assert_eq!(ok(K::type_of(&mut c, "tags".into()).await), KeyType::Set);
        assert_eq!(ok(K::type_of(&mut c, "user:1".into()).await), KeyType::Hash);
        assert_eq!(ok(K::type_of(&mut c, "nope".into()).await), KeyType::None);
        assert!(matches!(
            ok(K::ttl(&mut c, "nope".into()).await),
            KeyTtl::Missing
        ));
        assert!(matches!(
            ok(K::ttl(&mut c, "tags".into()).await),
            KeyTtl::Persistent
        ));
        assert!(ok(K::expire(&mut c, "tags".into(), 60_000).await));
        let KeyTtl::ExpiresIn(ms) = ok(K::ttl(&mut c, "tags".into()).await) else {
            panic!("tags expires now");
        };
        assert!(ms > 0 && ms <= 60_000, "{ms}");
        assert!(ok(K::persist(&mut c, "tags".into()).await));
        assert!(!ok(K::persist(&mut c, "tags".into()).await));
        assert!(matches!(
            err(K::expire(&mut c, "tags".into(), 0).await),
            Error::InvalidArgument(_)
        ));
        // Rename within one slot group; a missing source is invalid.
        ok(set::Host::add(&mut c, "{g}old".into(), strings(&["m"])).await);
        ok(set::Host::add(&mut c, "{g}taken".into(), strings(&["m"])).await);
        assert!(!ok(K::rename(
            &mut c,
            "{g}old".into(),
            "{g}taken".into(),
            true
        )
        .await));
        assert!(ok(K::rename(
            &mut c,
            "{g}old".into(),
            "{g}new".into(),
            false
        )
        .await));
        assert!(matches!(
            err(K::rename(&mut c, "{g}old".into(), "{g}new".into(), false).await),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            err(K::rename(&mut c, "{g}new".into(), "elsewhere".into(), false).await),
            Error::InvalidArgument(_)
        ));
        let group = strings(&["{g}new", "{g}taken", "{g}missing"]);
        assert_eq!(ok(K::exists(&mut c, group.clone()).await), 2);
        assert_eq!(ok(K::delete(&mut c, group).await), 2);
        // The other plugin's keys are all still there.
        let theirs = ok(K::scan(&mut other, "*".into(), 0, 1000).await);
        assert!(!theirs.keys.is_empty());
        assert!(ok(hash::Host::exists(
            &mut other,
            "user:7".into(),
            "f".into()
        )
        .await));
    })
    .await;
}

/// Every key `keys.scan` finds for `pattern`, paging until cursor 0.
async fn scan_all(c: &mut Caps, pattern: &str) -> Vec<String> {
    let (mut cursor, mut found, mut pages) = (0u64, Vec::new(), 0);
    loop {
        let page = ok(keys::Host::scan(c, pattern.into(), cursor, 100).await);
        found.extend(page.keys);
        cursor = page.cursor;
        pages += 1;
        assert!(pages < 10_000, "the scan ends");
        if cursor == 0 {
            break;
        }
    }
    found.sort();
    found
}

/// A command on a key of another type is `invalid-argument`, not a trap.
#[tokio::test]
async fn a_key_of_another_type_is_an_invalid_argument() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut c = caps(&redis, &unique("types"), Quotas::default()).await;
        ok(list::Host::push(&mut c, "l".into(), End::Back, vec![b"x".to_vec()]).await);
        let e = err(hash::Host::get(&mut c, "l".into(), "f".into()).await);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("another type")),
            "{e:?}"
        );
        let e = err(sorted_set::Host::cardinality(&mut c, "l".into()).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    })
    .await;
}

/// Every bound refuses before Redis is asked (items per call, scan page
/// size, `max-write`), and `max-reply` refuses a reply too big for the
/// guest; each quota breach is recorded.
#[tokio::test]
async fn bounds_refuse_oversized_calls_and_replies() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let quotas = Quotas {
            max_reply: 4096,
            max_write: 8192,
            ..Quotas::default()
        };
        let mut c = caps(&redis, &unique("bounds"), quotas).await;
        let too_many: Vec<String> = (0..=MAX_ITEMS).map(|i| i.to_string()).collect();
        let e = err(set::Host::add(&mut c, "s".into(), too_many).await);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains(&MAX_ITEMS.to_string())),
            "{e:?}"
        );
        let e = err(keys::Host::scan(&mut c, "*".into(), 0, MAX_SCAN_COUNT + 1).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = err(list::Host::pop(&mut c, "l".into(), End::Front, MAX_ITEMS as u32 + 1).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        assert_eq!(c.redis_ops(), 0, "nothing reached Redis");
        // max-write: one call's payload.
        let big = vec![("f".to_string(), vec![0u8; 9000])];
        let e = err(hash::Host::set(&mut c, "h".into(), big).await);
        assert!(matches!(e, Error::QuotaExceeded(Quota::Payload)), "{e:?}");
        assert_eq!(c.redis_ops(), 0);
        let mut c = caps(&redis, &unique("bounds"), quotas).await;
        // max-reply: a hash written in pieces, read whole.
        for i in 0..4 {
            let part = vec![(format!("f{i}"), vec![b'x'; 2000])];
            ok(hash::Host::set(&mut c, "h".into(), part).await);
        }
        let e = err(hash::Host::get_all(&mut c, "h".into()).await);
        assert!(matches!(e, Error::QuotaExceeded(Quota::Payload)), "{e:?}");
        assert!(c.broken_quota().is_some(), "the breach is recorded");
    })
    .await;
}

/// `serve` with the leaderboard, session-store, activity-feed and
/// unique-visitors examples routed, on the
/// test Redis (a Cluster in the Cluster pass).
async fn serve_examples(redis: &RedisServer, dir: &std::path::Path) -> redloom_tests::Served {
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[plugins.leaderboard]
wasm = {leaderboard:?}
[plugins.session-store]
wasm = {sessions:?}
[plugins.session-store.settings]
ttl-secs = "600"
[[routes]]
method = "POST"
path = "/boards/:board/scores"
plugin = "leaderboard"
[[routes]]
method = "GET"
path = "/boards/:board/top"
plugin = "leaderboard"
[[routes]]
method = "GET"
path = "/boards/:board/players/:player"
plugin = "leaderboard"
[[routes]]
path = "/sessions/:id"
plugin = "session-store"
[plugins.activity-feed]
wasm = {feed:?}
[plugins.activity-feed.settings]
max-length = "5"
[[routes]]
path = "/feeds/:user"
plugin = "activity-feed"
[plugins.unique-visitors]
wasm = {visitors:?}
[[routes]]
path = "/visits/:page"
plugin = "unique-visitors"
"#,
        leaderboard = plugin("leaderboard").display().to_string(),
        sessions = plugin("session-store").display().to_string(),
        feed = plugin("activity-feed").display().to_string(),
        visitors = plugin("unique-visitors").display().to_string(),
    );
    let config = Config::parse(&text, &dir.join("redloom.toml")).expect("valid config");
    redloom_tests::Served::start(host_options(redis, dir), config).await
}

/// The leaderboard example: best scores only go up, even when submitted
/// concurrently; top N and a player's rank come from the sorted set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_example_keeps_best_scores() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve_examples(&redis, dir.path()).await;
        let c = http_client();
        let url = |p: &str| format!("http://{}{p}", s.addr);
        let submit = |player: &str, score: f64| {
            c.post(url("/boards/arcade/scores"))
                .json(&serde_json::json!({"player": player, "score": score}))
                .send()
        };
        // Twenty concurrent submissions for one player: the best one stays.
        let mut tries = tokio::task::JoinSet::new();
        for i in 1..=20 {
            let (c, url) = (c.clone(), url("/boards/arcade/scores"));
            tries.spawn(async move {
                let body = serde_json::json!({"player": "ada", "score": f64::from(i * 10)});
                c.post(url).json(&body).send().await.unwrap().status()
            });
        }
        while let Some(status) = tries.join_next().await {
            assert_eq!(status.unwrap(), 200);
        }
        for (player, score) in [("bob", 150.0), ("cy", 250.0), ("dee", 5.0)] {
            submit(player, score).await.unwrap();
        }
        let lower: serde_json::Value = submit("cy", 1.0).await.unwrap().json().await.unwrap();
        assert_eq!(
            lower["score"], 250.0,
            "a lower score does not replace the best"
        );
        assert_eq!(lower["rank"], 1);
        let top: serde_json::Value = c
            .get(url("/boards/arcade/top?n=3"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let players: Vec<&str> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["player"].as_str().unwrap())
            .collect();
        assert_eq!(players, ["cy", "ada", "bob"], "{top}");
        assert_eq!(top[1]["score"], 200.0);
        let bob: serde_json::Value = c
            .get(url("/boards/arcade/players/bob"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bob["rank"], 3);
        let missing = c
            .get(url("/boards/arcade/players/zed"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let bad = c
            .get(url("/boards/arcade/top?n=1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "n is bounded");
        s.shutdown().await;
    })
    .await;
}

/// The session-store example: fields merge across writes, every access
/// refreshes the time to live, and a deleted session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_example_refreshes_ttl_on_access() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve_examples(&redis, dir.path()).await;
        let c = http_client();
        let url = format!("http://{}/sessions/abc", s.addr);
        let put = |body: serde_json::Value| c.put(&url).json(&body).send();
        put(serde_json::json!({"user": "ada"})).await.unwrap();
        let both: serde_json::Value = put(serde_json::json!({"cart": "3"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(both, serde_json::json!({"user": "ada", "cart": "3"}));
        // The stored hash is the plugin's, with the configured TTL; shorten
        // it behind the plugin's back and see a read restore it.
        let key = redis_key("session-store", "session:abc");
        let mut conn = redis.client().await;
        let _: () = redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(5_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 60_000 && ttl <= 600_000,
            "refreshed to ttl-secs: {ttl} ms"
        );
        assert_eq!(c.delete(&url).send().await.unwrap().status(), 204);
        assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
        s.shutdown().await;
    })
    .await;
}

/// A plugin under its own ACL user (`acl = true`) may not `SCAN`; its
/// `keys.scan` runs on the host's connection (`key_scanner`), still only
/// over its own keys. Without the scanner the same call is refused by
/// Redis, which is what the scanner is for.
#[tokio::test]
async fn keys_scan_works_for_a_plugin_under_its_own_acl_user() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let host = connect(&redis).await;
        let name = unique("acl-scan");
        let user = acl_user(&host, &name).await;
        let context = || plugin_context(&name, Quotas::default());
        // Someone else's key, which the scan must not show.
        let mut conn = redis.client().await;
        let _: () = redis::cmd("SET")
            .arg(redis_key(&unique("acl-other"), "mine:1"))
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut without = Caps::new(Arc::new(context()), Some(user.clone()));
        for i in 0..3 {
            ok(set::Host::add(&mut without, format!("mine:{i}"), strings(&["m"])).await);
        }
        let refused = err(keys::Host::scan(&mut without, "*".into(), 0, 100).await);
        assert!(matches!(refused, Error::Denied(_)), "{refused:?}");
        let scanning = context();
        scanning.key_scanner.set(host.clone()).ok().unwrap();
        let mut with = Caps::new(Arc::new(scanning), Some(user));
        let found = scan_all(&mut with, "*").await;
        assert_eq!(found, strings(&["mine:0", "mine:1", "mine:2"]));
    })
    .await;
}

/// A batch runs as one `MULTI`/`EXEC`: a reader polling both counters
/// while batches raise them together never sees one ahead of the other;
/// a command that fails (a wrong type) fails alone; keys of two slot groups
/// and an empty batch are refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_atomically() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let name = unique("batch");
        let mut c = caps(&redis, &name, Quotas::default()).await;
        use batch::{Command as B, Host as _, Reply};
        let replies = ok(c
            .run(vec![
                B::ListPush((
                    "{feed}ada".into(),
                    End::Front,
                    vec![b"a".to_vec(), b"b".to_vec()],
                )),
                B::ListTrim(("{feed}ada".into(), 0, 0)),
                B::ListRange(("{feed}ada".into(), 0, -1)),
                B::HashIncrement(("{feed}stats".into(), "posts".into(), 2)),
                B::Get("{feed}missing".into()),
                B::HashGet(("{feed}ada".into(), "f".into())),
                B::SortedSetIncrement(("{feed}z".into(), "m".into(), 1.5)),
            ])
            .await);
        assert_eq!(c.redis_ops(), 7, "each command is charged");
        assert!(
            matches!(replies[0], Ok(Reply::Integer(2))),
            "{:?}",
            replies[0]
        );
        assert!(matches!(replies[1], Ok(Reply::Done)), "{:?}", replies[1]);
        assert!(
            matches!(&replies[2], Ok(Reply::Values(v)) if v == &vec![b"b".to_vec()]),
            "{:?}",
            replies[2]
        );
        assert!(
            matches!(replies[3], Ok(Reply::Integer(2))),
            "{:?}",
            replies[3]
        );
        assert!(
            matches!(replies[4], Ok(Reply::Value(None))),
            "{:?}",
            replies[4]
        );
        assert!(
            matches!(&replies[5], Err(Error::InvalidArgument(m)) if m.contains("another type")),
            "the wrong-type command fails alone: {:?}",
            replies[5]
        );
        assert!(
            matches!(replies[6], Ok(Reply::Number(Some(n))) if n == 1.5),
            "{:?}",
            replies[6]
        );
        let before = c.redis_ops();
        let e = err(c
            .run(vec![B::Get("{a}x".into()), B::Get("{b}y".into())])
            .await);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("slot group")),
            "{e:?}"
        );
        assert!(matches!(
            err(c.run(Vec::new()).await),
            Error::InvalidArgument(_)
        ));
        assert_eq!(c.redis_ops(), before, "nothing reached Redis");
        // Atomicity, watched from outside.
        let (a, b) = (redis_key(&name, "{pair}a"), redis_key(&name, "{pair}b"));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = tokio::spawn({
            let (done, mut conn) = (done.clone(), redis.client().await);
            async move {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let (x, y): (Option<i64>, Option<i64>) = redis::cmd("MGET")
                        .arg(&a)
                        .arg(&b)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert_eq!(x, y, "a half-applied batch was visible");
                    reads += 1;
                }
                reads
            }
        });
        for _ in 0..300 {
            let replies = ok(c
                .run(vec![
                    B::Increment(("{pair}a".into(), 1)),
                    B::Increment(("{pair}b".into(), 1)),
                ])
                .await);
            assert!(replies.iter().all(Result::is_ok), "{replies:?}");
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let reads = reader.await.expect("the reader saw no half batch");
        assert!(reads > 0);
    })
    .await;
}

/// An optimistic transaction commits when its watched key is unchanged and
/// returns `none` (running nothing) when someone wrote it in between;
/// reads see the watched state, writes are refused outside commit, and an
/// instance holds at most MAX_TRANSACTIONS open.
#[tokio::test]
async fn transactions_commit_unless_a_watched_key_changed() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let name = unique("txn");
        let mut c = caps(&redis, &name, Quotas::default()).await;
        use batch::{Command as B, HostTransaction as T, Reply};
        use wasmtime::component::Resource;
        let borrow =
            |t: &Resource<batch::Transaction>| Resource::<batch::Transaction>::new_borrow(t.rep());
        let balance = || "{acct}balance".to_string();
        ok(kv::Host::set(
            &mut c,
            balance(),
            b"100".to_vec(),
            kv::SetOptions {
                ttl_ms: None,
                condition: kv::SetCondition::Always,
            },
        )
        .await);
        // Unchanged: the commit runs.
        let t = ok(T::watch(&mut c, vec![balance()]).await);
        let read = ok(T::read(&mut c, borrow(&t), B::Get(balance())).await);
        assert!(
            matches!(&read, Reply::Value(Some(v)) if v == b"100"),
            "{read:?}"
        );
        let e = err(T::read(&mut c, borrow(&t), B::Set((balance(), b"x".to_vec()))).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = err(T::read(&mut c, borrow(&t), B::Get("{other}k".into())).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let committed = ok(T::commit(
            &mut c,
            borrow(&t),
            vec![B::Set((balance(), b"90".to_vec()))],
        )
        .await);
        assert!(committed.is_some(), "nobody else wrote: it commits");
        let e = err(T::commit(&mut c, borrow(&t), vec![B::Get(balance())]).await);
        assert!(
            matches!(e, Error::InvalidArgument(_)),
            "a transaction commits once: {e:?}"
        );
        T::drop(&mut c, t).await.unwrap();
        // Changed meanwhile (by another client): nothing runs.
        let t = ok(T::watch(&mut c, vec![balance()]).await);
        let mut conn = redis.client().await;
        let _: () = redis::cmd("SET")
            .arg(redis_key(&name, "{acct}balance"))
            .arg("50")
            .query_async(&mut conn)
            .await
            .unwrap();
        let aborted = ok(T::commit(
            &mut c,
            borrow(&t),
            vec![B::Set((balance(), b"40".to_vec()))],
        )
        .await);
        assert!(aborted.is_none(), "a watched key changed: {aborted:?}");
        assert_eq!(
            ok(kv::Host::get(&mut c, balance()).await),
            Some(b"50".to_vec()),
            "the aborted commit wrote nothing"
        );
        T::drop(&mut c, t).await.unwrap();
        // At most MAX_TRANSACTIONS at once.
        let mut open = Vec::new();
        for _ in 0..MAX_TRANSACTIONS {
            open.push(ok(T::watch(&mut c, vec![balance()]).await));
        }
        let e = err(T::watch(&mut c, vec![balance()]).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        for t in open {
            T::drop(&mut c, t).await.unwrap();
        }
        ok(T::watch(&mut c, vec![balance()]).await);
    })
    .await;
}

/// The activity-feed example: the feed never passes `max-length` (5 here),
/// newest first, and its counter counts every post, even with posts racing
/// (push, trim and count run as one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_feed_example_stays_capped() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve_examples(&redis, dir.path()).await;
        let c = http_client();
        let url = format!("http://{}/feeds/ada", s.addr);
        let mut posts = tokio::task::JoinSet::new();
        for i in 0..12 {
            let (c, url) = (c.clone(), url.clone());
            posts.spawn(async move {
                let r = c.post(url).body(format!("entry {i}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v["length"].as_i64().unwrap() <= 5, "over the cap: {v}");
            });
        }
        while let Some(done) = posts.join_next().await {
            done.unwrap();
        }
        let last: serde_json::Value = c
            .post(&url)
            .body("newest")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(last, serde_json::json!({"length": 5, "posted": 13}));
        let feed: Vec<String> = c
            .get(format!("{url}?n=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(feed.len(), 5, "{feed:?}");
        assert_eq!(feed[0], "newest");
        let too_big = c.post(&url).body(vec![b'x'; 2000]).send().await.unwrap();
        assert_eq!(too_big.status(), 400);
        s.shutdown().await;
    })
    .await;
}

/// The UTC date `days_ago` days ago, as `date -u +%F` writes it.
fn utc_date(days_ago: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - days_ago * 86_400;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%F"])
        .output()
        .expect("date runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The unique-visitors example: repeat visits count once, and the week is
/// the merge of the days (distinct visitors, not a sum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_visitors_example_counts_distinct_visitors() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = serve_examples(&redis, dir.path()).await;
        let c = http_client();
        // A run that straddles midnight (UTC) is repeated on another page.
        for (attempt, page) in ["home", "about"].into_iter().enumerate() {
            let day = utc_date(0);
            let url = format!("http://{}/visits/{page}", s.addr);
            for v in (0..40).chain(0..40) {
                let r = c
                    .post(&url)
                    .body(format!("visitor-{v}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
            let first: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
            // Yesterday: 40 visitors, half of them also today's, written
            // under the key the plugin gives that day.
            let mut conn = redis.client().await;
            let _: () = redis::cmd("PFADD")
                .arg(redis_key(
                    "unique-visitors",
                    &format!("{{visits:{page}}}{}", utc_date(1)),
                ))
                .arg((20..60).map(|v| format!("visitor-{v}")).collect::<Vec<_>>())
                .query_async(&mut conn)
                .await
                .unwrap();
            let second: serde_json::Value = c.get(&url).send().await.unwrap().json().await.unwrap();
            if utc_date(0) != day && attempt == 0 {
                continue;
            }
            let today = first["today"].as_u64().unwrap();
            assert!((39..=41).contains(&today), "{first}");
            assert_eq!(
                first["week"].as_u64().unwrap(),
                today,
                "one day so far: {first}"
            );
            let week = second["week"].as_u64().unwrap();
            assert!(
                (58..=62).contains(&week),
                "60 distinct over two days, not 80: {second}"
            );
            break;
        }
        let url = format!("http://{}/visits/home", s.addr);
        let bad = c.post(&url).body("").send().await.unwrap();
        assert_eq!(bad.status(), 400);
        s.shutdown().await;
    })
    .await;
}

/// Streams as event logs: add (with approximate trimming), ranges both
/// ways, reads after an id, length, exact trim and delete; a malformed id
/// is `invalid-argument`.
#[tokio::test]
async fn streams_append_and_read_by_id() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let quotas = Quotas {
            redis_ops: 5_000,
            ..Quotas::default()
        };
        let mut c = caps(&redis, &unique("stream"), quotas).await;
        use stream::Host as X;
        let log = || "audit".to_string();
        let mut ids = Vec::new();
        for i in 0..5 {
            let fields = vec![("n".to_string(), i.to_string().into_bytes())];
            ids.push(ok(X::add(&mut c, log(), fields, None).await));
        }
        assert_eq!(ok(X::length(&mut c, log()).await), 5);
        let all = ok(X::range(&mut c, log(), "-".into(), "+".into(), 100).await);
        assert_eq!(all.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(all[2].fields, vec![("n".to_string(), b"2".to_vec())]);
        let newest = ok(X::reverse_range(&mut c, log(), "+".into(), "-".into(), 2).await);
        assert_eq!(newest[0].id, ids[4]);
        assert_eq!(newest[1].id, ids[3]);
        let after = ok(X::read_after(&mut c, log(), ids[2].clone(), 100).await);
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].id, ids[3]);
        assert!(ok(X::read_after(&mut c, log(), ids[4].clone(), 10).await).is_empty());
        let exclusive = ok(X::range(&mut c, log(), format!("({}", ids[0]), "+".into(), 1).await);
        assert_eq!(exclusive[0].id, ids[1]);
        assert_eq!(
            ok(X::delete(&mut c, log(), vec![ids[0].clone(), "1-1".into()]).await),
            1
        );
        assert_eq!(ok(X::trim(&mut c, log(), 2).await), 2);
        assert_eq!(ok(X::length(&mut c, log()).await), 2);
        let e = err(X::range(&mut c, log(), "not an id".into(), "+".into(), 10).await);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let e = err(X::range(&mut c, log(), "abc".into(), "+".into(), 10).await);
        assert!(
            matches!(e, Error::InvalidArgument(_)),
            "Redis refuses it: {e:?}"
        );
        // max-length trims in the same command (about: Redis trims whole
        // nodes, so check it stays bounded well below what was added).
        for i in 0..1_000 {
            let fields = vec![("n".to_string(), i.to_string().into_bytes())];
            ok(X::add(&mut c, "capped".into(), fields, Some(100)).await);
        }
        let len = ok(X::length(&mut c, "capped".into()).await);
        assert!((100..1_000).contains(&len), "{len}");
    })
    .await;
}

/// A blocking pop waits for a value pushed by another client and returns
/// the list's key as the guest named it; with nothing pushed it returns
/// `none` once its timeout passes; a zero timeout is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pop_waits_for_a_push() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let name = unique("bpop");
        let mut c = caps(&redis, &name, Quotas::default()).await;
        use list::Host as L;
        let keys = || vec!["{jobs}high".to_string(), "{jobs}low".to_string()];
        // Nothing there: a short wait ends empty.
        let started = std::time::Instant::now();
        assert_eq!(
            ok(L::blocking_pop(&mut c, keys(), End::Front, 200).await),
            None
        );
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
        assert!(matches!(
            err(L::blocking_pop(&mut c, keys(), End::Front, 0).await),
            Error::InvalidArgument(_)
        ));
        // Another client pushes once the pop is waiting (it shows in
        // CLIENT LIST as a blocked BLPOP).
        let pusher = tokio::spawn({
            let key = redis_key(&name, "{jobs}low");
            let mut conn = redis.client().await;
            let redis_probe = redis.client().await;
            async move {
                let mut probe = redis_probe;
                for _ in 0..600 {
                    let clients: String = redis::cmd("CLIENT")
                        .arg("LIST")
                        .query_async(&mut probe)
                        .await
                        .unwrap_or_default();
                    if clients.contains("cmd=blpop") {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                let _: () = redis::cmd("RPUSH")
                    .arg(key)
                    .arg("job-1")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        });
        let popped = ok(L::blocking_pop(&mut c, keys(), End::Front, 60_000).await);
        assert_eq!(popped, Some(("{jobs}low".to_string(), b"job-1".to_vec())));
        pusher.await.unwrap();
        // A wait longer than the plugin's wall time is cut to it.
        let short = Quotas {
            wall_time: std::time::Duration::from_millis(300),
            ..Quotas::default()
        };
        let mut c = caps(&redis, &name, short).await;
        let started = std::time::Instant::now();
        assert_eq!(
            ok(L::blocking_pop(&mut c, keys(), End::Back, 3_600_000).await),
            None
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "an hour's wait ended with the 300 ms wall time: {:?}",
            started.elapsed()
        );
    })
    .await;
}

/// Writes `files` (name, Lua source) into `dir` and resolves them as the
/// manifest's `scripts` of an `acl = true` plugin.
fn plugin_scripts(dir: &std::path::Path, files: &[(&str, &str)]) -> PluginScripts {
    let mut raw = std::collections::BTreeMap::new();
    for (name, source) in files {
        let file = dir.join(format!("{name}.lua"));
        std::fs::write(&file, source).unwrap();
        raw.insert(name.to_string(), file);
    }
    PluginScripts::resolve("plugins.p", raw, dir, true).expect("scripts resolve")
}

/// A plugin's own scripts run as its ACL user with KEYS in its namespace:
/// numbers, strings and tables come back typed; a script that computes
/// another plugin's key is refused by Redis (`denied`), one that raises an
/// error is `invalid-argument`, an undeclared name too. A script that does
/// not compile fails the plugin's load, naming it.
#[tokio::test]
async fn plugin_scripts_run_inside_the_plugins_acl() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let scripts = plugin_scripts(
            dir.path(),
            &[
                ("add", "return redis.call('INCRBY', KEYS[1], ARGV[1])"),
                ("pair", "return {KEYS[1], tonumber(ARGV[1]) * 2, false}"),
                (
                    "sneaky",
                    "return redis.call('GET', 'rl:' .. ARGV[1] .. ':kv:secret')",
                ),
                ("boom", "error('boom')"),
            ],
        );
        let host = connect(&redis).await;
        let name = unique("scripted");
        let user = acl_user(&host, &name).await;
        let context = plugin_context(&name, Quotas::default()).with_scripts(scripts);
        let mut c = Caps::new(Arc::new(context), Some(user));
        use script::{Host as S, Item, ScriptReply};
        let added = ok(S::run(&mut c, "add".into(), vec!["n".into()], vec![b"5".to_vec()]).await);
        assert!(matches!(added, ScriptReply::Integer(5)), "{added:?}");
        let mut conn = redis.client().await;
        let stored: i64 = redis::cmd("GET")
            .arg(redis_key(&name, "n"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored, 5, "KEYS[1] was mapped into the namespace");
        let pair = ok(S::run(
            &mut c,
            "pair".into(),
            vec!["k".into()],
            vec![b"21".to_vec()],
        )
        .await);
        let ScriptReply::Items(items) = pair else {
            panic!("a table: {pair:?}");
        };
        assert!(matches!(&items[0], Item::Bytes(b) if b == redis_key(&name, "k").as_bytes()));
        assert!(matches!(items[1], Item::Integer(42)));
        assert!(matches!(items[2], Item::Nil));
        // Another plugin's key, computed inside the script.
        let other = unique("victim");
        let _: () = redis::cmd("SET")
            .arg(redis_key(&other, "secret"))
            .arg("s3cret")
            .query_async(&mut conn)
            .await
            .unwrap();
        let e = err(S::run(
            &mut c,
            "sneaky".into(),
            Vec::new(),
            vec![other.into_bytes()],
        )
        .await);
        assert!(
            matches!(e, Error::Denied(_)),
            "Redis refuses the key: {e:?}"
        );
        let e = err(S::run(&mut c, "boom".into(), Vec::new(), Vec::new()).await);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("boom")),
            "{e:?}"
        );
        let e = err(S::run(&mut c, "nope".into(), Vec::new(), Vec::new()).await);
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("no script")),
            "{e:?}"
        );
        // A script that does not compile stops the plugin's load.
        let h = redloom_tests::host(&redis, dir.path()).await;
        let mut spec = redloom_tests::spec(&unique("badscript"), "kv-probe");
        spec.acl = true;
        spec.scripts = plugin_scripts(dir.path(), &[("broken", "return (")]);
        let e = h.load(spec).await.err().expect("the load fails");
        assert!(e.to_string().contains("script `broken`"), "{e}");
    })
    .await;
}

/// A plugin cannot churn Redis connections: transactions (and blocking
/// pops) open connections of their own, at most OWN_CONNECTION_RATE per
/// second per plugin; a loop that opens and drops transactions meets
/// `quota-exceeded(redis-rate)` long before 200.
#[tokio::test]
async fn own_connections_are_rate_limited() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let mut c = caps(&redis, &unique("churn"), Quotas::default()).await;
        use batch::HostTransaction as T;
        let started = std::time::Instant::now();
        let mut opened = 0u64;
        let refused = loop {
            match T::watch(&mut c, vec!["k".into()]).await.expect("no trap") {
                Ok(t) => {
                    opened += 1;
                    T::drop(&mut c, t).await.unwrap();
                }
                Err(e) => break e,
            }
            assert!(opened < 200, "200 connections opened without a refusal");
        };
        assert!(
            matches!(refused, Error::QuotaExceeded(Quota::RedisRate)),
            "{refused:?}"
        );
        // The bucket's second of burst plus what refilled meanwhile.
        let allowed = OWN_CONNECTION_RATE
            + (started.elapsed().as_secs_f64() * OWN_CONNECTION_RATE as f64).ceil() as u64;
        assert!(
            opened <= allowed,
            "{opened} opened, at most {allowed} allowed"
        );
        assert!(c.broken_quota().is_some(), "the breach is recorded");
    })
    .await;
}
