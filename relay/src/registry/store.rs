//! Where the embedded registry keeps twins: [`TwinStore`] with two implementations.
//!
//! - [`RedbStore`]: an embedded database file ([redb]): ACID, every acknowledged write is
//!   on disk (fsync at commit), a crash mid-write loses only that unacknowledged write.
//! - [`RedisStore`]: for relays that already run with `--redis`; durability is then
//!   Redis's (use `appendonly yes` with `appendfsync always` for the same guarantee).
//!   On a single Redis or a Sentinel set its keys are `<prefix>accounts`,
//!   `<prefix>next_id` and `<prefix>twin:<id>`; on a Redis Cluster the prefix is wrapped
//!   in a hash tag (`{rmb:registry:}accounts`, …) so that all of them share one slot, as
//!   the upsert script reads and writes them together (it names `twin:<id>` only once
//!   it has read the id). The registry is small and written rarely, so one slot is
//!   enough.
//!
//! The one write, [`TwinStore::upsert`], checks and writes in one atomic step: assign the
//! next id (1, 2, 3, …) or update in place, refusing a request whose timestamp is not newer
//! than the last accepted one for that twin (replay protection that survives restarts).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use rmb_identity::AccountId;
use rmb_identity::registry::{Twin, TwinUpdate};
use serde::{Deserialize, Serialize};

use crate::redis_conn::RedisConn;

/// Why the store failed. These are server-side faults, not the client's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry database: {0}")]
    Redb(String),
    #[error(
        "registry database {path} is still held by another process after waiting {waited_secs} s; is another rmb-relay running with this --data-dir? (wait longer with --data-dir-lock-wait)"
    )]
    Locked { path: String, waited_secs: u64 },
    #[error("registry redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("registry store holds invalid data: {0}")]
    Corrupt(String),
    /// A Redis key prefix with braces (it would break the keys' hash tag on a cluster).
    #[error("registry key prefix '{0}' must not contain '{{' or '}}'")]
    BadPrefix(String),
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsert {
    Created(Twin),
    Updated(Twin),
    /// The account has no twin and the request did not ask to create one.
    NotRegistered,
    /// The request's timestamp is not newer than `last_ms`, the last one accepted.
    Stale {
        last_ms: u64,
    },
}

impl Upsert {
    /// The outcome of a successful write.
    fn written(twin: Twin, created: bool) -> Self {
        if created {
            Upsert::Created(twin)
        } else {
            Upsert::Updated(twin)
        }
    }
}

/// A place to keep twins.
#[async_trait]
pub trait TwinStore: Send + Sync + 'static {
    async fn get(&self, id: u32) -> Result<Option<Twin>, StoreError>;
    async fn id_by_account(&self, account: &AccountId) -> Result<Option<u32>, StoreError>;
    /// Atomically creates or updates the twin of `account` (see the module docs).
    async fn upsert(
        &self,
        account: &AccountId,
        update: &TwinUpdate,
        timestamp_ms: u64,
    ) -> Result<Upsert, StoreError>;
    /// One line for logs.
    fn describe(&self) -> String;
}

/// A twin's stored record (the id is the key, so it is not repeated).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    account: String,
    relays: std::collections::BTreeSet<String>,
    pk: Option<String>,
    last_request_ms: u64,
}

impl Record {
    fn new(account: &AccountId, update: &TwinUpdate, timestamp_ms: u64) -> Self {
        Record {
            account: account.to_hex(),
            relays: update.relays.clone(),
            pk: update.pk.as_ref().map(hex::encode),
            last_request_ms: timestamp_ms,
        }
    }

    fn into_twin(self, id: u32) -> Result<Twin, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("twin {id}: bad {what}"));
        let account: AccountId = format!("0x{}", self.account)
            .parse()
            .map_err(|_| corrupt("account"))?;
        let pk = match self.pk {
            Some(pk) => Some(hex::decode(pk).map_err(|_| corrupt("pk"))?),
            None => None,
        };
        Ok(Twin {
            id,
            account,
            relays: self.relays,
            pk,
        })
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialize")
    }

    fn decode(id: u32, bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("twin {id}: {e}")))
    }
}

