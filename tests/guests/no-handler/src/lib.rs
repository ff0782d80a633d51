//! Test guest: a well-formed component that imports `redloom:plugin/kv` but
//! exports no redloom handler — only a `ping` function of its own. The host
//! must refuse to load it ("does not export redloom:plugin/invoke").
//!
//! It uses wit-bindgen directly because the SDK's `export!` always exports a
//! redloom handler.

wit_bindgen::generate!({
    path: "../../../wit",
    inline: "
        package redloom-test:no-handler;

        world no-handler {
            include redloom:plugin/imports@0.2.0;

            /// Not a redloom handler.
            export ping: func() -> string;
        }
    ",
    world: "redloom-test:no-handler/no-handler",
    // The redloom interfaces live in another package; generate them here.
    generate_all,
});

struct NoHandler;

impl Guest for NoHandler {
    fn ping() -> String {
        // A real call, so the component keeps its `kv` import.
        match redloom::plugin::kv::get("ping") {
            Ok(Some(_)) => "pong (stored)".to_owned(),
            Ok(None) => "pong".to_owned(),
            Err(e) => format!("pong ({e})"),
        }
    }
}

export!(NoHandler);
