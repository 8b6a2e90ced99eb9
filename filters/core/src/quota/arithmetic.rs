//! Quota arithmetic: token buckets and fixed windows, as pure functions over a small state
//! record that the host keeps in shared memory.
//!
//! Every Envoy worker runs its own VM, so the counters live in proxy-wasm shared data and are
//! updated with compare-and-swap: the host reads `(bytes, cas)`, calls [`Limit::take`] with
//! the decoded state and the current time, and writes the new state back with that `cas`;
//! on a CAS mismatch it re-reads and recomputes. Because [`Limit::take`] is a pure function
//! of (state, now), a retried update is exact: no lost updates, no over-admission.
//!
//! Time is integer nanoseconds and tokens are integer micro-tokens, so the arithmetic is
//! exact and identical on every worker (no floating point drift between VMs).

use thiserror::Error;

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// One token, in micro-tokens.
const TOKEN: u64 = 1_000_000;

/// A limit on how often something may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Token bucket: refills at `per_period` tokens every `period_secs`, holds at most `burst`.
    Bucket { per_period: u64, period_secs: u64, burst: u64 },
    /// Fixed window: at most `limit` events per aligned window of `period_secs`.
    Window { limit: u64, period_secs: u64 },
}

/// Why a rate or quota string is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RateError {
    #[error("\"{0}\" is not of the form N/s, N/m, N/h or N/d")]
    Syntax(String),
    #[error("\"{0}\": the count must be at least 1")]
    Zero(String),
}

/// Parses `N/s`, `N/m`, `N/h`, `N/d` (also `N/second`, `N/minute`, `N/hour`, `N/day`) into
/// (count, period in seconds).
pub fn parse_rate(text: &str) -> Result<(u64, u64), RateError> {
    let syntax = || RateError::Syntax(text.to_string());
    let (count, unit) = text.split_once('/').ok_or_else(syntax)?;
    let count: u64 = count.trim().parse().map_err(|_| syntax())?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3_600,
        "d" | "day" => 86_400,
        _ => return Err(syntax()),
    };
    if count == 0 {
        return Err(RateError::Zero(text.to_string()));
    }
    Ok((count, period))
}

/// The counter state kept per key. 16 bytes on the wire (see [`State::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Bucket: micro-tokens available at `at`. Window: events counted in the window.
    pub level: u64,
    /// Bucket: time of the last update (ns). Window: start of the current window (ns).
    pub at: u64,
}

impl State {
    /// Fixed-size little-endian encoding for shared data.
    pub fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.level.to_le_bytes());
        out[8..].copy_from_slice(&self.at.to_le_bytes());
        out
    }

    /// Decodes [`Self::encode`]'s output; anything else reads as "no state yet".
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let level = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let at = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Self { level, at })
    }
}

/// The outcome of one attempt to take from a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub admitted: bool,
    /// The state to store (always written back, even when refused: the bucket refill time
    /// advances).
    pub state: State,
    /// When refused: whole seconds until a retry can succeed (≥ 1).
    pub retry_after_secs: u64,
    /// Events still available right after this one (for rate-limit headers).
    pub remaining: u64,
}

impl Limit {
    /// Takes one event at `now_ns` from `state` (`None`: never used).
    pub fn take(self, state: Option<State>, now_ns: u64) -> Taken {
        match self {
            Limit::Bucket { per_period, period_secs, burst } => {
                bucket_take(per_period, period_secs, burst, state, now_ns)
            }
            Limit::Window { limit, period_secs } => window_take(limit, period_secs, state, now_ns),
        }
    }

    /// Human description for error messages, e.g. `60/m (burst 10)`.
    pub fn describe(self) -> String {
        let unit = |p: u64| match p {
            1 => "s".to_string(),
            60 => "m".to_string(),
            3_600 => "h".to_string(),
            86_400 => "d".to_string(),
            other => format!("{other}s"),
        };
        match self {
            Limit::Bucket { per_period, period_secs, burst } => {
                format!("{per_period}/{} (burst {burst})", unit(period_secs))
            }
            Limit::Window { limit, period_secs } => format!("{limit}/{} quota", unit(period_secs)),
        }
    }
}