const TWINS: TableDefinition<u32, &[u8]> = TableDefinition::new("twins");
const ACCOUNTS: TableDefinition<&[u8], u32> = TableDefinition::new("accounts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// How often [`RedbStore::open_waiting`] tries again to open a held database.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Twins in an embedded redb database file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: String,
}

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redb(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the database at `path`; fails at once if another process
    /// has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(redb_err)?;
        Self::with_tables(db, path)
    }

    /// Opens (or creates) the database at `path`, waiting up to `wait` while another
    /// process holds its lock: a relay restarted at once finds the file still held by
    /// the old process until that one has exited. Logs once that it waits, and why.
    pub async fn open_waiting(path: &Path, wait: Duration) -> Result<Self, StoreError> {
        let started = Instant::now();
        let mut logged = false;
        loop {
            match Database::create(path) {
                Ok(db) => {
                    if logged {
                        tracing::info!(path = %path.display(), waited_ms = started.elapsed().as_millis() as u64, "registry database free: opened");
                    }
                    return Self::with_tables(db, path);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    if started.elapsed() >= wait {
                        return Err(StoreError::Locked {
                            path: path.display().to_string(),
                            waited_secs: wait.as_secs(),
                        });
                    }
                    if !logged {
                        logged = true;
                        tracing::warn!(
                            path = %path.display(),
                            wait_secs = wait.as_secs(),
                            "another process holds the registry database (an rmb-relay still shutting down, or one running with the same --data-dir); waiting for it to free the file"
                        );
                    }
                    tokio::time::sleep(LOCK_POLL).await;
                }
                Err(e) => return Err(redb_err(e)),
            }
        }
    }

    fn with_tables(db: Database, path: &Path) -> Result<Self, StoreError> {
        let tx = db.begin_write().map_err(redb_err)?;
        tx.open_table(TWINS).map_err(redb_err)?;
        tx.open_table(ACCOUNTS).map_err(redb_err)?;
        tx.open_table(META).map_err(redb_err)?;
        tx.commit().map_err(redb_err)?;
        Ok(RedbStore {
            db: Arc::new(db),
            path: path.display().to_string(),
        })
    }

    fn get_blocking(&self, id: u32) -> Result<Option<Twin>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(TWINS).map_err(redb_err)?;
        match table.get(id).map_err(redb_err)? {
            Some(bytes) => Ok(Some(Record::decode(id, bytes.value())?.into_twin(id)?)),
            None => Ok(None),
        }
    }

    fn upsert_blocking(
        &self,
        account: &AccountId,
        update: &TwinUpdate,
        timestamp_ms: u64,
    ) -> Result<Upsert, StoreError> {
        let tx = self.db.begin_write().map_err(redb_err)?;
        let outcome = {
            let mut accounts = tx.open_table(ACCOUNTS).map_err(redb_err)?;
            let mut twins = tx.open_table(TWINS).map_err(redb_err)?;
            let existing = accounts
                .get(account.as_bytes().as_slice())
                .map_err(redb_err)?
                .map(|v| v.value());
            let (id, created) = match existing {
                Some(id) => {
                    let last = match twins.get(id).map_err(redb_err)? {
                        Some(bytes) => Record::decode(id, bytes.value())?.last_request_ms,
                        None => 0,
                    };
                    if timestamp_ms <= last {
                        return Ok(Upsert::Stale { last_ms: last });
                    }
                    (id, false)
                }
                None if !update.create => return Ok(Upsert::NotRegistered),
                None => {
                    let mut meta = tx.open_table(META).map_err(redb_err)?;
                    let next = meta
                        .get(NEXT_ID)
                        .map_err(redb_err)?
                        .map_or(1, |v| v.value());
                    let id = u32::try_from(next)
                        .map_err(|_| StoreError::Corrupt("twin ids exhausted".into()))?;
                    meta.insert(NEXT_ID, next + 1).map_err(redb_err)?;
                    accounts
                        .insert(account.as_bytes().as_slice(), id)
                        .map_err(redb_err)?;
                    (id, true)
                }
            };
            let record = Record::new(account, update, timestamp_ms);
            twins
                .insert(id, record.encode().as_slice())
                .map_err(redb_err)?;
            Upsert::written(record.into_twin(id)?, created)
        };
        tx.commit().map_err(redb_err)?;
        Ok(outcome)
    }
}

