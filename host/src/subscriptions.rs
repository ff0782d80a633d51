//! What a plugin's manifest subscribes to (`subscriptions`,
//! `keyspace-events`), as Redis names it: the channels and patterns the
//! pub/sub trigger (`triggers::pubsub`) subscribes to, and the channel rules
//! a plugin's ACL user needs for them (`host.rs`, when it creates the user).

use std::collections::BTreeMap;

use crate::config::TriggerConfig;
use crate::namespace::{Namespace, PluginName, SHARED_CHANNEL_PREFIX};

/// How one Redis channel or pattern's messages reach its plugin.
#[derive(Clone)]
pub struct Target {
    /// The pattern as the manifest gives it; `None` for a plain channel.
    pub pattern: Option<String>,
    /// Strips the Redis channel back to the plugin's name for it.
    pub prefix: String,
    /// For keyspace subscriptions: the events the plugin wants.
    pub events: Option<Vec<String>>,
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// What one plugin subscribes to, as Redis names it, and where each
/// channel's or pattern's messages go.
pub struct Subscriptions {
    pub channels: BTreeMap<String, Vec<Target>>,
    pub patterns: BTreeMap<String, Vec<Target>>,
    /// The `notify-keyspace-events` flags the plugin needs ("" if none).
    pub keyspace_flags: String,
}

/// Maps the manifest's `subscriptions` and `keyspace-events` of plugin
/// `name` to Redis channels and patterns (`db`: the database number, for
/// keyspace channels).
pub fn subscriptions(
    name: &PluginName,
    t: &TriggerConfig,
    db: i64,
) -> anyhow::Result<Subscriptions> {
    let mut out = Subscriptions {
        channels: BTreeMap::new(),
        patterns: BTreeMap::new(),
        keyspace_flags: String::new(),
    };
    let ns = Namespace::new(name);
    for sub in &t.subscriptions {
        let shared = crate::namespace::is_shared(&t.shared_channels, sub);
        let redis_name = ns
            .channel(sub, shared)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let prefix = if shared {
            SHARED_CHANNEL_PREFIX.to_string()
        } else {
            ns.channel_prefix()
        };
        let pattern = is_pattern(sub);
        let target = Target {
            pattern: pattern.then(|| sub.clone()),
            prefix,
            events: None,
        };
        if pattern {
            out.patterns.entry(redis_name).or_default().push(target);
        } else {
            out.channels.entry(redis_name).or_default().push(target);
        }
    }
    if !t.keyspace_events.is_empty() {
        for e in &t.keyspace_events {
            let flag = match e.as_str() {
                "expired" => "x",
                "evicted" => "e",
                "new" => "n",
                _ => "$g",
            };
            out.keyspace_flags.push_str(flag);
        }
        let prefix = format!("__keyspace@{db}__:{}kv:", ns.prefix());
        out.patterns
            .entry(format!("{prefix}*"))
            .or_default()
            .push(Target {
                pattern: Some("__keyspace__".into()),
                prefix,
                events: Some(t.keyspace_events.clone()),
            });
    }
    Ok(out)
}

/// The channel rules (`&pattern`) the ACL user of plugin `name` needs on top
/// of its own and shared channels, so its subscriber connection may
/// `PSUBSCRIBE` to each pattern the manifest subscribes to (keyspace events
/// included): Redis compares a `PSUBSCRIBE` pattern with the rules
/// literally. Each rule also lets the user `PUBLISH` to the channels the
/// pattern matches, which are channels the plugin hears already.
pub fn acl_patterns(name: &PluginName, t: &TriggerConfig, db: i64) -> anyhow::Result<Vec<String>> {
    Ok(subscriptions(name, t, db)?
        .patterns
        .into_keys()
        .map(|p| format!("&{p}"))
        .collect())
}
