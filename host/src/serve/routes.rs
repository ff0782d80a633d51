//! `[[routes]]`: method + path pattern → plugin, matched with `matchit`.
//!
//! Patterns use `:name` for one segment and `*name` for the rest of the
//! path (`/users/:id`, `/files/*path`); they are translated to matchit's
//! `{name}` / `{*name}` syntax.

use std::collections::BTreeMap;

use crate::config::Route;
use crate::namespace::PluginName;

/// What a request matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found {
        plugin: PluginName,
        params: Vec<(String, String)>,
    },
    /// The path exists, but not for this method.
    MethodNotAllowed,
    NotFound,
}

/// Routes by method (`None`: any method).
#[derive(Default)]
pub struct RouteTable {
    by_method: BTreeMap<Option<String>, matchit::Router<PluginName>>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        for (i, r) in routes.iter().enumerate() {
            // `redloom.toml:12: routes[3].path ...`, as the configuration's
            // own errors read.
            let at = if r.at.is_empty() {
                String::new()
            } else {
                format!("{}: ", r.at)
            };
            let plugin =
                PluginName::parse(&r.plugin).map_err(|e| format!("{at}routes[{i}].plugin: {e}"))?;
            table
                .by_method
                .entry(r.method.clone())
                .or_default()
                .insert(translate(&r.path), plugin)
                .map_err(|e| format!("{at}routes[{i}].path `{}`: {e}", r.path))?;
        }
        Ok(table)
    }

    pub fn lookup(&self, method: &str, path: &str) -> Match {
        for key in [Some(method.to_string()), None] {
            if let Some(router) = self.by_method.get(&key)
                && let Ok(m) = router.at(path)
            {
                return Match::Found {
                    plugin: m.value.clone(),
                    params: m
                        .params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                };
            }
        }
        if self.by_method.values().any(|r| r.at(path).is_ok()) {
            Match::MethodNotAllowed
        } else {
            Match::NotFound
        }
    }
}

fn translate(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| {
            if let Some(name) = seg.strip_prefix(':') {
                format!("{{{name}}}")
            } else if let Some(name) = seg.strip_prefix('*') {
                format!("{{*{name}}}")
            } else {
                seg.replace('{', "{{").replace('}', "}}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Option<&str>, path: &str, plugin: &str) -> Route {
        Route {
            method: method.map(String::from),
            path: path.into(),
            plugin: plugin.into(),
            at: String::new(),
        }
    }

    /// Parameters, wildcards, method fallbacks, 404 and 405.
    #[test]
    fn matching() {
        let t = RouteTable::new(&[
            route(Some("GET"), "/users/:id", "users"),
            route(None, "/files/*path", "files"),
            route(Some("POST"), "/users", "create"),
        ])
        .unwrap();
        let found = |m: Match| match m {
            Match::Found { plugin, params } => (plugin.to_string(), params),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            found(t.lookup("GET", "/users/42")),
            ("users".into(), vec![("id".into(), "42".into())])
        );
        assert_eq!(
            found(t.lookup("DELETE", "/files/a/b.txt")),
            ("files".into(), vec![("path".into(), "a/b.txt".into())])
        );
        assert_eq!(t.lookup("POST", "/users/42"), Match::MethodNotAllowed);
        assert_eq!(t.lookup("GET", "/nothing"), Match::NotFound);
        assert!(RouteTable::new(&[route(None, "/a/:x", "p"), route(None, "/a/:y", "p")]).is_err());
    }

    /// A conflict found when the routes are put together names the file
    /// and line of the route, like every configuration error.
    #[test]
    fn a_conflict_names_its_line() {
        let text = "[plugins.p]\nwasm = \"p.wasm\"\n\n[[routes]]\npath = \"/a/:x\"\nplugin = \"p\"\n\n[[routes]]\npath = \"/a/:y\"\nplugin = \"p\"\n";
        let config =
            crate::config::Config::parse(text, std::path::Path::new("dir/redloom.toml")).unwrap();
        let Err(e) = RouteTable::new(&config.routes) else {
            panic!("the routes conflict");
        };
        assert!(
            e.starts_with("dir/redloom.toml:9: routes[1].path `/a/:y`"),
            "{e}"
        );
    }
}