#[async_trait]
impl TwinStore for RedbStore {
    async fn get(&self, id: u32) -> Result<Option<Twin>, StoreError> {
        self.get_blocking(id)
    }

    async fn id_by_account(&self, account: &AccountId) -> Result<Option<u32>, StoreError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let table = tx.open_table(ACCOUNTS).map_err(redb_err)?;
        Ok(table
            .get(account.as_bytes().as_slice())
            .map_err(redb_err)?
            .map(|v| v.value()))
    }

    async fn upsert(
        &self,
        account: &AccountId,
        update: &TwinUpdate,
        timestamp_ms: u64,
    ) -> Result<Upsert, StoreError> {
        // A commit waits for fsync: keep it off the async workers.
        let (this, account, update) = (self.clone(), *account, update.clone());
        tokio::task::spawn_blocking(move || this.upsert_blocking(&account, &update, timestamp_ms))
            .await
            .map_err(|e| StoreError::Redb(format!("write task failed: {e}")))?
    }

    fn describe(&self) -> String {
        format!("redb file {}", self.path)
    }
}

/// Atomic create-or-update in Redis.
/// KEYS[1] = account→id hash, KEYS[2] = id counter, KEYS[3] = twin hash prefix.
/// ARGV = account hex, record JSON, create flag, timestamp.
const UPSERT_SCRIPT: &str = r#"
local id = redis.call('HGET', KEYS[1], ARGV[1])
local created = 0
if not id then
  if ARGV[3] == '0' then return {'absent', ''} end
  id = tostring(redis.call('INCR', KEYS[2]))
  redis.call('HSET', KEYS[1], ARGV[1], id)
  created = 1
else
  local last = redis.call('HGET', KEYS[3] .. id, 'stamp')
  if last and tonumber(ARGV[4]) <= tonumber(last) then return {'stale', last} end
end
redis.call('HSET', KEYS[3] .. id, 'record', ARGV[2], 'stamp', ARGV[4])
if created == 1 then return {'created', id} end
return {'updated', id}
"#;

/// Twins in Redis, under keys starting with a prefix (default `rmb:registry:`).
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    /// The prefix, as a hash tag on a cluster (see the module docs).
    prefix: String,
    script: Arc<redis::Script>,
}

