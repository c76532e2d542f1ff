//! Explicit publications: RFC 3903 `PUBLISH` with entity tags, and the
//! Microsoft `SERVICE` category publication. The newest live publication of
//! an endpoint is the strongest presence source it has.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::PresenceState;
use crate::xml_in::CategoryPublication;

/// Why a publication was refused, each with its RFC 3903 status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// 412: the `SIP-If-Match` tag is unknown, expired, or another endpoint's.
    #[error("conditional request failed")]
    ConditionalFailed,
    /// 423: the interval is shorter than the minimum, which is given.
    #[error("interval too brief (minimum {0} s)")]
    IntervalTooBrief(u32),
    /// 400: an initial publication without a body.
    #[error("an initial PUBLISH needs a body")]
    MissingBody,
    /// 409: a category publication named a version that is not current.
    #[error("version conflict for category {category} instance {instance}")]
    VersionConflict {
        /// The category.
        category: String,
        /// The instance.
        instance: u64,
        /// The version we hold.
        current: u32,
    },
}

impl PublishError {
    /// The SIP status code for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            PublishError::ConditionalFailed => 412,
            PublishError::IntervalTooBrief(_) => 423,
            PublishError::MissingBody => 400,
            PublishError::VersionConflict { .. } => 409,
        }
    }
}

/// The outcome of an accepted PUBLISH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The new entity tag, absent after a removal.
    pub etag: Option<String>,
    /// The granted interval.
    pub expires: u32,
}

/// Bounds on publication intervals.
#[derive(Clone, Copy, Debug)]
pub struct PublishBounds {
    /// Shortest interval accepted (423 below).
    pub min_expires: u32,
    /// Longest interval granted (longer requests are shortened).
    pub max_expires: u32,
    /// Interval when the request names none.
    pub default_expires: u32,
}

#[derive(Debug)]
struct Entry {
    presentity: u32,
    state: PresenceState,
    expires_at: Instant,
    sequence: u64,
}

#[derive(Debug)]
struct CategoryEntry {
    version: u32,
    publication: CategoryPublication,
    sequence: u64,
}

/// A publication as a store keeps it, so an app's published state and its
/// entity tags outlive a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavedPublication {
    /// A PUBLISH (RFC 3903) under its entity tag.
    Publish {
        /// The tag the publisher refreshes with.
        etag: String,
        /// What it published.
        state: PresenceState,
        /// When it lapses, in Unix seconds.
        expires_at: u64,
        /// Its place in time among the endpoint's publications.
        sequence: u64,
    },
    /// A Microsoft category publication.
    Category {
        /// The publication as received.
        publication: CategoryPublication,
        /// The version held now.
        version: u32,
        /// Its place in time among the endpoint's publications.
        sequence: u64,
    },
}

/// All explicit publications of this node.
#[derive(Debug)]
pub struct Publications {
    by_etag: HashMap<String, Entry>,
    categories: HashMap<(u32, String, u64, u32), CategoryEntry>,
    bounds: PublishBounds,
    sequence: u64,
    salt: u64,
}

impl Publications {
    /// An empty set; `salt` makes entity tags unguessable across restarts.
    pub fn new(bounds: PublishBounds, salt: u64) -> Publications {
        Publications {
            by_etag: HashMap::new(),
            categories: HashMap::new(),
            bounds,
            sequence: 0,
            salt,
        }
    }

    fn new_etag(&mut self) -> String {
        self.sequence += 1;
        format!("{:x}{:08x}", self.salt & 0xffff_ffff, self.sequence)
    }

