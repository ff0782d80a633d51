//! The procedural macro behind `redloom_sdk::export!`. Use it through
//! `redloom-sdk`; the expansion names `::redloom_sdk` paths and works nowhere
//! else.
//!
//! # What `export!(Plugin => [invoke])` expands to
//!
//! ```text
//! const _: () = {
//!     mod bindings {
//!         ::redloom_sdk::__private::wit_bindgen::generate!({
//!             path: "<repo>/wit",
//!             inline: "package redloom:plugin-instance;
//!                      world plugin {
//!                          include redloom:plugin/imports@0.2.0;
//!                          export redloom:plugin/invoke@0.2.0;
//!                      }",
//!             world: "redloom:plugin-instance/plugin",
//!             with: { "redloom:plugin/kv@0.2.0": ::redloom_sdk::__private::bindings::redloom::plugin::kv, ... },
//!             runtime_path: "::redloom_sdk::__private::wit_bindgen::rt",
//!         });
//!     }
//!     struct Exports;
//!     impl bindings::exports::redloom::plugin::invoke::Guest for Exports {
//!         fn handle(input: Vec<u8>) -> Result<Vec<u8>, WitError> {
//!             ::redloom_sdk::__private::invoke::<Plugin>(input)
//!         }
//!     }
//!     bindings::export!(Exports with_types_in bindings);
//! };
//! ```
//!
//! The world is built per plugin, so the component exports only the handlers
//! named. Every imported interface is mapped onto the SDK's own generated
//! bindings (`with`), so there is one copy of the import glue and the plugin
//! crate needs no `wit-bindgen` dependency of its own. Imports the plugin never
//! calls are dropped when the component is made (wit-component keeps only the
//! imports the core module uses).
//!
//! # Adding a handler
//!
//! Add its WIT interface, its trait and `__private` glue in `redloom-sdk`, and
//! one row to [`HANDLERS`] here.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Token, bracketed};

/// The WIT package every interface below belongs to.
const PACKAGE: &str = "redloom:plugin";
/// Its version; the `@` suffix of every interface name.
const VERSION: &str = "0.2.0";

/// The interfaces of the `imports` world (and the `types` they use). Each is
/// mapped onto the SDK's bindings; `wit-bindgen` rejects a world that imports
/// an interface missing here, so this list and `wit/worlds.wit` stay in step
/// (a test below checks it too).
const IMPORTS: &[&str] = &[
    "types",
    "kv",
    "log",
    "config",
    "lock",
    "http-types",
    "outbound-http",
    "limiter",
    "cache",
    "pubsub",
    "queue",
    "hash",
    "set",
    "sorted-set",
    "list",
    "hyperloglog",
    "keys",
    "batch",
    "stream",
    "script",
];

/// A handler the SDK can export.
struct Handler {
    /// The name used in `export!(T => [name])`.
    name: &'static str,
    /// The WIT interface it exports, without package and version.
    interface: &'static str,
    /// The SDK trait the plugin type must implement.
    sdk_trait: &'static str,
    /// The adapter: an impl of the generated `Guest` trait (in the generated
    /// export module at `module`) for the `exports` type that calls the
    /// plugin type's SDK trait.
    adapter: fn(module: &TokenStream2, exports: &Ident, plugin: &syn::Type) -> TokenStream2,
}

