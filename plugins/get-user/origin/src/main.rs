//! A tiny user service, the origin behind the get-user example's cache.
//!
//! `user-origin [ADDR]` (default 127.0.0.1:8081) serves `GET /users/{id}`
//! for ids 1, 2 and 3 as JSON and 404 for the rest, printing every request
//! it serves, so the demo shows which requests the cache absorbed.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;

const USERS: &[(&str, &str)] = &[
    ("1", "Ada Lovelace"),
    ("2", "Grace Hopper"),
    ("3", "Edsger Dijkstra"),
];

async fn user(Path(id): Path<String>) -> (StatusCode, String) {
    println!("origin: GET /users/{id}");
    match USERS.iter().find(|(i, _)| *i == id) {
        Some((id, name)) => (
            StatusCode::OK,
            format!(r#"{{"id":"{id}","name":"{name}"}}"#),
        ),
        None => (StatusCode::NOT_FOUND, "{}".to_string()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad address: {e}"),
            )
        })?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("origin: listening on http://{}", listener.local_addr()?);
    axum::serve(listener, Router::new().route("/users/{id}", get(user))).await
}