    /// Applies one PUBLISH (RFC 3903 §6): initial (body, no `SIP-If-Match`),
    /// refresh (tag, no body), modify (tag and body) or remove (tag,
    /// `Expires: 0`).
    pub fn publish(
        &mut self,
        presentity: u32,
        if_match: Option<&str>,
        body: Option<PresenceState>,
        expires: Option<u32>,
        now: Instant,
    ) -> Result<Published, PublishError> {
        let expires = expires.unwrap_or(self.bounds.default_expires);
        let previous = match if_match {
            Some(tag) => match self.by_etag.get(tag) {
                Some(e) if e.presentity == presentity && e.expires_at > now => Some(tag.to_owned()),
                _ => return Err(PublishError::ConditionalFailed),
            },
            None => None,
        };
        if expires == 0 {
            return match previous {
                Some(tag) => {
                    self.by_etag.remove(&tag);
                    Ok(Published {
                        etag: None,
                        expires: 0,
                    })
                }
                None => Err(PublishError::ConditionalFailed),
            };
        }
        if expires < self.bounds.min_expires {
            return Err(PublishError::IntervalTooBrief(self.bounds.min_expires));
        }
        let expires = expires.min(self.bounds.max_expires);
        let (state, sequence) = match (previous, body) {
            (None, None) => return Err(PublishError::MissingBody),
            (None, Some(state)) => (state, None),
            (Some(tag), body) => {
                let old = self.by_etag.remove(&tag).expect("checked above");
                match body {
                    Some(state) => (state, None),
                    // A refresh keeps the state and its place in time.
                    None => (old.state, Some(old.sequence)),
                }
            }
        };
        let etag = self.new_etag();
        let sequence = sequence.unwrap_or(self.sequence);
        self.by_etag.insert(
            etag.clone(),
            Entry {
                presentity,
                state,
                expires_at: now + Duration::from_secs(expires.into()),
                sequence,
            },
        );
        Ok(Published {
            etag: Some(etag),
            expires,
        })
    }

    /// Applies a Microsoft category publication. Every publication must name
    /// the version we hold (0 for a new instance) or the whole request is
    /// refused with 409 and nothing changes.
    pub fn publish_categories(
        &mut self,
        presentity: u32,
        publications: Vec<CategoryPublication>,
    ) -> Result<(), PublishError> {
        for p in &publications {
            let key = (presentity, p.category.clone(), p.instance, p.container);
            let current = self.categories.get(&key).map_or(0, |e| e.version);
            if p.version != current {
                return Err(PublishError::VersionConflict {
                    category: p.category.clone(),
                    instance: p.instance,
                    current,
                });
            }
        }
        for p in publications {
            let key = (presentity, p.category.clone(), p.instance, p.container);
            if p.expires == Some(0) {
                self.categories.remove(&key);
                continue;
            }
            self.sequence += 1;
            self.categories.insert(
                key,
                CategoryEntry {
                    version: p.version + 1,
                    publication: p,
                    sequence: self.sequence,
                },
            );
        }
        Ok(())
    }

    /// The state an endpoint's publications say: the newest PUBLISH or
    /// category `state`, with the newest category `note` laid over it.
    pub fn effective(&self, presentity: u32, now: Instant) -> Option<PresenceState> {
        let mut best: Option<(u64, PresenceState)> = self
            .by_etag
            .values()
            .filter(|e| e.presentity == presentity && e.expires_at > now)
            .max_by_key(|e| e.sequence)
            .map(|e| (e.sequence, e.state.clone()));
        let mine = || {
            self.categories
                .iter()
                .filter(move |(k, _)| k.0 == presentity)
                .map(|(_, e)| e)
        };
        if let Some(state) = mine()
            .filter(|e| e.publication.category == "state" && e.publication.availability.is_some())
            .max_by_key(|e| e.sequence)
        {
            if best.as_ref().is_none_or(|(seq, _)| state.sequence > *seq) {
                let p = &state.publication;
                let mut s = PresenceState::new(p.availability.expect("filtered"));
                s.activity = p.activity.clone();
                best = Some((state.sequence, s));
            }
        }
        if let Some(note) = mine()
            .filter(|e| e.publication.category == "note")
            .max_by_key(|e| e.sequence)
        {
            if let Some((_, state)) = best.as_mut() {
                state.note = note.publication.note.clone();
            }
        }
        best.map(|(_, s)| s)
    }

    /// Until when an endpoint's publications last: the latest expiry of
    /// its live PUBLISHes, or None when a SERVICE category (which does not
    /// expire) is among them, or when it has none.
    pub fn live_until(&self, presentity: u32, now: Instant) -> Option<Instant> {
        if self.categories.keys().any(|k| k.0 == presentity) {
            return None;
        }
        self.by_etag
            .values()
            .filter(|e| e.presentity == presentity && e.expires_at > now)
            .map(|e| e.expires_at)
            .max()
    }

    /// Drops every publication of an endpoint no longer served. True when
    /// it had any.
    pub fn forget(&mut self, presentity: u32) -> bool {
        let before = self.by_etag.len() + self.categories.len();
        self.by_etag.retain(|_, e| e.presentity != presentity);
        self.categories.retain(|k, _| k.0 != presentity);
        before != self.by_etag.len() + self.categories.len()
    }