/// Every handler `export!` knows, in the order the docs list them.
const HANDLERS: &[Handler] = &[
    Handler {
        name: "invoke",
        interface: "invoke",
        sdk_trait: "Invoke",
        adapter: |module, exports, plugin| {
            quote! {
                impl #module::Guest for #exports {
                    fn handle(
                        input: ::std::vec::Vec<u8>,
                    ) -> ::std::result::Result<::std::vec::Vec<u8>, ::redloom_sdk::__private::WitError> {
                        ::redloom_sdk::__private::invoke::<#plugin>(input)
                    }
                }
            }
        },
    },
    Handler {
        name: "http",
        interface: "http-handler",
        sdk_trait: "Http",
        adapter: |module, exports, plugin| {
            quote! {
                impl #module::Guest for #exports {
                    fn handle(
                        request: ::redloom_sdk::__private::bindings::redloom::plugin::http_types::Request,
                    ) -> ::std::result::Result<
                        ::redloom_sdk::__private::bindings::redloom::plugin::http_types::Response,
                        ::redloom_sdk::__private::WitError,
                    > {
                        ::redloom_sdk::__private::http::<#plugin>(request)
                    }
                }
            }
        },
    },
    Handler {
        name: "message",
        interface: "message-handler",
        sdk_trait: "OnMessage",
        adapter: |module, exports, plugin| {
            quote! {
                impl #module::Guest for #exports {
                    fn handle(
                        message: #module::Message,
                    ) -> ::std::result::Result<(), ::redloom_sdk::__private::WitError> {
                        ::redloom_sdk::__private::on_message::<#plugin>(
                            message.channel,
                            message.pattern,
                            message.payload,
                        )
                    }
                }
            }
        },
    },
    Handler {
        name: "timer",
        interface: "timer-handler",
        sdk_trait: "OnTick",
        adapter: |module, exports, plugin| {
            quote! {
                impl #module::Guest for #exports {
                    fn handle(tick: #module::Tick) -> ::std::result::Result<(), ::redloom_sdk::__private::WitError> {
                        ::redloom_sdk::__private::on_tick::<#plugin>(tick.timer, tick.scheduled_ms)
                    }
                }
            }
        },
    },
    Handler {
        name: "queue",
        interface: "queue-handler",
        sdk_trait: "OnJob",
        adapter: |module, exports, plugin| {
            quote! {
                impl #module::Guest for #exports {
                    fn handle(job: #module::Job) -> ::std::result::Result<(), ::redloom_sdk::__private::WitError> {
                        ::redloom_sdk::__private::on_job::<#plugin>(::redloom_sdk::queue::Job {
                            queue: job.queue,
                            id: job.id,
                            payload: job.payload,
                            headers: job.headers,
                            attempt: job.attempt,
                            enqueued_ms: job.enqueued_ms,
                        })
                    }
                }
            }
        },
    },
];

/// `Type => [handler, ...]`
struct Input {
    plugin: syn::Type,
    handlers: Vec<Ident>,
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let plugin: syn::Type = input.parse()?;
        input.parse::<Token![=>]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `=>` and a list of handlers, e.g. `export!(MyPlugin => [invoke])`",
            )
        })?;
        let content;
        bracketed!(content in input);
        let handlers = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
        input.parse::<Option<Token![;]>>()?;
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the handler list"));
        }
        Ok(Input {
            plugin,
            handlers: handlers.into_iter().collect(),
        })
    }
}

/// Exports a type's handlers from a plugin component; see `redloom_sdk::export!`.
#[proc_macro]
pub fn export(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as Input);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &Input) -> syn::Result<TokenStream2> {
    let handlers = resolve_handlers(&input.handlers)?;
    let plugin = &input.plugin;
    let bindings = format_ident!("__redloom_bindings");
    let exports = format_ident!("__RedloomExports");

    let mut world = format!(
        "package {PACKAGE}-instance;\nworld plugin {{\n    include {PACKAGE}/imports@{VERSION};\n"
    );
    for h in &handlers {
        world.push_str(&format!(
            "    export {PACKAGE}/{}@{VERSION};\n",
            h.interface
        ));
    }
    world.push_str("}\n");

    let with_keys = IMPORTS.iter().map(|i| format!("{PACKAGE}/{i}@{VERSION}"));
    let with_paths = IMPORTS.iter().map(|i| {
        let module = Ident::new(&i.replace('-', "_"), Span::call_site());
        quote!(::redloom_sdk::__private::bindings::redloom::plugin::#module)
    });
    let wit_dir = wit_dir();
    let world_name = format!("{PACKAGE}-instance/plugin");

    let adapters = handlers.iter().map(|h| {
        let module = Ident::new(&h.interface.replace('-', "_"), Span::call_site());
        let module = quote!(#bindings::exports::redloom::plugin::#module);
        (h.adapter)(&module, &exports, plugin)
    });

    Ok(quote! {
        const _: () = {
            #[allow(clippy::all, unused, missing_docs, unsafe_op_in_unsafe_fn)]
            mod #bindings {
                ::redloom_sdk::__private::wit_bindgen::generate!({
                    path: #wit_dir,
                    inline: #world,
                    world: #world_name,
                    with: { #( #with_keys: #with_paths, )* },
                    runtime_path: "::redloom_sdk::__private::wit_bindgen::rt",
                });
            }

            struct #exports;

            #( #adapters )*

            #bindings::export!(#exports with_types_in #bindings);
        };
    })
}

/// Looks up every named handler; unknown and repeated names are errors that
/// point at the name.
fn resolve_handlers(names: &[Ident]) -> syn::Result<Vec<&'static Handler>> {
    if names.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            format!(
                "name at least one handler to export; known handlers: {}",
                known_handlers()
            ),
        ));
    }
    let mut found: Vec<&'static Handler> = Vec::new();
    for name in names {
        let Some(h) = HANDLERS.iter().find(|h| name == h.name) else {
            return Err(syn::Error::new(
                name.span(),
                format!(
                    "unknown handler `{name}`; known handlers: {}",
                    known_handlers()
                ),
            ));
        };
        if found.iter().any(|f| f.name == h.name) {
            return Err(syn::Error::new(
                name.span(),
                format!("handler `{name}` is named twice"),
            ));
        }
        found.push(h);
    }
    Ok(found)
}

