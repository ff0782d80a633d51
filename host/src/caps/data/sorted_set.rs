//! `redloom:plugin/sorted-set`: Redis sorted sets in the plugin's key space.

use super::{check_count, check_items, command};
use crate::bindings::sorted_set::{
    AddCondition, AddOptions, Host, LexBound, RangeLimit, ScoreBound, ScoreUpdate, Scored,
};
use crate::bindings::types::Error;
use crate::caps::Caps;
use crate::caps::common::{R, invalid};

/// A score bound as Redis writes it: `1.5`, `(1.5`, `-inf` / `+inf`.
fn score_arg(bound: &ScoreBound, unbounded: &str) -> String {
    match bound {
        ScoreBound::Inclusive(s) => s.to_string(),
        ScoreBound::Exclusive(s) => format!("({s}"),
        ScoreBound::Unbounded => unbounded.to_string(),
    }
}

/// A lexicographic bound as Redis writes it: `[a`, `(a`, `-` / `+`.
fn lex_arg(bound: &LexBound, unbounded: &str) -> String {
    match bound {
        LexBound::Inclusive(s) => format!("[{s}"),
        LexBound::Exclusive(s) => format!("({s}"),
        LexBound::Unbounded => unbounded.to_string(),
    }
}

/// `LIMIT offset count`, bounded like every count.
fn limit_args(limit: Option<RangeLimit>) -> Result<Vec<String>, Error> {
    let Some(RangeLimit { offset, count }) = limit else {
        return Ok(Vec::new());
    };
    check_count(u32::try_from(count).unwrap_or(u32::MAX))?;
    Ok(vec!["LIMIT".into(), offset.to_string(), count.to_string()])
}

fn scored(pairs: Vec<(String, f64)>) -> Vec<Scored> {
    pairs
        .into_iter()
        .map(|(member, score)| Scored { member, score })
        .collect()
}

impl Caps {
    /// `ZRANGE key min max BYSCORE|BYLEX [REV] [LIMIT o c] [WITHSCORES]`
    /// (with `REV` Redis takes the bounds as max, min).
    async fn zrange_by(
        &mut self,
        key: &str,
        (min, max): (String, String),
        by: &str,
        reverse: bool,
        limit: Option<RangeLimit>,
        with_scores: bool,
    ) -> Result<redis::Value, Error> {
        let key = self.data_key(key)?;
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(key);
        if reverse {
            cmd.arg(max).arg(min).arg(by).arg("REV");
        } else {
            cmd.arg(min).arg(max).arg(by);
        }
        cmd.arg(limit_args(limit)?);
        if with_scores {
            cmd.arg("WITHSCORES");
        }
        self.send_command(cmd).await
    }

    async fn zpop(&mut self, name: &str, key: &str, count: u32) -> Result<Vec<Scored>, Error> {
        let key = self.data_key(key)?;
        let count = check_count(count)?;
        Ok(scored(self.query(command(name, (key, count))).await?))
    }
}

impl Host for Caps {
    async fn add(&mut self, key: String, members: Vec<Scored>, options: AddOptions) -> R<u32> {
        Ok(traced!("sorted-set", "add", async {
            let key = self.data_key(&key)?;
            if members.is_empty() {
                return Err(invalid("add at least one member"));
            }
            check_items("members", members.len())?;
            self.check_payload(&key, members.iter().map(|m| m.member.len() + 8).sum())?;
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(key);
            match options.condition {
                AddCondition::Always => {}
                AddCondition::IfAbsent => {
                    cmd.arg("NX");
                }
                AddCondition::IfPresent => {
                    cmd.arg("XX");
                }
            }
            match options.update {
                ScoreUpdate::Always => {}
                ScoreUpdate::IfGreater => {
                    cmd.arg("GT");
                }
                ScoreUpdate::IfLess => {
                    cmd.arg("LT");
                }
            }
            if options.count_changed {
                cmd.arg("CH");
            }
            for m in members {
                cmd.arg(m.score).arg(m.member);
            }
            self.query(cmd).await
        }))
    }

    async fn increment(&mut self, key: String, member: String, delta: f64) -> R<f64> {
        Ok(traced!("sorted-set", "increment", async {
            let key = self.data_key(&key)?;
            self.query(command("ZINCRBY", (key, delta, member))).await
        }))
    }

    async fn score(&mut self, key: String, member: String) -> R<Option<f64>> {
        Ok(traced!("sorted-set", "score", async {
            let key = self.data_key(&key)?;
            self.query(command("ZSCORE", (key, member))).await
        }))
    }

