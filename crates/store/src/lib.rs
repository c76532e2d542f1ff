//! Persistence for Porchlight.
//!
//! Memory is the primary copy of hot state; a node writes what changed
//! behind, in batches, through the [`Store`] interface, and reads it all
//! back once at start. [`EmbeddedStore`] keeps it in a fjall database in
//! one directory, for one node.
//!
//! A store from another schema version, or one whose records do not read
//! back, is an error that stops the node, never data silently dropped.

pub mod codec;

use std::path::{Path, PathBuf};

pub use codec::SavedRegistration;
pub use porchlight_presence::SavedPublication;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use porchlight_presence::SavedSubscription;

/// The schema this build reads and writes. A store written with another
/// refuses to open rather than be misread.
pub const SCHEMA: u32 = 1;

/// Keys a node must keep across restarts for the dialogs it made to carry
/// on: the salt its subscription tags and entity tags are keyed with, and
/// the secret that signs its Record-Route tokens.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NodeSecrets {
    /// Keys subscription tags, nonces and entity tags.
    pub salt: u64,
    /// Keys Record-Route tokens.
    pub edge_secret: [u8; 32],
}

impl std::fmt::Debug for NodeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecrets(..)")
    }
}

impl NodeSecrets {
    /// Fresh random secrets, for a node without a store or a new store.
    pub fn generate() -> Result<NodeSecrets, StoreError> {
        let mut bytes = [0u8; 40];
        getrandom::getrandom(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
        Ok(NodeSecrets::from_bytes(&bytes))
    }

    /// The secrets from the form [`to_bytes`](Self::to_bytes) writes, as a
    /// cluster keeps them for all its nodes.
    pub fn from_bytes(bytes: &[u8; 40]) -> NodeSecrets {
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&bytes[..8]);
        let mut edge_secret = [0u8; 32];
        edge_secret.copy_from_slice(&bytes[8..]);
        NodeSecrets {
            salt: u64::from_le_bytes(salt),
            edge_secret,
        }
    }

    /// The secrets as 40 bytes: salt, then the Record-Route key.
    pub fn to_bytes(self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..8].copy_from_slice(&self.salt.to_le_bytes());
        out[8..].copy_from_slice(&self.edge_secret);
        out
    }
}

/// One write-behind batch: subscriptions to save (their flows put in
/// words by the node), slots whose subscription ended, and endpoints whose
/// registered contacts changed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Saved or updated.
    pub saved: Vec<SavedSubscription<String>>,
    /// Slots to delete.
    pub deleted: Vec<u32>,
    /// Each endpoint's registered contacts now, by URI; an empty list
    /// deletes the entry.
    pub registrations: Vec<(String, Vec<SavedRegistration>)>,
    /// Each endpoint's publications now, by URI; an empty list deletes
    /// the entry.
    pub publications: Vec<(String, Vec<SavedPublication>)>,
}

/// How far a written batch must have gone before the write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Handed to the operating system: survives the process being killed.
    Process,
    /// On the disk (fsync): survives the machine losing power.
    Disk,
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the store at {path}: {reason}. If another Porchlight is running on it, stop that one; if the directory is damaged, move it aside (the node then starts empty) or restore it from a backup")]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Written by a build with another schema.
    #[error("the store at {path} has schema {found}, and this build reads schema {SCHEMA}. Run the version that wrote it, or move the directory aside to start empty")]
    Schema {
        /// The directory.
        path: PathBuf,
        /// The schema found.
        found: u32,
    },
    /// A record does not read back.
    #[error("the store at {path} holds a damaged {what} record (key {key}): {reason}. Move the directory aside to start empty, or restore it from a backup")]
    Corrupt {
        /// The directory.
        path: PathBuf,
        /// Which kind of record.
        what: &'static str,
        /// Its key, in hex.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("store I/O at {path}: {reason}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The system's random source failed.
    #[error("no random source for the node's secrets: {0}")]
    Random(String),
}

