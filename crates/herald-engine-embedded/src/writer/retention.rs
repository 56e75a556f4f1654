//! Retention in the writer: the count limit on the topics a commit
//! touches, deletions within a per-commit budget, bounded passes for the
//! age limit and idempotency expiry, and dropping topics left idle.

use super::*;
use crate::store::AgeScan;

impl Writer {
    /// Drops events past the count limit (logically; deletion follows).
    pub(super) fn apply_count_limit(&mut self, i: usize) {
        let (max_events, _) = self.limits_of(&self.topics[i].topic);
        let t = &mut self.topics[i];
        let min_first = t.head.saturating_sub(max_events) + 1;
        if t.first < min_first {
            t.first = min_first;
            self.mark_dirty(i);
        }
        self.queue_deletions(i);
    }

    pub(super) fn queue_deletions(&mut self, i: usize) {
        let t = &mut self.topics[i];
        if t.on_disk_from < t.first && !t.queued {
            t.queued = true;
            self.backlog.push_back(i);
        }
    }

    /// Forgets topics whose drop was just committed: their views, then the
    /// writer's state (the last topic moves into each freed slot).
    pub(super) fn drop_topics(&mut self, mut dropping: Vec<usize>) {
        let n = dropping.len() as u64;
        // Highest index first, so that a moved topic is never one still to drop.
        dropping.sort_unstable_by(|a, b| b.cmp(a));
        for i in dropping {
            let t = self.topics.swap_remove(i);
            self.shared.drop_view(&t.topic);
            self.index.remove(&t.topic);
            let moved = self.topics.len();
            if i < moved {
                self.index.insert(self.topics[i].topic.clone(), i);
                for b in self.backlog.iter_mut().chain(self.dirty.iter_mut()) {
                    if *b == moved {
                        *b = i;
                    }
                }
            }
        }
        if self.topics.capacity() > 64 && self.topics.len() < self.topics.capacity() / 4 {
            self.topics.shrink_to(self.topics.len() * 2);
            self.index.shrink_to(self.topics.len() * 2);
        }
        if let Some(f) = self.shared.fanout() {
            f.metrics()
                .topics_dropped
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Finds idempotency records past their TTL, or beyond the bounds (oldest
    /// first), and queues their deletion for the next commit.
    pub(super) fn sweep_idempotency(&mut self) {
        if !self.idem_deletions.is_empty() {
            return;
        }
        let ttl_ms = self.shared.idempotency_ttl_ms();
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let over =
            self.idem_records > self.idem_max_records || self.idem_bytes > self.idem_max_bytes;
        if !over {
            // Most passes find nothing to do: look at the oldest record only.
            match self.store.oldest_idempotency(1) {
                Ok(v) if v.first().is_some_and(|(at, _)| *at <= cutoff) => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::error!(error = %e, "idempotency expiry could not read");
                    return;
                }
            }
        }
        let oldest = match self.store.oldest_idempotency(IDEMPOTENCY_SWEEP_BUDGET) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "idempotency expiry could not read");
                return;
            }
        };
        let (mut records, mut bytes) = (self.idem_records, self.idem_bytes);
        for (at_ms, key) in oldest {
            let over = records > self.idem_max_records || bytes > self.idem_max_bytes;
            if at_ms > cutoff && !over {
                break;
            }
            let record_too = match self.store.idempotency_record_time(&key) {
                Ok(t) => t == Some(at_ms),
                Err(e) => {
                    tracing::error!(error = %e, "idempotency expiry could not read");
                    return;
                }
            };
            let b = crate::store::idempotency_entry_bytes(key.len() + 9);
            records = records.saturating_sub(1);
            bytes = bytes.saturating_sub(b);
            self.idem_deletions.push(IdempotencyDeletion {
                at_ms,
                key,
                record_too,
                bytes: b,
            });
        }
    }

    /// Deletes dropped events from disk, within the per-commit budget.
    pub(super) fn delete_old(&mut self, wb: &mut Batch<'_>) {
        let mut budget = DELETE_BUDGET;
        while budget > 0 {
            let Some(&i) = self.backlog.front() else {
                break;
            };
            let t = &mut self.topics[i];
            while t.on_disk_from < t.first && budget > 0 {
                wb.delete_event(t.id, t.on_disk_from);
                t.on_disk_from += 1;
                budget -= 1;
            }
            if t.on_disk_from >= t.first {
                t.queued = false;
                self.backlog.pop_front();
            }
        }
    }

    /// A bounded pass of age retention, resuming where the last one stopped;
    /// topics found with nothing retained become drop candidates.
    pub(super) fn sweep_ages(&mut self) {
        let n = self.topics.len();
        if n == 0 {
            return;
        }
        let now = now_ms();
        let started = Instant::now();
        let mut scan_budget = AGE_SCAN_BUDGET;
        for _ in 0..n {
            if scan_budget == 0 || started.elapsed() > AGE_PASS_TIME {
                break;
            }
            let i = self.sweep_at % n;
            self.sweep_at = (i + 1) % n;
            let (_, max_age) = self.limits_of(&self.topics[i].topic);
            let cutoff = now.saturating_sub(max_age);
            let t = &self.topics[i];
            if t.is_empty() {
                // Nothing kept: dropped in the next commit if idle.
                if self.drop_candidates.len() < DROP_BUDGET {
                    self.drop_candidates.push(i);
                }
                continue;
            }
            if t.first > t.head || t.first_at >= cutoff {
                continue; // nothing kept, or nothing old enough
            }
            let (id, first, head) = (t.id, t.first, t.head);
            if t.last_at != 0 && t.last_at < cutoff {
                // Even the newest is expired: all go, no need to read them.
                let t = &mut self.topics[i];
                t.first = head + 1;
                let topic = t.topic.clone();
                self.mark_dirty(i);
                self.queue_deletions(i);
                self.shared.retain_from(&topic, head + 1);
                continue;
            }
            let scan = match self
                .store
                .first_not_older(id, first, head, cutoff, scan_budget)
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(topic = %t.topic, error = %e, "age retention could not read");
                    continue;
                }
            };
            let t = &mut self.topics[i];
            let new_first = match scan {
                AgeScan::Found(seq, at) => {
                    scan_budget = scan_budget.saturating_sub((seq - first + 1) as usize);
                    t.first_at = at;
                    seq
                }
                AgeScan::NoneUpTo(seq) => {
                    scan_budget =
                        scan_budget.saturating_sub((seq + 1).saturating_sub(first) as usize);
                    seq + 1
                }
            };
            if new_first > t.first {
                t.first = new_first;
                let topic = t.topic.clone();
                self.mark_dirty(i);
                self.queue_deletions(i);
                self.shared.retain_from(&topic, new_first);
            }
        }
    }
}
