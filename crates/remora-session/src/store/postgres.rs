//! [`PostgresStore`]: sessions in a PostgreSQL table, on `tokio-postgres` +
//! `deadpool-postgres`.
//!
//! The table (default `remora_sessions`) is created on first use with an
//! index on `expires_at`. Saves are `UPDATE ... WHERE id = $1 AND version =
//! $2` (or an insert that only replaces an expired row); expired rows are
//! deleted by [`Store::sweep_expired`] (run it periodically with
//! [`spawn_sweeper`](crate::store::spawn_sweeper)).

use deadpool_postgres::{Pool, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use super::{BoxFuture, SaveOutcome, Store};
use crate::error::StoreError;
use crate::record::{Record, now_ms};

/// Default table name.
pub const DEFAULT_TABLE: &str = "remora_sessions";

/// A store on PostgreSQL.
pub struct PostgresStore {
    pool: Pool,
    table: String,
    ready: OnceCell<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A table name was not a plain SQL identifier.
#[derive(Debug, thiserror::Error)]
#[error("invalid table name {0:?}: use 1-63 characters [A-Za-z0-9_], not starting with a digit")]
pub struct InvalidTableName(pub String);

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PostgresStore {
    /// A store on a new pool for `url` (e.g. `postgres://user@host/db`).
    /// Connects lazily.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let cfg = deadpool_postgres::Config {
            url: Some(url.to_owned()),
            ..Default::default()
        };
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1), NoTls)
            .map_err(StoreError::CreatePool)?;
        Ok(Self::with_pool(pool))
    }

    /// A store on an existing pool.
    pub fn with_pool(pool: Pool) -> Self {
        PostgresStore {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            ready: OnceCell::new(),
        }
    }

    /// Uses another table name (default `remora_sessions`).
    pub fn with_table(mut self, table: &str) -> Result<Self, InvalidTableName> {
        let ok = !table.is_empty()
            && table.len() <= 63
            && !table.starts_with(|c: char| c.is_ascii_digit())
            && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(InvalidTableName(table.to_owned()));
        }
        self.table = table.to_owned();
        Ok(self)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let c = self.pool.get().await.map_err(StoreError::Pool)?;
        self.ready
            .get_or_try_init(|| async {
                let t = &self.table;
                let sql = format!(
                    "CREATE TABLE IF NOT EXISTS {t} (
                        id TEXT PRIMARY KEY,
                        version BIGINT NOT NULL,
                        accessed_at BIGINT NOT NULL,
                        idle_deadline BIGINT NOT NULL,
                        absolute_deadline BIGINT NOT NULL,
                        expires_at BIGINT NOT NULL,
                        data TEXT NOT NULL);
                     CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at);"
                );
                // Two processes creating the table at once can collide on the
                // catalog; the second attempt then sees the table.
                match c.batch_execute(&sql).await {
                    Ok(()) => Ok(()),
                    Err(_) => c.batch_execute(&sql).await.map_err(StoreError::Postgres),
                }
            })
            .await?;
        Ok(c)
    }

    async fn load_with(
        &self,
        c: &deadpool_postgres::Object,
        id: &str,
    ) -> Result<Option<Record>, StoreError> {
        let sql = format!(
            "SELECT data, accessed_at, idle_deadline FROM {} WHERE id = $1 AND expires_at > $2",
            self.table
        );
        let row = c
            .query_opt(&sql, &[&id, &i(now_ms())])
            .await
            .map_err(StoreError::Postgres)?;
        let Some(row) = row else { return Ok(None) };
        let data: String = row.try_get(0).map_err(StoreError::Postgres)?;
        let a: i64 = row.try_get(1).map_err(StoreError::Postgres)?;
        let idle: i64 = row.try_get(2).map_err(StoreError::Postgres)?;
        let mut r = Record::from_json(data.as_bytes()).map_err(StoreError::Codec)?;
        r.accessed_at = r.accessed_at.max(u(a));
        r.idle_deadline = u(idle);
        Ok(Some(r))
    }
}

impl Store for PostgresStore {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            self.load_with(&c, id).await
        })
    }

    fn save<'a>(
        &'a self,
        record: &'a Record,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let t = &self.table;
            let data =
                String::from_utf8(record.to_json().map_err(StoreError::Codec)?).unwrap_or_default();
            let now = i(now_ms());
            let (v, a, idle, abs, exp) = (
                i(record.version),
                i(record.accessed_at),
                i(record.idle_deadline),
                i(record.absolute_deadline),
                i(record.expires_at()),
            );
            let n = if expected_version == 0 {
                let sql = format!(
                    "INSERT INTO {t} AS s (id, version, accessed_at, idle_deadline, absolute_deadline, expires_at, data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version,
                       accessed_at = EXCLUDED.accessed_at, idle_deadline = EXCLUDED.idle_deadline,
                       absolute_deadline = EXCLUDED.absolute_deadline,
                       expires_at = EXCLUDED.expires_at, data = EXCLUDED.data
                     WHERE s.expires_at <= $8"
                );
                c.execute(&sql, &[&record.id, &v, &a, &idle, &abs, &exp, &data, &now])
                    .await
            } else {
                let sql = format!(
                    "UPDATE {t} SET version = $3, accessed_at = $4, idle_deadline = $5,
                       absolute_deadline = $6, expires_at = $7, data = $8
                     WHERE id = $1 AND version = $2 AND expires_at > $9"
                );
                c.execute(
                    &sql,
                    &[
                        &record.id,
                        &i(expected_version),
                        &v,
                        &a,
                        &idle,
                        &abs,
                        &exp,
                        &data,
                        &now,
                    ],
                )
                .await
            }
            .map_err(StoreError::Postgres)?;
            if n == 1 {
                Ok(SaveOutcome::Saved {
                    new_version: record.version,
                })
            } else {
                Ok(SaveOutcome::Conflict {
                    current: self.load_with(&c, &record.id).await?,
                })
            }
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let sql = format!("DELETE FROM {} WHERE id = $1", self.table);
            c.execute(&sql, &[&id])
                .await
                .map_err(StoreError::Postgres)?;
            Ok(())
        })
    }

    fn touch<'a>(
        &'a self,
        id: &'a str,
        accessed_at: u64,
        idle_deadline: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let sql = format!(
                "UPDATE {} SET accessed_at = GREATEST(accessed_at, $2),
                   idle_deadline = LEAST(GREATEST(idle_deadline, $3), absolute_deadline),
                   expires_at = LEAST(GREATEST(idle_deadline, $3), absolute_deadline)
                 WHERE id = $1 AND expires_at > $4",
                self.table
            );
            let n = c
                .execute(
                    &sql,
                    &[&id, &i(accessed_at), &i(idle_deadline), &i(now_ms())],
                )
                .await
                .map_err(StoreError::Postgres)?;
            Ok(n == 1)
        })
    }

    fn sweep_expired(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let sql = format!("DELETE FROM {} WHERE expires_at <= $1", self.table);
            c.execute(&sql, &[&i(now_ms())])
                .await
                .map_err(StoreError::Postgres)
        })
    }
}
