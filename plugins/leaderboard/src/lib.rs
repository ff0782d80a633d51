//! leaderboard: game leaderboards on a Redis sorted set, over HTTP.
//!
//! Each board is one sorted set (key `board:NAME`) of players by their best
//! score; a submitted score only ever raises a player's entry (`GT`), in one
//! command, so concurrent submissions from any number of hosts never lose a
//! best score.
//!
//! Routes (bind them in `redloom.toml`):
//!
//! - `POST /boards/:board/scores` with `{"player": "ada", "score": 310}`:
//!   records the score; answers the player's best score and rank.
//! - `GET /boards/:board/top?n=10`: the top `n` (1–100, default 10) as
//!   `[{"rank": 1, "player": ..., "score": ...}, ...]`.
//! - `GET /boards/:board/players/:player`: the player's best score and rank
//!   (1 is the top), or 404.

use redloom_sdk::http::{Request, Response};
use redloom_sdk::sorted_set::{self, AddOptions, Order};
use redloom_sdk::{Error, Http, Result};
use serde::Deserialize;
use serde_json::json;

/// Most entries one `top` request returns.
const MAX_TOP: u32 = 100;

/// Longest board or player name.
const MAX_NAME: usize = 128;

#[derive(Deserialize)]
struct Submission {
    player: String,
    score: f64,
}

fn name<'a>(what: &str, value: Option<&'a str>) -> Result<&'a str> {
    match value {
        Some(v) if !v.is_empty() && v.len() <= MAX_NAME => Ok(v),
        _ => Err(Error::invalid(format!(
            "{what} must be 1 to {MAX_NAME} bytes long"
        ))),
    }
}

fn board_key(board: &str) -> String {
    format!("board:{board}")
}

/// A player's best score and 1-based rank, if they are on the board.
fn standing(board: &str, player: &str) -> Result<Option<serde_json::Value>> {
    let key = board_key(board);
    let Some(score) = sorted_set::score(&key, player)? else {
        return Ok(None);
    };
    let rank = sorted_set::rank(&key, player, Order::Descending)?.map(|r| r + 1);
    Ok(Some(
        json!({"player": player, "score": score, "rank": rank}),
    ))
}

fn submit(board: &str, body: &[u8]) -> Result<Response> {
    let s: Submission = serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("body must be {{\"player\", \"score\"}}: {e}")))?;
    let player = name("player", Some(&s.player))?;
    if !s.score.is_finite() {
        return Err(Error::invalid("score must be a finite number"));
    }
    let best_only = AddOptions {
        only_greater: true,
        ..AddOptions::default()
    };
    sorted_set::add_with(&board_key(board), &[(player, s.score)], best_only)?;
    let standing = standing(board, player)?.ok_or_else(|| Error::other("the score vanished"))?;
    Response::json(200, &standing)
}

fn top(board: &str, n: Option<&str>) -> Result<Response> {
    let n: u32 = match n {
        None => 10,
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| Error::invalid(format!("n must be 1 to {MAX_TOP}")))?,
    };
    let entries =
        sorted_set::range_by_rank(&board_key(board), 0, i64::from(n) - 1, Order::Descending)?;
    let rows: Vec<_> = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({"rank": i + 1, "player": e.member, "score": e.score}))
        .collect();
    Response::json(200, &rows)
}

struct Leaderboard;

impl Http for Leaderboard {
    /// Bad input is the client's mistake (400, with why); any other error
    /// is the host's 500.
    fn handle(request: Request) -> Result<Response> {
        match route(request) {
            Err(Error::InvalidArgument(why)) => Ok(Response::text(400, format!("{why}\n"))),
            answer => answer,
        }
    }
}

/// The request's answer; bad input is an `invalid-argument` error.
fn route(request: Request) -> Result<Response> {
    let board = name("board", request.param("board"))?;
    match (request.method.as_str(), request.param("player")) {
        ("POST", None) => submit(board, &request.body),
        ("GET", Some(player)) => match standing(board, name("player", Some(player))?)? {
            Some(s) => Response::json(200, &s),
            None => Ok(Response::text(404, "no such player on this board\n")),
        },
        ("GET", None) => top(board, request.query("n")),
        _ => Ok(Response::text(405, "method not allowed\n")),
    }
}

redloom_sdk::export!(Leaderboard => [http]);
