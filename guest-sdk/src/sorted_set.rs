//! Redis sorted sets in the plugin's key space: unique members ordered by a
//! score — leaderboards, priority lists, time-ordered indexes.
//!
//! Score ranges are Rust ranges: `10.0..=20.0`, `..5.0`, `(Bound::Excluded(1.0),
//! Bound::Unbounded)`, `..` for all.
//!
//! ```no_run
//! use redloom_sdk::sorted_set::{self, Order};
//!
//! # fn main() -> redloom_sdk::Result<()> {
//! sorted_set::add("board", "ada", 310.0)?;
//! sorted_set::increment("board", "bob", 25.0)?;
//! let top = sorted_set::range_by_rank("board", 0, 9, Order::Descending)?;
//! let place = sorted_set::rank("board", "ada", Order::Descending)?;
//! # let _ = (top, place);
//! # Ok(())
//! # }
//! ```

use std::ops::{Bound, RangeBounds};

use crate::__private::bindings::redloom::plugin::sorted_set as wit;
use crate::strings;
use crate::{Error, Result};

/// A member and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub member: String,
    pub score: f64,
}

impl From<wit::Scored> for Scored {
    fn from(s: wit::Scored) -> Scored {
        Scored {
            member: s.member,
            score: s.score,
        }
    }
}

/// Ascending (lowest score first) or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

impl Order {
    fn reverse(self) -> bool {
        self == Order::Descending
    }
}

/// Options for [`add_with`]: which members may be written and when a score
/// may change. The default writes every member unconditionally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AddOptions {
    /// Only new members (`NX`).
    pub only_new: bool,
    /// Only existing members (`XX`).
    pub only_existing: bool,
    /// Only raise a score (`GT`), e.g. a player's best score.
    pub only_greater: bool,
    /// Only lower a score (`LT`).
    pub only_less: bool,
    /// Count changed members too, not only new ones (`CH`).
    pub count_changed: bool,
}

/// Skip `offset` matches, return at most `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub offset: u64,
    pub count: u64,
}

fn results(v: Vec<wit::Scored>) -> Vec<Scored> {
    v.into_iter().map(Scored::from).collect()
}

fn score_bound(b: Bound<&f64>) -> wit::ScoreBound {
    match b {
        Bound::Included(s) => wit::ScoreBound::Inclusive(*s),
        Bound::Excluded(s) => wit::ScoreBound::Exclusive(*s),
        Bound::Unbounded => wit::ScoreBound::Unbounded,
    }
}

fn lex_bound<S: AsRef<str>>(b: Bound<&S>) -> wit::LexBound {
    match b {
        Bound::Included(s) => wit::LexBound::Inclusive(s.as_ref().to_owned()),
        Bound::Excluded(s) => wit::LexBound::Exclusive(s.as_ref().to_owned()),
        Bound::Unbounded => wit::LexBound::Unbounded,
    }
}

fn limit(l: Option<Limit>) -> Option<wit::RangeLimit> {
    l.map(|l| wit::RangeLimit {
        offset: l.offset,
        count: l.count,
    })
}

/// Adds `member` with `score` or updates its score; returns whether it was new.
pub fn add(key: &str, member: &str, score: f64) -> Result<bool> {
    Ok(add_with(key, &[(member, score)], AddOptions::default())? == 1)
}

/// Adds or updates several members under `options`; returns how many were
/// added (or changed, with `count_changed`). `only_new` with `only_greater`
/// or `only_less` is an [`Error::InvalidArgument`] (Redis refuses it).
pub fn add_with<M: AsRef<str>>(
    key: &str,
    members: &[(M, f64)],
    options: AddOptions,
) -> Result<u32> {
    let members: Vec<wit::Scored> = members
        .iter()
        .map(|(m, s)| wit::Scored {
            member: m.as_ref().to_owned(),
            score: *s,
        })
        .collect();
    let condition = match (options.only_new, options.only_existing) {
        (true, true) => {
            return Err(Error::invalid(
                "only_new and only_existing exclude each other",
            ));
        }
        (true, false) => wit::AddCondition::IfAbsent,
        (false, true) => wit::AddCondition::IfPresent,
        (false, false) => wit::AddCondition::Always,
    };
    let update = match (options.only_greater, options.only_less) {
        (true, true) => {
            return Err(Error::invalid(
                "only_greater and only_less exclude each other",
            ));
        }
        (true, false) => wit::ScoreUpdate::IfGreater,
        (false, true) => wit::ScoreUpdate::IfLess,
        (false, false) => wit::ScoreUpdate::Always,
    };
    let options = wit::AddOptions {
        condition,
        update,
        count_changed: options.count_changed,
    };
    wit::add(key, &members, options).map_err(Error::from_wit)
}

