//! Subscription storage sized for millions: one compact record per
//! subscription in a slab, the dialog's strings packed in one allocation,
//! route sets and flows interned, and a per-second bucket wheel for expiry.
//! No task, lock or timer object per subscription.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};

/// A slab index plus the generation that was live when it was handed out,
/// so a stale reference (a late NOTIFY response, an old To tag) never
/// reaches a reused slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId {
    /// Slot.
    pub index: u32,
    /// Generation of the slot.
    pub generation: u32,
}

/// Deduplicated values with reference counts: many subscriptions share one
/// route set or one flow (a partner's edge connection).
#[derive(Debug)]
pub struct Interner<T> {
    values: Vec<Option<(T, u32)>>,
    index: HashMap<T, u32>,
    free: Vec<u32>,
}

impl<T: Clone + Eq + Hash> Interner<T> {
    /// An empty interner.
    pub fn new() -> Interner<T> {
        Interner {
            values: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
        }
    }

    /// Takes a reference to `value`, storing it when new.
    pub fn acquire(&mut self, value: T) -> u32 {
        if let Some(&id) = self.index.get(&value) {
            if let Some((_, count)) = &mut self.values[id as usize] {
                *count += 1;
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.values[id as usize] = Some((value.clone(), 1));
                id
            }
            None => {
                self.values.push(Some((value.clone(), 1)));
                (self.values.len() - 1) as u32
            }
        };
        self.index.insert(value, id);
        id
    }