/// What a node keeps across restarts, behind one interface so the node
/// does not depend on where it is kept. Implemented by the embedded store.
pub trait Store: Send + Sync {
    /// The node's keys, made once and kept.
    fn secrets(&self) -> NodeSecrets;
    /// Keeps a cluster's keys in place of the node's own, on the disk
    /// before returning, so the next start keys its tags as the cluster does.
    fn adopt_secrets(&self, secrets: NodeSecrets) -> Result<(), StoreError>;
    /// Whether any subscription is saved, without reading them.
    fn holds_subscriptions(&self) -> Result<bool, StoreError>;
    /// Every saved subscription, to restore at start.
    fn subscriptions(&self) -> Result<Vec<SavedSubscription<String>>, StoreError>;
    /// Every endpoint's saved registered contacts, by endpoint URI.
    fn registrations(&self) -> Result<Vec<(String, Vec<SavedRegistration>)>, StoreError>;
    /// Every endpoint's saved publications (PUBLISH and SERVICE), by
    /// endpoint URI.
    fn publications(&self) -> Result<Vec<(String, Vec<SavedPublication>)>, StoreError>;
    /// Writes one batch, atomically.
    fn write(&self, batch: &Batch) -> Result<(), StoreError>;
    /// The provisioned configuration (policy and endpoints as one TOML
    /// document), once an admin has changed it through the node.
    fn provisioned(&self) -> Result<Option<String>, StoreError>;
    /// Replaces the provisioned configuration, on the disk before returning.
    fn save_provisioned(&self, document: &str) -> Result<(), StoreError>;
    /// Presence an admin set for endpoints, by endpoint URI.
    fn admin_presence(&self) -> Result<Vec<(String, AdminPresence)>, StoreError>;
    /// Keeps (or, with None, forgets) an admin's presence for an endpoint,
    /// on the disk before returning.
    fn save_admin_presence(
        &self,
        endpoint: &str,
        presence: Option<&AdminPresence>,
    ) -> Result<(), StoreError>;
}

/// Presence an admin set for an endpoint: it wins over every source until
/// cleared, restarts included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminPresence {
    /// On the Microsoft scale.
    pub availability: u32,
    /// Free text.
    pub note: Option<String>,
}

/// The embedded store: a fjall database in one directory, locked while a
/// node has it open.
pub struct EmbeddedStore {
    path: PathBuf,
    db: Database,
    subscriptions: Keyspace,
    registrations: Keyspace,
    publications: Keyspace,
    meta: Keyspace,
    secrets: std::sync::Mutex<NodeSecrets>,
    durability: Durability,
}

const SCHEMA_KEY: &str = "schema";
const SECRETS_KEY: &str = "secrets";
const PROVISIONED_KEY: &str = "provisioned";
const ADMIN_PRESENCE_PREFIX: &str = "admin-presence:";