/// Adds `delta` to `member`'s score (a missing member starts at 0); returns
/// the new score.
pub fn increment(key: &str, member: &str, delta: f64) -> Result<f64> {
    wit::increment(key, member, delta).map_err(Error::from_wit)
}

/// `member`'s score, or `None`.
pub fn score(key: &str, member: &str) -> Result<Option<f64>> {
    wit::score(key, member).map_err(Error::from_wit)
}

/// `member`'s 0-based rank in `order` (descending: 0 is the highest score),
/// or `None`.
pub fn rank(key: &str, member: &str, order: Order) -> Result<Option<u64>> {
    wit::rank(key, member, order.reverse()).map_err(Error::from_wit)
}

/// Members from rank `start` to `stop` inclusive in `order` (negative counts
/// from the end): `range_by_rank(k, 0, 9, Order::Descending)` is a top ten.
pub fn range_by_rank(key: &str, start: i64, stop: i64, order: Order) -> Result<Vec<Scored>> {
    wit::range_by_rank(key, start, stop, order.reverse())
        .map(results)
        .map_err(Error::from_wit)
}

/// Members with scores in `scores`, in `order`, optionally a page of them.
pub fn range_by_score(
    key: &str,
    scores: impl RangeBounds<f64>,
    order: Order,
    page: Option<Limit>,
) -> Result<Vec<Scored>> {
    let (min, max) = (
        score_bound(scores.start_bound()),
        score_bound(scores.end_bound()),
    );
    wit::range_by_score(key, min, max, order.reverse(), limit(page))
        .map(results)
        .map_err(Error::from_wit)
}

/// Members in `members` by byte order (for members of one score), in `order`.
pub fn range_by_lex<S: AsRef<str>>(
    key: &str,
    members: impl RangeBounds<S>,
    order: Order,
    page: Option<Limit>,
) -> Result<Vec<String>> {
    let (min, max) = (
        lex_bound(members.start_bound()),
        lex_bound(members.end_bound()),
    );
    wit::range_by_lex(key, &min, &max, order.reverse(), limit(page)).map_err(Error::from_wit)
}

/// Removes members; returns how many were there.
pub fn remove<M: AsRef<str>>(key: &str, members: &[M]) -> Result<u32> {
    wit::remove(key, &strings(members)).map_err(Error::from_wit)
}

/// Removes members with scores in `scores`; returns how many.
pub fn remove_by_score(key: &str, scores: impl RangeBounds<f64>) -> Result<u64> {
    let (min, max) = (
        score_bound(scores.start_bound()),
        score_bound(scores.end_bound()),
    );
    wit::remove_by_score(key, min, max).map_err(Error::from_wit)
}

/// Removes members from rank `start` to `stop` inclusive (ascending);
/// returns how many.
pub fn remove_by_rank(key: &str, start: i64, stop: i64) -> Result<u64> {
    wit::remove_by_rank(key, start, stop).map_err(Error::from_wit)
}

/// The number of members (0 for a missing key).
pub fn cardinality(key: &str) -> Result<u64> {
    wit::cardinality(key).map_err(Error::from_wit)
}

/// The number of members with scores in `scores`.
pub fn count(key: &str, scores: impl RangeBounds<f64>) -> Result<u64> {
    let (min, max) = (
        score_bound(scores.start_bound()),
        score_bound(scores.end_bound()),
    );
    wit::count(key, min, max).map_err(Error::from_wit)
}

/// Removes and returns up to `count` members with the lowest scores.
pub fn pop_min(key: &str, count: u32) -> Result<Vec<Scored>> {
    wit::pop_min(key, count)
        .map(results)
        .map_err(Error::from_wit)
}

/// Removes and returns up to `count` members with the highest scores.
pub fn pop_max(key: &str, count: u32) -> Result<Vec<Scored>> {
    wit::pop_max(key, count)
        .map(results)
        .map_err(Error::from_wit)
}