    /// Drops a reference; the value goes when the last one does.
    pub fn release(&mut self, id: u32) {
        let slot = &mut self.values[id as usize];
        if let Some((value, count)) = slot {
            *count -= 1;
            if *count == 0 {
                self.index.remove(value);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    /// The value of a live id.
    pub fn get(&self, id: u32) -> &T {
        &self.values[id as usize]
            .as_ref()
            .expect("live interned id")
            .0
    }

    /// Distinct live values.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl<T: Clone + Eq + Hash> Default for Interner<T> {
    fn default() -> Self {
        Interner::new()
    }
}

/// The strings of one dialog, packed into one allocation.
#[derive(Debug, Default)]
pub struct DialogStrings {
    packed: Box<str>,
    call_id: u16,
    remote_tag: u16,
    remote_uri: u16,
}

impl DialogStrings {
    /// Packs the four strings; None when one is longer than 64 KiB.
    pub fn new(
        call_id: &str,
        remote_tag: &str,
        remote_uri: &str,
        remote_target: &str,
    ) -> Option<DialogStrings> {
        let mut packed = String::with_capacity(
            call_id.len() + remote_tag.len() + remote_uri.len() + remote_target.len(),
        );
        for s in [call_id, remote_tag, remote_uri, remote_target] {
            packed.push_str(s);
        }
        Some(DialogStrings {
            packed: packed.into_boxed_str(),
            call_id: call_id.len().try_into().ok()?,
            remote_tag: remote_tag.len().try_into().ok()?,
            remote_uri: remote_uri.len().try_into().ok()?,
        })
    }

    fn split(&self) -> [&str; 4] {
        let (call_id, rest) = self.packed.split_at(self.call_id.into());
        let (tag, rest) = rest.split_at(self.remote_tag.into());
        let (uri, target) = rest.split_at(self.remote_uri.into());
        [call_id, tag, uri, target]
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        self.split()[0]
    }
    /// The watcher's tag.
    pub fn remote_tag(&self) -> &str {
        self.split()[1]
    }
    /// The watcher's URI (From of the SUBSCRIBE).
    pub fn remote_uri(&self) -> &str {
        self.split()[2]
    }
    /// Where NOTIFYs are addressed (Contact of the SUBSCRIBE).
    pub fn remote_target(&self) -> &str {
        self.split()[3]
    }

    /// Replaces the remote target (a refresh may carry a new Contact).
    pub fn set_remote_target(&mut self, target: &str) {
        let [call_id, tag, uri, _] = self.split();
        if let Some(new) = DialogStrings::new(call_id, tag, uri, target) {
            *self = new;
        }
    }
}

/// Per-second buckets of subscription slots due to expire. Refreshing a
/// subscription adds a new entry and leaves the old one, which is skipped
/// when its bucket comes due because the record's expiry moved on.
#[derive(Debug)]
pub struct ExpiryWheel {
    buckets: Vec<Vec<u32>>,
    /// The second the wheel has processed up to (exclusive).
    cursor: u32,
    /// No bucket before this second has entries: lets [`next_due`](Self::next_due)
    /// skip empty seconds once instead of scanning the wheel on every call.
    /// Atomic only so a shared reference can move it forward.
    first_maybe_due: AtomicU32,
}

impl ExpiryWheel {
    /// A wheel that can hold expiries up to `horizon_secs` ahead.
    pub fn new(horizon_secs: u32) -> ExpiryWheel {
        ExpiryWheel {
            buckets: vec![Vec::new(); horizon_secs as usize + 2],
            cursor: 0,
            first_maybe_due: AtomicU32::new(0),
        }
    }

    /// Files `index` under second `at` (clamped into the wheel's horizon).
    pub fn insert(&mut self, at: u32, index: u32) {
        let span = self.buckets.len() as u32 - 1;
        let at = at.clamp(self.cursor, self.cursor + span - 1);
        let n = self.buckets.len();
        self.buckets[at as usize % n].push(index);
        self.first_maybe_due.fetch_min(at, Ordering::Relaxed);
    }

    /// Takes every entry filed under seconds before `now`.
    pub fn advance(&mut self, now: u32, out: &mut Vec<u32>) {
        let n = self.buckets.len();
        while self.cursor < now {
            out.append(&mut self.buckets[self.cursor as usize % n]);
            self.cursor += 1;
        }
        self.first_maybe_due
            .fetch_max(self.cursor, Ordering::Relaxed);
    }

    /// The first second with entries, if any, not earlier than the cursor.
    pub fn next_due(&self) -> Option<u32> {
        let n = self.buckets.len() as u32;
        let start = self
            .first_maybe_due
            .load(Ordering::Relaxed)
            .max(self.cursor);
        let found = (start..self.cursor + n).find(|&s| !self.buckets[(s % n) as usize].is_empty());
        self.first_maybe_due
            .store(found.unwrap_or(self.cursor + n - 1), Ordering::Relaxed);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_counts_references() {
        let mut i = Interner::new();
        let a = i.acquire("route-a".to_owned());
        assert_eq!(i.acquire("route-a".to_owned()), a);
        let b = i.acquire("route-b".to_owned());
        assert_ne!(a, b);
        i.release(a);
        assert_eq!(i.get(a), "route-a");
        i.release(a);
        assert_eq!(i.len(), 1);
        assert_eq!(i.acquire("route-c".to_owned()), a, "slot reused");
    }

    #[test]
    fn dialog_strings_pack_and_split() {
        let mut d = DialogStrings::new("c@h", "t1", "sip:a@b", "sip:a@10.0.0.1:5060").unwrap();
        assert_eq!(d.call_id(), "c@h");
        assert_eq!(d.remote_tag(), "t1");
        assert_eq!(d.remote_uri(), "sip:a@b");
        assert_eq!(d.remote_target(), "sip:a@10.0.0.1:5060");
        d.set_remote_target("sip:a@10.0.0.2");
        assert_eq!(d.remote_target(), "sip:a@10.0.0.2");
        assert_eq!(d.remote_uri(), "sip:a@b");
    }

    #[test]
    fn wheel_hands_out_due_entries_in_order() {
        let mut w = ExpiryWheel::new(10);
        w.insert(3, 30);
        w.insert(1, 10);
        w.insert(500, 99); // clamped to the horizon
        assert_eq!(w.next_due(), Some(1));
        let mut out = Vec::new();
        w.advance(2, &mut out);
        assert_eq!(out, [10]);
        out.clear();
        w.advance(4, &mut out);
        assert_eq!(out, [30]);
        out.clear();
        w.advance(20, &mut out);
        assert_eq!(out, [99]);
        assert_eq!(w.next_due(), None);
    }
}