fn bucket_take(per_period: u64, period_secs: u64, burst: u64, state: Option<State>, now_ns: u64) -> Taken {
    let capacity = burst.max(1).saturating_mul(TOKEN);
    let period_ns = period_secs.saturating_mul(NANOS_PER_SEC).max(1);
    let state = state.unwrap_or(State { level: capacity, at: now_ns });
    // Refill: per_period tokens per period_ns, in micro-tokens, exact integer arithmetic.
    let elapsed = now_ns.saturating_sub(state.at) as u128;
    let refill = elapsed * u128::from(per_period) * u128::from(TOKEN) / u128::from(period_ns);
    let level = (u128::from(state.level) + refill).min(u128::from(capacity)) as u64;
    // Truncating the refill loses under one micro-token per update: it can only under-admit.
    let at = now_ns.max(state.at);
    if level >= TOKEN {
        let left = level - TOKEN;
        Taken { admitted: true, state: State { level: left, at }, retry_after_secs: 0, remaining: left / TOKEN }
    } else {
        let missing = u128::from(TOKEN - level);
        let wait_ns = (missing * u128::from(period_ns)).div_ceil(u128::from(per_period) * u128::from(TOKEN));
        let retry = (wait_ns as u64).div_ceil(NANOS_PER_SEC).max(1);
        Taken { admitted: false, state: State { level, at }, retry_after_secs: retry, remaining: 0 }
    }
}

fn window_take(limit: u64, period_secs: u64, state: Option<State>, now_ns: u64) -> Taken {
    let period_ns = period_secs.saturating_mul(NANOS_PER_SEC).max(1);
    let window_start = now_ns - now_ns % period_ns;
    let count = match state {
        Some(s) if s.at == window_start => s.level,
        _ => 0,
    };
    let reset_secs = (window_start + period_ns - now_ns).div_ceil(NANOS_PER_SEC).max(1);
    if count < limit {
        let count = count + 1;
        Taken {
            admitted: true,
            state: State { level: count, at: window_start },
            retry_after_secs: 0,
            remaining: limit - count,
        }
    } else {
        Taken {
            admitted: false,
            state: State { level: count, at: window_start },
            retry_after_secs: reset_secs,
            remaining: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = NANOS_PER_SEC;

    fn run(limit: Limit, times: &[u64]) -> Vec<bool> {
        let mut state = None;
        times
            .iter()
            .map(|&t| {
                let taken = limit.take(state, t);
                state = Some(taken.state);
                taken.admitted
            })
            .collect()
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("60/m"), Ok((60, 60)));
        assert_eq!(parse_rate("5 / second"), Ok((5, 1)));
        assert_eq!(parse_rate("1000/d"), Ok((1000, 86_400)));
        assert_eq!(parse_rate("0/m"), Err(RateError::Zero("0/m".into())));
        assert!(parse_rate("60").is_err());
        assert!(parse_rate("x/m").is_err());
        assert!(parse_rate("6/week").is_err());
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let limit = Limit::Bucket { per_period: 60, period_secs: 60, burst: 3 };
        let t0 = 1_000 * S;
        assert_eq!(run(limit, &[t0, t0, t0, t0]), vec![true, true, true, false]);
        let mut state = None;
        for _ in 0..3 {
            state = Some(limit.take(state, t0).state);
        }
        let refused = limit.take(state, t0 + S / 2);
        assert_eq!((refused.admitted, refused.retry_after_secs), (false, 1));
        assert!(limit.take(Some(refused.state), t0 + S).admitted);
    }

    #[test]
    fn window_counts_and_resets_on_the_boundary() {
        let limit = Limit::Window { limit: 2, period_secs: 60 };
        let t0 = 600 * S; // aligned
        assert_eq!(run(limit, &[t0, t0 + S, t0 + 59 * S, t0 + 60 * S]), vec![true, true, false, true]);
        let full = limit.take(Some(State { level: 2, at: t0 }), t0 + 50 * S);
        assert_eq!((full.admitted, full.retry_after_secs), (false, 10));
    }

    #[test]
    fn state_round_trips() {
        let s = State { level: 42, at: u64::MAX - 1 };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(State::decode(b"short"), None);
        assert_eq!(State::decode(&[0u8; 17]), None);
    }

    proptest! {
        /// Over any span, a bucket admits at most burst + rate × span events.
        #[test]
        fn bucket_never_over_admits(gaps in proptest::collection::vec(0u64..2 * S, 1..200), burst in 1u64..20, rate in 1u64..100) {
            let limit = Limit::Bucket { per_period: rate, period_secs: 1, burst };
            let mut t = 10 * S;
            let mut times = Vec::new();
            for g in gaps { t += g; times.push(t); }
            let admitted = run(limit, &times).into_iter().filter(|a| *a).count() as u64;
            let span_ns = times.last().copied().unwrap_or(0) - times[0];
            let bound = burst + (u128::from(rate) * u128::from(span_ns) / u128::from(S)) as u64;
            prop_assert!(admitted <= bound, "admitted {admitted} > bound {bound}");
        }

        /// A window admits exactly min(limit, attempts) events per window.
        #[test]
        fn window_is_exact(attempts in 0usize..50, limit in 1u64..20) {
            let l = Limit::Window { limit, period_secs: 60 };
            let times = vec![120 * S + 5; attempts];
            let admitted = run(l, &times).into_iter().filter(|a| *a).count() as u64;
            prop_assert_eq!(admitted, limit.min(attempts as u64));
        }
    }
}