impl EmbeddedStore {
    /// Opens the store in `path`, creating it when the directory is new,
    /// and checks its schema.
    pub fn open(path: &Path, durability: Durability) -> Result<EmbeddedStore, StoreError> {
        let path = path.to_path_buf();
        let open = |e: fjall::Error| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        let db = Database::builder(&path).open().map_err(open)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(open)?;
        let subscriptions = db
            .keyspace("subscriptions", KeyspaceCreateOptions::default)
            .map_err(open)?;
        let registrations = db
            .keyspace("registrations", KeyspaceCreateOptions::default)
            .map_err(open)?;
        let publications = db
            .keyspace("publications", KeyspaceCreateOptions::default)
            .map_err(open)?;
        let io = |e: fjall::Error| StoreError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        let corrupt = |key: &str, reason: &str| StoreError::Corrupt {
            path: path.clone(),
            what: "meta",
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        match meta.get(SCHEMA_KEY).map_err(io)? {
            Some(found) => {
                let found = <[u8; 4]>::try_from(&*found)
                    .map_err(|_| corrupt(SCHEMA_KEY, "not a 4-byte number"))?;
                let found = u32::from_le_bytes(found);
                if found != SCHEMA {
                    return Err(StoreError::Schema { path, found });
                }
            }
            None if !subscriptions.is_empty().map_err(io)? => {
                return Err(corrupt(SCHEMA_KEY, "missing, yet records are present"));
            }
            None => meta.insert(SCHEMA_KEY, SCHEMA.to_le_bytes()).map_err(io)?,
        }
        let secrets = match meta.get(SECRETS_KEY).map_err(io)? {
            Some(bytes) => NodeSecrets::from_bytes(
                &<[u8; 40]>::try_from(&*bytes).map_err(|_| corrupt(SECRETS_KEY, "not 40 bytes"))?,
            ),
            None => {
                let secrets = NodeSecrets::generate()?;
                meta.insert(SECRETS_KEY, secrets.to_bytes()).map_err(io)?;
                secrets
            }
        };
        db.persist(PersistMode::SyncAll).map_err(io)?;
        Ok(EmbeddedStore {
            path,
            db,
            subscriptions,
            registrations,
            publications,
            meta,
            secrets: std::sync::Mutex::new(secrets),
            durability,
        })
    }

    fn io(&self, e: fjall::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Every entry of a keyspace keyed by endpoint URI, decoded.
    fn by_endpoint<T>(
        &self,
        keyspace: &Keyspace,
        what: &'static str,
        decode: fn(&[u8]) -> Result<T, codec::DecodeError>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for guard in keyspace.iter() {
            let (key, value) = guard.into_inner().map_err(|e| self.io(e))?;
            let endpoint = String::from_utf8_lossy(&key).into_owned();
            let decoded = decode(&value).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                what,
                key: endpoint.clone(),
                reason: e.to_string(),
            })?;
            out.push((endpoint, decoded));
        }
        Ok(out)
    }
}

/// Puts an endpoint's entries into a batch: an empty list deletes them.
fn write_by_endpoint<T>(
    write: &mut fjall::OwnedWriteBatch,
    keyspace: &Keyspace,
    entries: &[(String, Vec<T>)],
    encode: fn(&[T]) -> Vec<u8>,
) {
    for (endpoint, list) in entries {
        if list.is_empty() {
            write.remove(keyspace, endpoint.as_bytes());
        } else {
            write.insert(keyspace, endpoint.as_bytes(), encode(list));
        }
    }
}

