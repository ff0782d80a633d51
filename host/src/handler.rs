//! The handlers a plugin can export, as one type.
//!
//! A [`HandlerKind`] is the one place that knows, for each handler, its name
//! (in the manifest, `redloom check`, errors and metrics labels), the WIT
//! interface a component exports for it, and the world the SDK builds it
//! from. Everything else (load, dispatch in [`crate::plugin`], the
//! configuration check of `serve`, the CLI) asks it instead of spelling the
//! strings out. Adding a trigger is a variant here plus its arms in
//! `crate::plugin` (the generated guest types differ per handler).
//!
//! This module depends on nothing else in the crate.

use std::fmt;

/// The WIT package the host speaks, as it appears in import and export names.
pub const WIT_PACKAGE: &str = "redloom:plugin@0.2.0";

/// One kind of handler a component can export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandlerKind {
    /// `invoke`: bytes in, bytes out (`redloom invoke`).
    Invoke,
    /// `http`: a request from a route of `serve`.
    Http,
    /// `message`: a pub/sub message or keyspace event.
    Message,
    /// `timer`: a tick of one of the plugin's timers.
    Timer,
    /// `queue`: a job from a queue the plugin consumes.
    Queue,
}

impl HandlerKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [HandlerKind; 5] = [
        HandlerKind::Invoke,
        HandlerKind::Http,
        HandlerKind::Message,
        HandlerKind::Timer,
        HandlerKind::Queue,
    ];

    /// The handler's name: the SDK's `export!` list, the `redloom check`
    /// report, errors and the metrics' `handler` label.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Invoke => "invoke",
            HandlerKind::Http => "http",
            HandlerKind::Message => "message",
            HandlerKind::Timer => "timer",
            HandlerKind::Queue => "queue",
        }
    }

    /// The WIT interface a component exports for this handler.
    pub fn export(self) -> &'static str {
        match self {
            HandlerKind::Invoke => "redloom:plugin/invoke@0.2.0",
            HandlerKind::Http => "redloom:plugin/http-handler@0.2.0",
            HandlerKind::Message => "redloom:plugin/message-handler@0.2.0",
            HandlerKind::Timer => "redloom:plugin/timer-handler@0.2.0",
            HandlerKind::Queue => "redloom:plugin/queue-handler@0.2.0",
        }
    }

    /// The world in `wit/worlds.wit` that exports only this handler.
    pub fn world(self) -> String {
        format!("redloom:plugin/{}-plugin", self.name())
    }

    /// The kind named `name` (see [`HandlerKind::name`]).
    pub fn parse(name: &str) -> Option<HandlerKind> {
        HandlerKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for HandlerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names, exports and worlds are distinct, and every name parses back
    /// to its kind.
    #[test]
    fn kinds_round_trip() {
        for k in HandlerKind::ALL {
            assert_eq!(HandlerKind::parse(k.name()), Some(k));
            assert!(k.export().starts_with("redloom:plugin/"), "{k}");
            assert!(k.export().ends_with(&WIT_PACKAGE["redloom:plugin".len()..]));
            for other in HandlerKind::ALL.into_iter().filter(|o| *o != k) {
                assert_ne!(k.name(), other.name());
                assert_ne!(k.export(), other.export());
            }
        }
        assert_eq!(HandlerKind::parse("tick"), None);
        assert_eq!(HandlerKind::Queue.world(), "redloom:plugin/queue-plugin");
    }

    /// Each world named here exists in `wit/worlds.wit` and exports the
    /// handler's interface.
    #[test]
    fn worlds_exist_in_the_wit() {
        let wit = include_str!("../../wit/worlds.wit");
        for k in HandlerKind::ALL {
            let world = format!("world {}-plugin {{", k.name());
            let start = wit
                .find(&world)
                .unwrap_or_else(|| panic!("wit/worlds.wit has no `{world}`"));
            let body = &wit[start..start + wit[start..].find('}').unwrap()];
            let interface = k.export()["redloom:plugin/".len()..]
                .split('@')
                .next()
                .unwrap();
            assert!(
                body.contains(&format!("export {interface};")),
                "`{world}` does not export {interface}: {body}"
            );
        }
    }
}