fn known_handlers() -> String {
    HANDLERS
        .iter()
        .map(|h| format!("`{}` (trait `redloom_sdk::{}`)", h.name, h.sdk_trait))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The repository's `wit/` folder, as an absolute path: the expansion runs
/// `generate!` in the plugin crate, whose own manifest folder says nothing
/// about where the WIT lives.
fn wit_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_wit(file: &str) -> String {
        let path = format!("{}/{file}", wit_dir());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `IMPORTS` lists exactly the interfaces the `imports` world imports,
    /// plus `types` and `http-types`, so the macro's `with` map covers the world.
    #[test]
    fn imports_match_the_imports_world() {
        let worlds = read_wit("worlds.wit");
        let start = worlds.find("world imports {").expect("world imports");
        let body = &worlds[start..start + worlds[start..].find('}').expect("end of world")];
        let mut imported: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("import "))
            // `%list`: a WIT keyword, escaped.
            .map(|l| l.trim_end_matches(';').trim().trim_start_matches('%'))
            .collect();
        // Interfaces the imported ones `use` types from.
        imported.push("types");
        imported.push("http-types");
        imported.sort_unstable();
        let mut listed = IMPORTS.to_vec();
        listed.sort_unstable();
        assert_eq!(imported, listed);
    }

    /// Every handler names an interface that exists in the package, at the
    /// package version the macro assumes.
    #[test]
    fn handlers_exist_in_the_wit_package() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit");
        let all: String = std::fs::read_dir(dir)
            .expect("wit/")
            .map(|e| {
                e.expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 name")
            })
            .filter(|n| n.ends_with(".wit"))
            .map(|f| read_wit(&f))
            .collect();
        assert!(all.contains(&format!("package {PACKAGE}@{VERSION};")));
        for h in HANDLERS {
            assert!(
                all.contains(&format!("interface {} {{", h.interface)),
                "{}",
                h.interface
            );
        }
    }

    /// Unknown, repeated and missing handler names are rejected.
    #[test]
    fn handler_list_is_checked() {
        let id = |s: &str| Ident::new(s, Span::call_site());
        assert!(resolve_handlers(&[id("invoke")]).is_ok());
        assert!(resolve_handlers(&[]).is_err());
        assert!(resolve_handlers(&[id("nope")]).is_err());
        assert!(resolve_handlers(&[id("invoke"), id("invoke")]).is_err());
    }

    /// The expansion builds a world that exports only the named handler.
    #[test]
    fn expansion_exports_only_named_handlers() {
        let input: Input = syn::parse_str("my::Plugin => [invoke]").unwrap();
        let out = expand(&input).unwrap().to_string();
        assert!(out.contains("export redloom:plugin/invoke@0.2.0;"));
        assert_eq!(out.matches("export redloom:plugin/").count(), 1);
        assert!(out.contains(":: redloom_sdk :: __private :: invoke :: < my :: Plugin >"));
    }
}