    /// Drops expired publications and returns the endpoints whose
    /// publications changed.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let mut changed = Vec::new();
        self.by_etag.retain(|_, e| {
            let keep = e.expires_at > now;
            if !keep {
                changed.push(e.presentity);
            }
            keep
        });
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// When the next publication expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_etag.values().map(|e| e.expires_at).min()
    }

    /// An endpoint's live publications in the form a store keeps.
    pub fn saved(&self, presentity: u32, now: Instant, now_unix: u64) -> Vec<SavedPublication> {
        let publishes = self
            .by_etag
            .iter()
            .filter(|(_, e)| e.presentity == presentity && e.expires_at > now)
            .map(|(etag, e)| SavedPublication::Publish {
                etag: etag.clone(),
                state: e.state.clone(),
                expires_at: now_unix + e.expires_at.duration_since(now).as_secs(),
                sequence: e.sequence,
            });
        let categories = self
            .categories
            .iter()
            .filter(|(k, _)| k.0 == presentity)
            .map(|(_, e)| SavedPublication::Category {
                publication: e.publication.clone(),
                version: e.version,
                sequence: e.sequence,
            });
        publishes.chain(categories).collect()
    }

    /// Puts an endpoint's saved publications back; lapsed ones stay out.
    /// New entity tags and sequence numbers continue after the saved ones.
    pub fn restore(
        &mut self,
        presentity: u32,
        saved: Vec<SavedPublication>,
        now: Instant,
        now_unix: u64,
    ) {
        for publication in saved {
            match publication {
                SavedPublication::Publish {
                    etag,
                    state,
                    expires_at,
                    sequence,
                } => {
                    if expires_at <= now_unix {
                        continue;
                    }
                    self.sequence = self.sequence.max(sequence);
                    let left = Duration::from_secs(expires_at - now_unix);
                    self.by_etag.insert(
                        etag,
                        Entry {
                            presentity,
                            state,
                            expires_at: now + left,
                            sequence,
                        },
                    );
                }
                SavedPublication::Category {
                    publication,
                    version,
                    sequence,
                } => {
                    self.sequence = self.sequence.max(sequence);
                    let key = (
                        presentity,
                        publication.category.clone(),
                        publication.instance,
                        publication.container,
                    );
                    self.categories.insert(
                        key,
                        CategoryEntry {
                            version,
                            publication,
                            sequence,
                        },
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Availability;

    fn store() -> Publications {
        Publications::new(
            PublishBounds {
                min_expires: 60,
                max_expires: 3600,
                default_expires: 3600,
            },
            7,
        )
    }

    #[test]
    fn publications_come_back_from_the_store_with_their_tags_and_order() {
        let mut p = store();
        let t0 = Instant::now();
        let busy = PresenceState::new(Availability::BUSY);
        let tag = p
            .publish(1, None, Some(busy.clone()), Some(600), t0)
            .unwrap()
            .etag
            .unwrap();
        let note = CategoryPublication {
            category: "note".into(),
            instance: 0,
            container: 400,
            version: 0,
            expires: None,
            availability: None,
            activity: None,
            note: Some("Back at 3".into()),
        };
        p.publish_categories(1, vec![note.clone()]).unwrap();
        p.publish(2, None, Some(busy.clone()), Some(600), t0)
            .unwrap();
        let unix = 1_700_000_000;
        let saved = p.saved(1, t0, unix);
        assert_eq!(saved.len(), 2);
        let mut expected = busy.clone();
        expected.note = Some("Back at 3".into());

        // A new node, 100 s later.
        let t1 = t0 + Duration::from_secs(5);
        let mut q = store();
        q.restore(1, saved.clone(), t1, unix + 100);
        assert_eq!(q.effective(1, t1), Some(expected));
        // The app refreshes with its tag as if nothing happened, and the
        // remaining 500 s were kept.
        assert!(q.next_expiry().unwrap() <= t1 + Duration::from_secs(500));
        let refreshed = q.publish(1, Some(&tag), None, Some(600), t1).unwrap();
        assert_ne!(
            refreshed.etag.as_deref(),
            Some(tag.as_str()),
            "new tags continue"
        );
        // Its category version carries on: the next publication names 1.
        let mut next = note;
        next.version = 1;
        next.note = Some("Gone home".into());
        q.publish_categories(1, vec![next]).unwrap();

        // What lapsed while the node was down stays out.
        let mut r = store();
        r.restore(1, saved, t1, unix + 700);
        assert_eq!(r.effective(1, t1).map(|s| s.availability), None);
    }

    #[test]
    fn rfc3903_lifecycle() {
        let mut p = store();
        let t0 = Instant::now();
        let busy = PresenceState::new(Availability::BUSY);
        assert_eq!(
            p.publish(1, None, None, Some(600), t0),
            Err(PublishError::MissingBody)
        );
        assert_eq!(
            p.publish(1, None, Some(busy.clone()), Some(10), t0),
            Err(PublishError::IntervalTooBrief(60))
        );
        let first = p
            .publish(1, None, Some(busy.clone()), Some(99999), t0)
            .unwrap();
        assert_eq!(first.expires, 3600);
        let tag = first.etag.unwrap();
        assert_eq!(p.effective(1, t0), Some(busy.clone()));
        assert_eq!(p.effective(2, t0), None);
        // Another endpoint's tag, or an unknown one: 412.
        assert_eq!(
            p.publish(2, Some(&tag), None, Some(600), t0),
            Err(PublishError::ConditionalFailed)
        );
        // Refresh keeps the state and changes the tag.
        let refreshed = p.publish(1, Some(&tag), None, Some(600), t0).unwrap();
        let tag2 = refreshed.etag.unwrap();
        assert_ne!(tag, tag2);
        assert_eq!(
            p.publish(1, Some(&tag), None, Some(600), t0),
            Err(PublishError::ConditionalFailed)
        );
        // Modify.
        let away = PresenceState::new(Availability::AWAY);
        let tag3 = p
            .publish(1, Some(&tag2), Some(away.clone()), Some(600), t0)
            .unwrap()
            .etag
            .unwrap();
        assert_eq!(p.effective(1, t0), Some(away));
        // Expiry.
        let later = t0 + Duration::from_secs(601);
        assert_eq!(p.effective(1, later), None);
        assert_eq!(p.expire(later), vec![1]);
        assert_eq!(
            p.publish(1, Some(&tag3), None, Some(600), later),
            Err(PublishError::ConditionalFailed)
        );
        // Removal.
        let tag4 = p
            .publish(1, None, Some(busy), None, later)
            .unwrap()
            .etag
            .unwrap();
        let removed = p.publish(1, Some(&tag4), None, Some(0), later).unwrap();
        assert_eq!(
            removed,
            Published {
                etag: None,
                expires: 0
            }
        );
        assert_eq!(p.effective(1, later), None);
    }

    fn category(
        name: &str,
        version: u32,
        availability: Option<u32>,
        note: Option<&str>,
    ) -> CategoryPublication {
        CategoryPublication {
            category: name.into(),
            instance: 0,
            container: 0,
            version,
            expires: None,
            availability: availability.map(Availability),
            activity: None,
            note: note.map(str::to_owned),
        }
    }

    #[test]
    fn category_versions_and_merge() {
        let mut p = store();
        let now = Instant::now();
        p.publish_categories(1, vec![category("state", 0, Some(3500), None)])
            .unwrap();
        let err = p
            .publish_categories(1, vec![category("state", 0, Some(6500), None)])
            .unwrap_err();
        assert_eq!(err.status(), 409);
        assert_eq!(
            p.effective(1, now).unwrap().availability,
            Availability::ONLINE
        );
        p.publish_categories(
            1,
            vec![
                category("state", 1, Some(6500), None),
                category("note", 0, None, Some("Lunch")),
            ],
        )
        .unwrap();
        let s = p.effective(1, now).unwrap();
        assert_eq!(s.availability, Availability::BUSY);
        assert_eq!(s.note.as_deref(), Some("Lunch"));
        let mut remove = category("state", 2, None, None);
        remove.expires = Some(0);
        p.publish_categories(1, vec![remove]).unwrap();
        assert_eq!(p.effective(1, now), None);
        // Forgetting an endpoint drops its publications, nobody else's.
        p.publish_categories(2, vec![category("note", 0, None, Some("Hi"))])
            .unwrap();
        assert!(p.forget(1));
        assert!(!p.forget(1));
        assert_eq!(p.saved(2, now, 0).len(), 1);
    }
}
