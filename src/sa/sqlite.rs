//! The SQLite store: the embedded default, one file in WAL mode.

use super::*;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

pub struct SqliteStore {
    pub(super) pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?;
        restrict_database_files(opts.get_filename())?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged write survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

/// The database holds the nonce HMAC key and every account: owner-only.
/// Create the file 0600 before SQLite does (its `-wal` and `-shm` files take
/// the database file's mode), and narrow existing files to 0600.
fn restrict_database_files(db: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if db.as_os_str().is_empty() || db.as_os_str() == ":memory:" {
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::anyhow!("creating {}: {e}", db.display())),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if let Ok(meta) = std::fs::metadata(&p) {
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| anyhow::anyhow!("making {} owner-only: {e}", p.display()))?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

fn account_from_row(r: &SqliteRow) -> Result<Account, Problem> {
    Ok(Account {
        id: AccountId(r.try_get("id")?),
        thumbprint: r.try_get("thumbprint")?,
        jwk: r.try_get("jwk")?,
        contact: from_json(&r.try_get::<String, _>("contact")?)?,
        status: parse_name::<AccountStatus>(&r.try_get::<String, _>("status")?)?,
        created_at: r.try_get("created_at")?,
    })
}

fn opt_problem(s: Option<String>) -> Result<Option<ErrorDoc>, Problem> {
    s.map(|s| from_json(&s)).transpose()
}

fn challenge_from_row(r: &SqliteRow) -> Result<Challenge, Problem> {
    let kind: String = r.try_get("type")?;
    Ok(Challenge {
        id: ChallengeId(r.try_get("id")?),
        authz_id: AuthzId(r.try_get("authz_id")?),
        kind: ChallengeType::parse(&kind)
            .ok_or_else(|| Problem::internal(format!("bad challenge type in database: {kind}")))?,
        token: r.try_get("token")?,
        status: parse_name::<ChallengeStatus>(&r.try_get::<String, _>("status")?)?,
        validated: r.try_get("validated")?,
        error: opt_problem(r.try_get("error")?)?,
        records: r.try_get("records")?,
    })
}

const ACCOUNT_COLS: &str = "id, thumbprint, jwk, contact, status, created_at";
const CHALLENGE_COLS: &str = "id, authz_id, type, token, status, validated, error, records";

#[async_trait]
impl Store for SqliteStore {
    async fn redeem_nonce(&self, nonce: &[u8], expires: i64) -> Result<bool, Problem> {
        let r = sqlx::query(
            "INSERT INTO used_nonces (nonce, expires) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(expires)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn prune_nonces(&self, now: i64) -> Result<u64, Problem> {
        let r = sqlx::query("DELETE FROM used_nonces WHERE expires < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, Problem> {
        sqlx::query("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn create_account(
        &self,
        jwk: &str,
        thumbprint: &str,
        contact: &[String],
        now: i64,
    ) -> Result<(Account, bool), Problem> {
        let r = sqlx::query(
            "INSERT INTO accounts (thumbprint, jwk, contact, status, created_at)
             VALUES (?, ?, ?, 'valid', ?) ON CONFLICT (thumbprint) DO NOTHING",
        )
        .bind(thumbprint)
        .bind(jwk)
        .bind(to_json(&contact)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let created = r.rows_affected() == 1;
        let acct = self
            .account_by_thumbprint(thumbprint)
            .await?
            .ok_or_else(|| Problem::internal("account vanished after insert"))?;
        Ok((acct, created))
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>, Problem> {
        sqlx::query(&format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| account_from_row(&r))
            .transpose()
    }

    async fn account_spending_nonce(
        &self,
        id: AccountId,
        nonce: &[u8],
        expires: i64,
    ) -> Result<(Option<Account>, bool), Problem> {
        // Embedded: two statements cost no network round trip.
        let acct = self.account(id).await?;
        Ok((acct, self.redeem_nonce(nonce, expires).await?))
    }

    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Problem> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE thumbprint = ?"
        ))
        .bind(thumbprint)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| account_from_row(&r))
        .transpose()
    }

    async fn update_account_contact(
        &self,
        id: AccountId,
        contact: &[String],
    ) -> Result<(), Problem> {
        sqlx::query("UPDATE accounts SET contact = ? WHERE id = ? AND status = 'valid'")
            .bind(to_json(&contact)?)
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn deactivate_account(&self, id: AccountId) -> Result<(), Problem> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE accounts SET status = 'deactivated' WHERE id = ? AND status = 'valid'")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        // RFC 8555 §7.3.6: the server SHOULD cancel pending operations.
        sqlx::query(
            "UPDATE authzs SET status = 'deactivated' WHERE account_id = ? AND status IN ('pending', 'valid')",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn change_account_key(
        &self,
        id: AccountId,
        old_thumbprint: &str,
        jwk: &str,
        thumbprint: &str,
    ) -> Result<KeyChange, Problem> {
        let r = sqlx::query(
            "UPDATE accounts SET jwk = ?, thumbprint = ? WHERE id = ? AND thumbprint = ? AND status = 'valid'",
        )
        .bind(jwk)
        .bind(thumbprint)
        .bind(id.0)
        .bind(old_thumbprint)
        .execute(&self.pool)
        .await;
        match r {
            Ok(r) if r.rows_affected() == 1 => Ok(KeyChange::Changed),
            Ok(_) => Err(Problem::malformed(
                "the account's key changed concurrently; retry with the current key",
            )),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let other = self
                    .account_by_thumbprint(thumbprint)
                    .await?
                    .ok_or_else(|| Problem::internal("conflicting account vanished"))?;
                Ok(KeyChange::InUse(other.id))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn create_order(&self, o: NewOrder) -> Result<Order, Problem> {
        // The INSERT comes first: it takes SQLite's write lock, so the
        // replacement check below cannot race another writer.
        let mut tx = self.pool.begin().await?;
        let order_id: i64 = sqlx::query_scalar(
            "INSERT INTO orders (account_id, status, expires, identifiers, created_at, updated_at, replaces)
             VALUES (?, 'pending', ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(o.account_id.0)
        .bind(o.expires)
        .bind(to_json(&o.identifiers)?)
        .bind(o.now)
        .bind(o.now)
        .bind(&o.replaces)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(serial) = &o.replaces {
            let taken: bool = sqlx::query_scalar(LIVE_REPLACEMENT)
                .bind(serial)
                .bind(order_id)
                .bind(o.now)
                .bind(o.now - STALE_PROCESSING_SECS)
                .fetch_one(&mut *tx)
                .await?;
            if taken {
                return Err(Problem::already_replaced(format!(
                    "certificate {serial} is already being replaced by another order"
                )));
            }
        }
        if let Some(tokens) = &o.reservation {
            sqlx::query("INSERT INTO order_reservations (order_id, tokens) VALUES (?, ?)")
                .bind(order_id)
                .bind(tokens)
                .execute(&mut *tx)
                .await?;
        }
        let mut authz_ids = Vec::with_capacity(o.authzs.len());
        for a in &o.authzs {
            let authz_id = match a {
                OrderAuthz::Reuse(id) => id.0,
                OrderAuthz::New(n) => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO authzs (account_id, identifier, wildcard, status, expires, created_at)
                         VALUES (?, ?, ?, 'pending', ?, ?) RETURNING id",
                    )
                    .bind(o.account_id.0)
                    .bind(&n.identifier)
                    .bind(n.wildcard)
                    .bind(n.expires)
                    .bind(o.now)
                    .fetch_one(&mut *tx)
                    .await?;
                    for (kind, token) in &n.challenges {
                        sqlx::query(
                            "INSERT INTO challenges (authz_id, type, token, status) VALUES (?, ?, ?, 'pending')",
                        )
                        .bind(id)
                        .bind(kind.as_str())
                        .bind(token)
                        .execute(&mut *tx)
                        .await?;
                    }
                    id
                }
            };
            sqlx::query("INSERT INTO order_authzs (order_id, authz_id) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(order_id)
                .bind(authz_id)
                .execute(&mut *tx)
                .await?;
            authz_ids.push(AuthzId(authz_id));
        }
        tx.commit().await?;
        Ok(Order {
            id: OrderId(order_id),
            account_id: o.account_id,
            status: OrderStatus::Pending,
            expires: o.expires,
            identifiers: o.identifiers,
            authz_ids,
            error: None,
            cert_serial: None,
            replaces: o.replaces,
            created_at: o.now,
            updated_at: o.now,
        })
    }

    async fn order(&self, id: OrderId) -> Result<Option<Order>, Problem> {
        // One round trip: the order and its authorization ids together.
        let Some(r) = sqlx::query(
            "SELECT id, account_id, status, expires, identifiers, error, cert_serial, replaces, created_at, updated_at,
                    (SELECT group_concat(authz_id) FROM
                        (SELECT authz_id FROM order_authzs WHERE order_id = orders.id ORDER BY authz_id))
                    AS authz_ids
             FROM orders WHERE id = ?",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        // group_concat's order is unspecified: sort here.
        let mut authz_ids: Vec<i64> = r
            .try_get::<Option<String>, _>("authz_ids")?
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| Problem::internal("bad authz id in database"))
            })
            .collect::<Result<_, _>>()?;
        authz_ids.sort_unstable();
        Ok(Some(Order {
            id,
            account_id: AccountId(r.try_get("account_id")?),
            status: parse_name::<OrderStatus>(&r.try_get::<String, _>("status")?)?,
            expires: r.try_get("expires")?,
            identifiers: from_json(&r.try_get::<String, _>("identifiers")?)?,
            authz_ids: authz_ids.into_iter().map(AuthzId).collect(),
            error: opt_problem(r.try_get("error")?)?,
            cert_serial: r.try_get("cert_serial")?,
            replaces: r.try_get("replaces")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        }))
    }

    async fn account_orders(
        &self,
        account: AccountId,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<OrderId>, Problem> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE account_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(account.0)
        .bind(after.map(|a| a.0).unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn reusable_authz(
        &self,
        account: AccountId,
        identifier: &str,
        wildcard: bool,
        min_expires: i64,
    ) -> Result<Option<AuthzId>, Problem> {
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM authzs WHERE account_id = ? AND identifier = ? AND wildcard = ?
             AND status = 'valid' AND expires > ? ORDER BY expires DESC LIMIT 1",
        )
        .bind(account.0)
        .bind(identifier)
        .bind(wildcard)
        .bind(min_expires)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.map(AuthzId))
    }

    async fn authz(&self, id: AuthzId) -> Result<Option<Authz>, Problem> {
        Ok(self.authzs(&[id]).await?.into_iter().next())
    }

    async fn authzs(&self, ids: &[AuthzId]) -> Result<Vec<Authz>, Problem> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; ids.len()].join(",");
        let sql = format!(
            "SELECT id, account_id, identifier, wildcard, status, expires FROM authzs
             WHERE id IN ({placeholders}) ORDER BY id"
        );
        let mut q = sqlx::query(&sql);
        for id in ids {
            q = q.bind(id.0);
        }
        let rows = q.fetch_all(&self.pool).await?;
        let csql = format!(
            "SELECT {CHALLENGE_COLS} FROM challenges WHERE authz_id IN ({placeholders}) ORDER BY id"
        );
        let mut cq = sqlx::query(&csql);
        for id in ids {
            cq = cq.bind(id.0);
        }
        let challenges = cq
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(challenge_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter()
            .map(|r| {
                let id = AuthzId(r.try_get("id")?);
                Ok(Authz {
                    id,
                    account_id: AccountId(r.try_get("account_id")?),
                    identifier: r.try_get("identifier")?,
                    wildcard: r.try_get("wildcard")?,
                    status: parse_name::<AuthzStatus>(&r.try_get::<String, _>("status")?)?,
                    expires: r.try_get("expires")?,
                    challenges: challenges
                        .iter()
                        .filter(|c| c.authz_id == id)
                        .cloned()
                        .collect(),
                })
            })
            .collect()
    }

    async fn deactivate_authz(&self, id: AuthzId) -> Result<bool, Problem> {
        let r = sqlx::query(
            "UPDATE authzs SET status = 'deactivated' WHERE id = ? AND status IN ('pending', 'valid')",
        )
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn challenge(&self, id: ChallengeId) -> Result<Option<Challenge>, Problem> {
        sqlx::query(&format!(
            "SELECT {CHALLENGE_COLS} FROM challenges WHERE id = ?"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| challenge_from_row(&r))
        .transpose()
    }

    async fn start_challenge(&self, id: ChallengeId, now: i64) -> Result<bool, Problem> {
        let r = sqlx::query(
            "UPDATE challenges SET status = 'processing', started_at = ?1
             WHERE id = ?2 AND status = 'pending'
               AND EXISTS (SELECT 1 FROM authzs a WHERE a.id = challenges.authz_id
                           AND a.status = 'pending' AND a.expires > ?1)
               AND NOT EXISTS (SELECT 1 FROM challenges o WHERE o.authz_id = challenges.authz_id
                               AND o.id != challenges.id AND o.status != 'pending')",
        )
        .bind(now)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn finish_challenge(
        &self,
        id: ChallengeId,
        result: Result<String, ErrorDoc>,
        now: i64,
        valid_authz_expires: i64,
    ) -> Result<bool, Problem> {
        let mut tx = self.pool.begin().await?;
        let (status, error, records) = match &result {
            Ok(records) => ("valid", None, Some(records.clone())),
            Err(p) => ("invalid", Some(to_json(p)?), None),
        };
        let authz_id: Option<i64> = sqlx::query_scalar(
            "UPDATE challenges SET status = ?, validated = ?, error = ?, records = ?
             WHERE id = ? AND status = 'processing' RETURNING authz_id",
        )
        .bind(status)
        .bind(now)
        .bind(error)
        .bind(records)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(authz_id) = authz_id {
            if result.is_ok() {
                sqlx::query("UPDATE authzs SET status = 'valid', expires = ? WHERE id = ? AND status = 'pending'")
                    .bind(valid_authz_expires)
                    .bind(authz_id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "UPDATE authzs SET status = 'invalid' WHERE id = ? AND status = 'pending'",
                )
                .bind(authz_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(authz_id.is_some())
    }

    async fn claim_stale_challenges(
        &self,
        stale_before: i64,
        now: i64,
    ) -> Result<Vec<ChallengeId>, Problem> {
        // One statement: a row re-checked under concurrent claims is taken
        // by one caller only, since the first moves started_at past the bound.
        let ids: Vec<i64> = sqlx::query_scalar(
            "UPDATE challenges SET started_at = ?1
             WHERE status = 'processing' AND started_at < ?2 RETURNING id",
        )
        .bind(now)
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ChallengeId).collect())
    }

    async fn begin_finalize(&self, id: OrderId, now: i64) -> Result<bool, Problem> {
        let r = sqlx::query(
            "UPDATE orders SET status = 'processing', updated_at = ?1
             WHERE id = ?2 AND status = 'pending' AND expires > ?1
               AND NOT EXISTS (SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
                               WHERE oa.order_id = orders.id AND (a.status != 'valid' OR a.expires <= ?1))",
        )
        .bind(now)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn complete_order(&self, id: OrderId, c: &Certificate, now: i64) -> Result<(), Problem> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO certificates (serial, account_id, order_id, der, chain_pem, not_before, not_after, issued_at, names, set_hash, spki_sha256)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.serial)
        .bind(c.account_id.0)
        .bind(c.order_id.0)
        .bind(&c.der)
        .bind(&c.chain_pem)
        .bind(c.not_before)
        .bind(c.not_after)
        .bind(c.issued_at)
        .bind(to_json(&c.names)?)
        .bind(identifier_set_hash(&c.names))
        .bind(&c.spki_sha256)
        .execute(&mut *tx)
        .await?;
        for name in &c.names {
            sqlx::query(
                "INSERT INTO certificate_names (name, serial) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(name.to_ascii_lowercase())
            .bind(&c.serial)
            .execute(&mut *tx)
            .await?;
        }
        let r = sqlx::query(
            "UPDATE orders SET status = 'valid', cert_serial = ?, updated_at = ? WHERE id = ? AND status = 'processing'",
        )
        .bind(&c.serial)
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(Problem::internal("order left processing during issuance"));
        }
        // The certificate uses the tokens the order reserved.
        sqlx::query("DELETE FROM order_reservations WHERE order_id = ?")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail_order(&self, id: OrderId, error: &ErrorDoc, now: i64) -> Result<(), Problem> {
        sqlx::query(
            "UPDATE orders SET status = 'invalid', error = ?, updated_at = ?
             WHERE id = ? AND status IN ('pending', 'processing')",
        )
        .bind(to_json(error)?)
        .bind(now)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_reservation(&self, id: OrderId) -> Result<Option<String>, Problem> {
        Ok(
            sqlx::query_scalar(
                "DELETE FROM order_reservations WHERE order_id = ? RETURNING tokens",
            )
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    async fn reservations_of_authz(&self, authz: AuthzId) -> Result<Vec<OrderId>, Problem> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT r.order_id FROM order_reservations r
             JOIN order_authzs oa ON oa.order_id = r.order_id
             JOIN orders o ON o.id = r.order_id
             WHERE oa.authz_id = ?1 AND o.status = 'pending' ORDER BY r.order_id",
        )
        .bind(authz.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn dead_reservations(
        &self,
        now: i64,
        stale_before: i64,
        limit: u32,
    ) -> Result<Vec<OrderId>, Problem> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT r.order_id FROM order_reservations r JOIN orders o ON o.id = r.order_id
             WHERE o.status = 'invalid'
                OR (o.status = 'processing' AND o.updated_at < ?2)
                OR (o.status = 'pending' AND (o.expires <= ?1 OR EXISTS (
                    SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
                    WHERE oa.order_id = o.id
                      AND (a.status IN ('invalid', 'deactivated', 'revoked') OR a.expires <= ?1))))
             ORDER BY r.order_id LIMIT ?3",
        )
        .bind(now)
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(OrderId).collect())
    }

    async fn certificate(&self, serial: &str) -> Result<Option<Certificate>, Problem> {
        let r = sqlx::query(&format!(
            "SELECT {CERT_COLS} FROM certificates WHERE serial = ?"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(cert_from_row).transpose()
    }

    async fn revoke_certificate(
        &self,
        serial: &str,
        reason: i64,
        now: i64,
        block_key: Option<&[u8]>,
    ) -> Result<bool, Problem> {
        let mut tx = self.pool.begin().await?;
        // A proven compromise also turns an earlier revocation's reason
        // into keyCompromise (its time kept), so the key gets blocked.
        let r = sqlx::query(
            "UPDATE certificates
             SET revoked_at = COALESCE(revoked_at, ?1), revoked_reason = ?2
             WHERE serial = ?3
               AND (revoked_at IS NULL
                    OR (?4 AND revoked_reason IS DISTINCT FROM ?2))",
        )
        .bind(now)
        .bind(reason)
        .bind(serial)
        .bind(block_key.is_some())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(hash) = block_key {
            sqlx::query(
                "INSERT INTO blocked_keys (spki_sha256, blocked_at, serial) VALUES (?, ?, ?)
                 ON CONFLICT DO NOTHING",
            )
            .bind(hash)
            .bind(now)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE certificates SET revoked_at = ?, revoked_reason = 1
                 WHERE spki_sha256 = ? AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn key_blocked(&self, spki_sha256: &[u8]) -> Result<bool, Problem> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = ?)")
                .bind(spki_sha256)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn find_certificates(&self, q: &CertQuery) -> Result<Vec<Certificate>, Problem> {
        let mut b =
            QueryBuilder::<Sqlite>::new(format!("SELECT {CERT_COLS} FROM certificates WHERE TRUE"));
        push_cert_filters(&mut b, q);
        b.push(" ORDER BY issued_at DESC, serial LIMIT ");
        b.push_bind(i64::from(q.limit.max(1)));
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn mark_renew_early(&self, q: &CertQuery, now: i64) -> Result<u64, Problem> {
        let mut b = QueryBuilder::<Sqlite>::new("UPDATE certificates SET renew_early_at = ");
        b.push_bind(now);
        b.push(" WHERE renew_early_at IS NULL AND revoked_at IS NULL AND not_after > ");
        b.push_bind(now);
        push_cert_filters(&mut b, q);
        Ok(b.build().execute(&self.pool).await?.rows_affected())
    }

    async fn certificates_without_names(
        &self,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, Problem> {
        let rows = sqlx::query("SELECT serial, der FROM certificates WHERE set_hash = '' LIMIT ?1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("serial")?, r.try_get("der")?)))
            .collect()
    }

    async fn set_certificate_names(
        &self,
        serial: &str,
        names: &[String],
        spki_sha256: Option<&[u8]>,
    ) -> Result<(), Problem> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE certificates SET names = ?1, set_hash = ?2, spki_sha256 = ?3 WHERE serial = ?4",
        )
        .bind(to_json(&names)?)
        .bind(identifier_set_hash(names))
        .bind(spki_sha256)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        for name in names {
            sqlx::query(
                "INSERT INTO certificate_names (name, serial) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )
            .bind(name.to_ascii_lowercase())
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn revoked_certificates(
        &self,
        not_after_after: i64,
    ) -> Result<Vec<RevokedEntry>, Problem> {
        let rows = sqlx::query(
            "SELECT serial, revoked_at, revoked_reason FROM certificates
             WHERE revoked_at IS NOT NULL AND not_after > ? ORDER BY serial",
        )
        .bind(not_after_after)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedEntry {
                    serial: r.try_get("serial")?,
                    revoked_at: r.try_get("revoked_at")?,
                    reason: r.try_get::<Option<i64>, _>("revoked_reason")?.unwrap_or(0),
                })
            })
            .collect()
    }

    async fn latest_crl(&self) -> Result<Option<StoredCrl>, Problem> {
        let r = sqlx::query(
            "SELECT number, this_update, next_update, der FROM crls ORDER BY number DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| {
            Ok(StoredCrl {
                number: r.try_get("number")?,
                this_update: r.try_get("this_update")?,
                next_update: r.try_get("next_update")?,
                der: r.try_get("der")?,
            })
        })
        .transpose()
    }

    async fn insert_crl(&self, crl: &StoredCrl) -> Result<bool, Problem> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO crls (number, this_update, next_update, der) VALUES (?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(&crl.der)
        .execute(&mut *tx)
        .await?;
        // Older CRLs are superseded; keep a few for inspection.
        sqlx::query("DELETE FROM crls WHERE number < ?")
            .bind(crl.number - CRLS_KEPT)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }
}

const CERT_COLS: &str =
    "serial, account_id, order_id, der, chain_pem, not_before, not_after, issued_at,
     revoked_at, revoked_reason, names, renew_early_at, spki_sha256";

/// How many superseded CRLs stay in the table.
const CRLS_KEPT: i64 = 10;

/// Another live order (not failed, not expired, not stuck in processing:
/// the same derivation the RA makes) that replaces this certificate.
const LIVE_REPLACEMENT: &str = "SELECT EXISTS (SELECT 1 FROM orders o
     WHERE o.replaces = ?1 AND o.id <> ?2 AND (
        o.status = 'valid'
        OR (o.status = 'processing' AND o.updated_at >= ?4)
        OR (o.status = 'pending' AND o.expires > ?3 AND NOT EXISTS (
            SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
            WHERE oa.order_id = o.id
              AND (a.status IN ('invalid', 'deactivated', 'revoked') OR a.expires <= ?3)))))";

fn cert_from_row(r: &SqliteRow) -> Result<Certificate, Problem> {
    Ok(Certificate {
        serial: r.try_get("serial")?,
        account_id: AccountId(r.try_get("account_id")?),
        order_id: OrderId(r.try_get("order_id")?),
        der: r.try_get("der")?,
        chain_pem: r.try_get("chain_pem")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        issued_at: r.try_get("issued_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revoked_reason: r.try_get("revoked_reason")?,
        names: from_json(&r.try_get::<String, _>("names")?)?,
        renew_early_at: r.try_get("renew_early_at")?,
        spki_sha256: r
            .try_get::<Option<Vec<u8>>, _>("spki_sha256")?
            .unwrap_or_default(),
    })
}

fn push_cert_filters(b: &mut QueryBuilder<'_, Sqlite>, q: &CertQuery) {
    if let Some(serial) = &q.serial {
        b.push(" AND serial = ");
        b.push_bind(serial.clone());
    }
    if let Some(name) = &q.name {
        b.push(" AND serial IN (SELECT serial FROM certificate_names WHERE name = ");
        b.push_bind(name.to_ascii_lowercase());
        b.push(")");
    }
    if let Some(account) = q.account {
        b.push(" AND account_id = ");
        b.push_bind(account.0);
    }
    if let Some(before) = q.issued_before {
        b.push(" AND issued_at < ");
        b.push_bind(before);
    }
}
