//! Counter increments summed in the filter and handed to the host in batches.
//!
//! Adding to an Envoy counter is a host call, and most exchanges bump the same few counters
//! (`meshgate.requests…`, `meshgate.tool_calls…`). The filter sums each counter's
//! increments here and adds the sum to Envoy once per flush (a timer, and when the plugin
//! stops). Invariant: every increment added is drained exactly once, in one sum per
//! counter; nothing is dropped or counted twice. Histogram samples are never batched:
//! each one is its own observation.

/// Pending increments per metric id, in the order each id was first added since the last
/// drain. Few distinct ids are live between flushes, so a vector beats a map here.
#[derive(Debug, Default)]
pub struct CounterBatch {
    pending: Vec<(u32, u64)>,
}

impl CounterBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` to counter `id` (saturating: a counter never wraps).
    pub fn add(&mut self, id: u32, by: u64) {
        match self.pending.iter_mut().find(|(pending_id, _)| *pending_id == id) {
            Some((_, sum)) => *sum = sum.saturating_add(by),
            None => self.pending.push((id, by)),
        }
    }

    /// Whether nothing is waiting to be flushed.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes every pending `(id, sum)`, leaving the batch empty.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (u32, u64)> {
        self.pending.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_id_and_drains_each_sum_once() {
        let mut batch = CounterBatch::new();
        assert!(batch.is_empty());
        for (id, by) in [(7, 1), (3, 2), (7, 1), (7, 5), (9, 1)] {
            batch.add(id, by);
        }
        assert_eq!(batch.drain().collect::<Vec<_>>(), vec![(7, 7), (3, 2), (9, 1)]);
        assert!(batch.is_empty());
        assert_eq!(batch.drain().count(), 0);
        batch.add(3, 4);
        assert_eq!(batch.drain().collect::<Vec<_>>(), vec![(3, 4)]);
    }

    #[test]
    fn a_sum_saturates_instead_of_wrapping() {
        let mut batch = CounterBatch::new();
        batch.add(1, u64::MAX - 1);
        batch.add(1, 5);
        assert_eq!(batch.drain().collect::<Vec<_>>(), vec![(1, u64::MAX)]);
    }
}