    async fn rank(&mut self, key: String, member: String, reverse: bool) -> R<Option<u64>> {
        Ok(traced!("sorted-set", "rank", async {
            let key = self.data_key(&key)?;
            let name = if reverse { "ZREVRANK" } else { "ZRANK" };
            self.query(command(name, (key, member))).await
        }))
    }

    async fn range_by_rank(
        &mut self,
        key: String,
        start: i64,
        stop: i64,
        reverse: bool,
    ) -> R<Vec<Scored>> {
        Ok(traced!("sorted-set", "range-by-rank", async {
            let key = self.data_key(&key)?;
            let mut cmd = command("ZRANGE", (key, start, stop));
            if reverse {
                cmd.arg("REV");
            }
            cmd.arg("WITHSCORES");
            Ok::<_, Error>(scored(self.query(cmd).await?))
        }))
    }

    async fn range_by_score(
        &mut self,
        key: String,
        min: ScoreBound,
        max: ScoreBound,
        reverse: bool,
        limit: Option<RangeLimit>,
    ) -> R<Vec<Scored>> {
        Ok(traced!("sorted-set", "range-by-score", async {
            let bounds = (score_arg(&min, "-inf"), score_arg(&max, "+inf"));
            let reply = self
                .zrange_by(&key, bounds, "BYSCORE", reverse, limit, true)
                .await?;
            Ok::<_, Error>(scored(super::decode(reply)?))
        }))
    }

    async fn range_by_lex(
        &mut self,
        key: String,
        min: LexBound,
        max: LexBound,
        reverse: bool,
        limit: Option<RangeLimit>,
    ) -> R<Vec<String>> {
        Ok(traced!("sorted-set", "range-by-lex", async {
            let bounds = (lex_arg(&min, "-"), lex_arg(&max, "+"));
            let reply = self
                .zrange_by(&key, bounds, "BYLEX", reverse, limit, false)
                .await?;
            super::decode(reply)
        }))
    }

    async fn remove(&mut self, key: String, members: Vec<String>) -> R<u32> {
        Ok(traced!("sorted-set", "remove", async {
            let key = self.data_key(&key)?;
            if members.is_empty() {
                return Err(invalid("remove at least one member"));
            }
            check_items("members", members.len())?;
            self.query(command("ZREM", (key, members))).await
        }))
    }

    async fn remove_by_score(&mut self, key: String, min: ScoreBound, max: ScoreBound) -> R<u64> {
        Ok(traced!("sorted-set", "remove-by-score", async {
            let key = self.data_key(&key)?;
            let (min, max) = (score_arg(&min, "-inf"), score_arg(&max, "+inf"));
            self.query(command("ZREMRANGEBYSCORE", (key, min, max)))
                .await
        }))
    }

    async fn remove_by_rank(&mut self, key: String, start: i64, stop: i64) -> R<u64> {
        Ok(traced!("sorted-set", "remove-by-rank", async {
            let key = self.data_key(&key)?;
            self.query(command("ZREMRANGEBYRANK", (key, start, stop)))
                .await
        }))
    }

    async fn cardinality(&mut self, key: String) -> R<u64> {
        Ok(traced!("sorted-set", "cardinality", async {
            let key = self.data_key(&key)?;
            self.query(command("ZCARD", key)).await
        }))
    }

    async fn count(&mut self, key: String, min: ScoreBound, max: ScoreBound) -> R<u64> {
        Ok(traced!("sorted-set", "count", async {
            let key = self.data_key(&key)?;
            let (min, max) = (score_arg(&min, "-inf"), score_arg(&max, "+inf"));
            self.query(command("ZCOUNT", (key, min, max))).await
        }))
    }

    async fn pop_min(&mut self, key: String, count: u32) -> R<Vec<Scored>> {
        Ok(traced!(
            "sorted-set",
            "pop-min",
            self.zpop("ZPOPMIN", &key, count)
        ))
    }

    async fn pop_max(&mut self, key: String, count: u32) -> R<Vec<Scored>> {
        Ok(traced!(
            "sorted-set",
            "pop-max",
            self.zpop("ZPOPMAX", &key, count)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_written_as_redis_reads_them() {
        assert_eq!(score_arg(&ScoreBound::Inclusive(1.5), "-inf"), "1.5");
        assert_eq!(score_arg(&ScoreBound::Exclusive(2.0), "-inf"), "(2");
        assert_eq!(score_arg(&ScoreBound::Unbounded, "+inf"), "+inf");
        assert_eq!(lex_arg(&LexBound::Inclusive("a".into()), "-"), "[a");
        assert_eq!(lex_arg(&LexBound::Exclusive("b".into()), "-"), "(b");
        assert_eq!(lex_arg(&LexBound::Unbounded, "+"), "+");
    }
}