impl RedisStore {
    /// Connects to the `--redis` value `url` (any accepted form) and keeps keys under
    /// `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::with_conn(RedisConn::open(url).await?, prefix)
    }

    /// Uses an open connection (reconnects by itself) and keeps keys under `prefix`.
    pub fn with_conn(conn: RedisConn, prefix: &str) -> Result<Self, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::BadPrefix(prefix.to_string()));
        }
        let prefix = if conn.is_cluster() {
            format!("{{{prefix}}}")
        } else {
            prefix.to_string()
        };
        Ok(RedisStore {
            conn,
            prefix,
            script: Arc::new(redis::Script::new(UPSERT_SCRIPT)),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[async_trait]
impl TwinStore for RedisStore {
    async fn get(&self, id: u32) -> Result<Option<Twin>, StoreError> {
        let mut conn = self.conn.clone();
        let record: Option<String> = redis::cmd("HGET")
            .arg(self.key(&format!("twin:{id}")))
            .arg("record")
            .query_async(&mut conn)
            .await?;
        match record {
            Some(json) => Ok(Some(Record::decode(id, json.as_bytes())?.into_twin(id)?)),
            None => Ok(None),
        }
    }

    async fn id_by_account(&self, account: &AccountId) -> Result<Option<u32>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGET")
            .arg(self.key("accounts"))
            .arg(account.to_hex())
            .query_async(&mut conn)
            .await?)
    }

    async fn upsert(
        &self,
        account: &AccountId,
        update: &TwinUpdate,
        timestamp_ms: u64,
    ) -> Result<Upsert, StoreError> {
        let mut conn = self.conn.clone();
        let record = Record::new(account, update, timestamp_ms);
        let (outcome, value): (String, String) = self
            .script
            .key(self.key("accounts"))
            .key(self.key("next_id"))
            .key(self.key("twin:"))
            .arg(account.to_hex())
            .arg(String::from_utf8(record.encode()).expect("JSON is UTF-8"))
            .arg(if update.create { "1" } else { "0" })
            .arg(timestamp_ms)
            .invoke_async(&mut conn)
            .await?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| StoreError::Corrupt(format!("script returned '{v}'")))
        };
        match outcome.as_str() {
            "absent" => Ok(Upsert::NotRegistered),
            "stale" => Ok(Upsert::Stale {
                last_ms: number(&value)?,
            }),
            "created" | "updated" => {
                let id = u32::try_from(number(&value)?)
                    .map_err(|_| StoreError::Corrupt("twin ids exhausted".into()))?;
                Ok(Upsert::written(record.into_twin(id)?, outcome == "created"))
            }
            other => Err(StoreError::Corrupt(format!("script returned '{other}'"))),
        }
    }

    fn describe(&self) -> String {
        format!("redis {} (keys {}*)", self.conn.target(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(relay: &str, create: bool) -> TwinUpdate {
        TwinUpdate {
            relays: [relay.to_string()].into(),
            pk: Some(vec![7; 32]),
            create,
        }
    }

    #[tokio::test]
    async fn redb_assigns_ids_updates_and_refuses_stale_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("twins.redb")).unwrap();
        let (a, b) = (AccountId([1; 32]), AccountId([2; 32]));

        assert_eq!(
            store.upsert(&a, &update("r1", false), 10).await.unwrap(),
            Upsert::NotRegistered
        );
        let Upsert::Created(first) = store.upsert(&a, &update("r1", true), 10).await.unwrap()
        else {
            panic!("expected a new twin");
        };
        let Upsert::Created(second) = store.upsert(&b, &update("r2", true), 10).await.unwrap()
        else {
            panic!("expected a new twin");
        };
        assert_eq!((first.id, second.id), (1, 2));
        assert_eq!(
            store.upsert(&a, &update("r3", true), 10).await.unwrap(),
            Upsert::Stale { last_ms: 10 }
        );
        let Upsert::Updated(updated) = store.upsert(&a, &update("r3", false), 11).await.unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!(updated.id, 1);
        assert_eq!(store.get(1).await.unwrap(), Some(updated));
        assert_eq!(store.id_by_account(&b).await.unwrap(), Some(2));
        assert_eq!(store.get(3).await.unwrap(), None);
    }

    #[tokio::test]
    async fn redb_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twins.redb");
        let account = AccountId([5; 32]);
        {
            let store = RedbStore::open(&path).unwrap();
            store.upsert(&account, &update("r", true), 1).await.unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.id_by_account(&account).await.unwrap(), Some(1));
        assert_eq!(
            store
                .upsert(&account, &update("r", false), 1)
                .await
                .unwrap(),
            Upsert::Stale { last_ms: 1 }
        );
        let Upsert::Created(next) = store
            .upsert(&AccountId([6; 32]), &update("r", true), 1)
            .await
            .unwrap()
        else {
            panic!("expected a new twin");
        };
        assert_eq!(next.id, 2);
    }
}
