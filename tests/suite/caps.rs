//! Capability-level tests: each drives a capability's host implementation
//! (`Caps` and the WIT `Host` traits) directly against a real Redis,
//! without compiling or running a guest. The layer for checking what a
//! capability sends and charges; the other suites check the same through
//! a plugin.

use redloom::bindings::kv::{Host as _, SetCondition, SetOptions};
use redloom::bindings::lock::Host as _;
use redloom::bindings::types::{Error, Quota};
use redloom::config::Quotas;
use redloom::namespace::{Namespace, PluginName};
use redloom_tests::{RedisServer, caps, unique, with_timeout};

fn set_options() -> SetOptions {
    SetOptions {
        ttl_ms: None,
        condition: SetCondition::Always,
    }
}

fn ns(plugin: &str) -> Namespace {
    Namespace::new(&PluginName::parse(plugin).unwrap())
}

/// Two plugins' kv capabilities on the same Redis: each reads its own
/// value back, neither sees the other's, and Redis holds each value under
/// its plugin's namespace.
#[tokio::test]
async fn kv_keys_live_in_each_plugins_namespace() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let (a, b) = (unique("caps-a"), unique("caps-b"));
        let mut ca = caps(&redis, &a, Quotas::default()).await;
        let mut cb = caps(&redis, &b, Quotas::default()).await;
        assert!(
            ca.set("k".into(), b"from-a".to_vec(), set_options())
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            ca.get("k".into()).await.unwrap().unwrap(),
            Some(b"from-a".to_vec())
        );
        assert_eq!(cb.get("k".into()).await.unwrap().unwrap(), None);
        let mut conn = redis.client().await;
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(ns(&a).kv("k").unwrap())
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(stored.as_deref(), Some(&b"from-a"[..]));
        assert_eq!(ca.redis_ops(), 2, "one command per call");
        assert_eq!(cb.redis_ops(), 1);
    })
    .await;
}

/// Every command is charged to `redis-ops`: with a quota of 3, the fourth
/// call fails with `quota-exceeded(redis-ops)` before reaching Redis, and
/// the breach is recorded for the invocation.
#[tokio::test]
async fn every_command_is_charged_to_redis_ops() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let quotas = Quotas {
            redis_ops: 3,
            ..Quotas::default()
        };
        let mut c = caps(&redis, &unique("caps-ops"), quotas).await;
        for _ in 0..3 {
            c.get("k".into()).await.unwrap().unwrap();
        }
        let fourth = c.get("k".into()).await.unwrap();
        assert!(
            matches!(fourth, Err(Error::QuotaExceeded(Quota::RedisOps))),
            "{fourth:?}"
        );
        assert_eq!(c.redis_ops(), 3);
        let broken = c.broken_quota().expect("the breach is recorded");
        assert_eq!(broken.quota, redloom::quota::Quota::RedisOps);
    })
    .await;
}

/// A lock still held when the invocation ends is released by its cleanup:
/// the lock's key is in Redis after `try-acquire` and gone after `finish`.
#[tokio::test]
async fn a_lock_left_held_is_released_at_the_end() {
    with_timeout(async {
        let redis = RedisServer::start().await;
        let plugin = unique("caps-lock");
        let mut c = caps(&redis, &plugin, Quotas::default()).await;
        let handle = c.try_acquire("job".into(), 60_000).await.unwrap().unwrap();
        assert!(handle.is_some(), "an uncontended lock is taken");
        let key = ns(&plugin).lock("job").unwrap().lock;
        let mut conn = redis.client().await;
        let held: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(held, 1, "the lock key {key} is not in Redis");
        assert!(c.is_locked("job".into()).await.unwrap().unwrap());
        c.finish().await;
        let after: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(after, 0, "the lock key {key} outlived the invocation");
    })
    .await;
}