impl Store for EmbeddedStore {
    fn secrets(&self) -> NodeSecrets {
        *self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn adopt_secrets(&self, secrets: NodeSecrets) -> Result<(), StoreError> {
        self.meta
            .insert(SECRETS_KEY, secrets.to_bytes())
            .map_err(|e| self.io(e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.io(e))?;
        *self.secrets.lock().unwrap_or_else(|p| p.into_inner()) = secrets;
        Ok(())
    }

    fn holds_subscriptions(&self) -> Result<bool, StoreError> {
        Ok(!self.subscriptions.is_empty().map_err(|e| self.io(e))?)
    }

    fn subscriptions(&self) -> Result<Vec<SavedSubscription<String>>, StoreError> {
        let mut out = Vec::new();
        for guard in self.subscriptions.iter() {
            let (key, value) = guard.into_inner().map_err(|e| self.io(e))?;
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let corrupt = |reason: String| StoreError::Corrupt {
                path: self.path.clone(),
                what: "subscription",
                key: hex.clone(),
                reason,
            };
            let saved = codec::decode_subscription(&value).map_err(|e| corrupt(e.to_string()))?;
            if *key != saved.id.index.to_be_bytes() {
                return Err(corrupt(format!("it names slot {}", saved.id.index)));
            }
            out.push(saved);
        }
        Ok(out)
    }

    fn registrations(&self) -> Result<Vec<(String, Vec<SavedRegistration>)>, StoreError> {
        self.by_endpoint(
            &self.registrations,
            "registration",
            codec::decode_registrations,
        )
    }

    fn publications(&self) -> Result<Vec<(String, Vec<SavedPublication>)>, StoreError> {
        self.by_endpoint(
            &self.publications,
            "publication",
            codec::decode_publications,
        )
    }

    fn provisioned(&self) -> Result<Option<String>, StoreError> {
        let Some(bytes) = self.meta.get(PROVISIONED_KEY).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| StoreError::Corrupt {
                path: self.path.clone(),
                what: "configuration",
                key: PROVISIONED_KEY.into(),
                reason: "not UTF-8".into(),
            })
    }

    fn save_provisioned(&self, document: &str) -> Result<(), StoreError> {
        self.meta
            .insert(PROVISIONED_KEY, document.as_bytes())
            .map_err(|e| self.io(e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.io(e))
    }

    fn admin_presence(&self) -> Result<Vec<(String, AdminPresence)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.meta.prefix(ADMIN_PRESENCE_PREFIX) {
            let (key, value) = guard.into_inner().map_err(|e| self.io(e))?;
            let endpoint =
                String::from_utf8_lossy(&key[ADMIN_PRESENCE_PREFIX.len()..]).into_owned();
            let corrupt = |reason: &str| StoreError::Corrupt {
                path: self.path.clone(),
                what: "admin presence",
                key: endpoint.clone(),
                reason: reason.into(),
            };
            let (number, note) = value
                .split_at_checked(4)
                .ok_or_else(|| corrupt("too short"))?;
            let availability =
                u32::from_le_bytes(number.try_into().map_err(|_| corrupt("too short"))?);
            let note = std::str::from_utf8(note).map_err(|_| corrupt("note not UTF-8"))?;
            out.push((
                endpoint,
                AdminPresence {
                    availability,
                    note: (!note.is_empty()).then(|| note.to_owned()),
                },
            ));
        }
        Ok(out)
    }

    fn save_admin_presence(
        &self,
        endpoint: &str,
        presence: Option<&AdminPresence>,
    ) -> Result<(), StoreError> {
        let key = format!("{ADMIN_PRESENCE_PREFIX}{endpoint}");
        match presence {
            Some(p) => {
                let mut value = p.availability.to_le_bytes().to_vec();
                value.extend_from_slice(p.note.as_deref().unwrap_or_default().as_bytes());
                self.meta.insert(key, value)
            }
            None => self.meta.remove(key),
        }
        .map_err(|e| self.io(e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.io(e))
    }

    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut write = self.db.batch().durability(Some(match self.durability {
            Durability::Process => PersistMode::Buffer,
            Durability::Disk => PersistMode::SyncData,
        }));
        for saved in &batch.saved {
            write.insert(
                &self.subscriptions,
                saved.id.index.to_be_bytes(),
                codec::encode_subscription(saved),
            );
        }
        for slot in &batch.deleted {
            write.remove(&self.subscriptions, slot.to_be_bytes());
        }
        write_by_endpoint(
            &mut write,
            &self.registrations,
            &batch.registrations,
            codec::encode_registrations,
        );
        write_by_endpoint(
            &mut write,
            &self.publications,
            &batch.publications,
            codec::encode_publications,
        );
        write.commit().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("porchlight-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn registration() -> SavedRegistration {
        porchlight_endpoints::SavedBinding {
            contact: "sip:ivr@10.0.0.7:5080".into(),
            expires_at: 1_800_000_300,
            call_id: "reg-1".into(),
            cseq: 3,
            flow: codec::tests::sample(0).flow,
        }
    }

    fn publication() -> SavedPublication {
        SavedPublication::Publish {
            etag: "5eed0001".into(),
            state: porchlight_presence::PresenceState::new(porchlight_presence::Availability::BUSY),
            expires_at: 1_700_000_600,
            sequence: 1,
        }
    }

    #[test]
    fn batches_and_secrets_survive_reopening() {
        let path = dir("reopen");
        let secrets;
        {
            let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
            secrets = store.secrets();
            let batch = Batch {
                saved: (0..3).map(codec::tests::sample).collect(),
                ..Batch::default()
            };
            store.write(&batch).unwrap();
            store
                .write(&Batch {
                    saved: vec![codec::tests::sample(7)],
                    deleted: vec![1],
                    registrations: vec![
                        ("sip:ivr@contoso.com".into(), vec![registration()]),
                        ("sip:gone@contoso.com".into(), vec![registration()]),
                    ],
                    publications: vec![
                        ("sip:ivr@contoso.com".into(), vec![publication()]),
                        ("sip:gone@contoso.com".into(), vec![publication()]),
                    ],
                })
                .unwrap();
            store
                .write(&Batch {
                    registrations: vec![("sip:gone@contoso.com".into(), Vec::new())],
                    publications: vec![("sip:gone@contoso.com".into(), Vec::new())],
                    ..Batch::default()
                })
                .unwrap();
        }
        let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
        assert_eq!(store.secrets(), secrets, "the node keeps its keys");
        assert_eq!(store.provisioned().unwrap(), None);
        store.save_provisioned("[policy]\n").unwrap();
        assert_eq!(store.provisioned().unwrap().as_deref(), Some("[policy]\n"));
        let busy = AdminPresence {
            availability: 6500,
            note: Some("maintenance".into()),
        };
        store
            .save_admin_presence("sip:ivr@contoso.com", Some(&busy))
            .unwrap();
        store
            .save_admin_presence("sip:bot@contoso.com", Some(&busy))
            .unwrap();
        store
            .save_admin_presence("sip:bot@contoso.com", None)
            .unwrap();
        assert_eq!(
            store.admin_presence().unwrap(),
            [("sip:ivr@contoso.com".to_owned(), busy)]
        );
        let slots: Vec<u32> = store
            .subscriptions()
            .unwrap()
            .iter()
            .map(|s| s.id.index)
            .collect();
        assert_eq!(slots, [0, 2, 7]);
        assert_eq!(
            store.registrations().unwrap(),
            [("sip:ivr@contoso.com".to_owned(), vec![registration()])],
            "an empty list deletes"
        );
        assert_eq!(
            store.publications().unwrap(),
            [("sip:ivr@contoso.com".to_owned(), vec![publication()])]
        );
        let _ = std::fs::remove_dir_all(&path);
    }

    #[test]
    fn another_schema_or_a_damaged_record_stops_the_open() {
        let path = dir("schema");
        {
            let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
            store
                .write(&Batch {
                    saved: vec![codec::tests::sample(4)],
                    ..Batch::default()
                })
                .unwrap();
            // Damage one record the way a foreign writer would.
            store
                .subscriptions
                .insert(5u32.to_be_bytes(), [1u8, 2, 3])
                .unwrap();
        }
        let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
        let err = store.subscriptions().unwrap_err().to_string();
        assert!(
            err.contains("damaged subscription record (key 00000005)"),
            "{err}"
        );
        assert!(err.contains("Move the directory aside"), "{err}");
        // A newer schema.
        {
            let meta = store
                .db
                .keyspace("meta", KeyspaceCreateOptions::default)
                .unwrap();
            meta.insert(SCHEMA_KEY, 2u32.to_le_bytes()).unwrap();
        }
        drop(store);
        let err = EmbeddedStore::open(&path, Durability::Process)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("has schema 2, and this build reads schema 1"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&path);
    }

    #[test]
    fn a_store_in_use_is_refused() {
        let path = dir("locked");
        let _first = EmbeddedStore::open(&path, Durability::Process).unwrap();
        let err = EmbeddedStore::open(&path, Durability::Process)
            .err()
            .expect("locked")
            .to_string();
        assert!(err.contains("another Porchlight"), "{err}");
        let _ = std::fs::remove_dir_all(&path);
    }
}
