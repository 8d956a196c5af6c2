//! The PostgreSQL store: for production, and for several Cairn instances
//! sharing one database. It mirrors `sqlite.rs` statement by statement; where
//! PostgreSQL's concurrency differs from SQLite's single writer, a comment at
//! the statement says what keeps it correct.
//!
//! Concurrency, once for the whole file. Every statement runs at READ
//! COMMITTED (PostgreSQL's default): each statement sees the rows committed
//! before it started, and an UPDATE/DELETE that finds its target row changed
//! by a concurrent transaction waits for it, then re-evaluates its WHERE
//! against the row's new version (the target table only: subqueries on other
//! tables keep the statement's snapshot). So a conditional UPDATE whose whole
//! condition is on the target row is an atomic compare-and-set, and
//! `INSERT ... ON CONFLICT DO NOTHING` waits for a concurrent insert of the
//! same key and then does nothing. Two statements also decide from rows of
//! other tables: `start_challenge`, which therefore locks the authorization
//! row first, and `begin_finalize`, which needs no lock (each says why).
//! Transactions that lock an authorization and a challenge lock the
//! authorization first, so they cannot deadlock one another.

use super::*;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Postgres, QueryBuilder, Row};
use std::str::FromStr;

pub struct PgStore {
    pub(super) pool: PgPool,
}

impl PgStore {
    /// Connect and bring the schema up to date.
    ///
    /// Safe when several instances start at once: sqlx 0.8's migrator
    /// (`Migrator::run_direct`, sqlx-core `migrate/migrator.rs`) first takes
    /// `pg_advisory_lock(id)` on its connection, with `id` derived from the
    /// database name (sqlx-postgres `migrate.rs`, `lock`/`generate_lock_id`),
    /// and only then creates `_sqlx_migrations` and applies what is missing,
    /// each migration in its own transaction. A second instance blocks on the
    /// lock, then finds every migration applied and does nothing.
    pub async fn open(url: &str, max_connections: u32) -> anyhow::Result<PgStore> {
        let opts = PgConnectOptions::from_str(url)?.application_name("cairn");
        // One plain connection first: a server that is down or refuses us
        // fails the start at once with its real cause, where the pool would
        // wait 30 s and report only a timeout.
        opts.connect().await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(opts)
            .await?;
        if let Err(e) = sqlx::migrate!("migrations/postgres").run(&pool).await {
            // A failed run returns before `pg_advisory_unlock`: close the
            // pool so the session, and with it the lock, ends now rather
            // than when this pool is dropped.
            pool.close().await;
            return Err(e.into());
        }
        Ok(PgStore { pool })
    }
}

fn account_from_row(r: &PgRow) -> Result<Account, Problem> {
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

fn challenge_from_row(r: &PgRow) -> Result<Challenge, Problem> {
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

/// Locks the authorization of challenge `$1` (FOR NO KEY UPDATE: it
/// conflicts with other such locks and with UPDATEs of the authorization,
/// but not with the KEY SHARE locks that foreign-key checks take, so orders
/// reusing the authorization are not held up). Every transaction that
/// changes a challenge's status takes it first, which serializes them per
/// authorization and fixes the lock order (authorization, then challenge).
const LOCK_CHALLENGE_AUTHZ: &str = "SELECT a.id FROM authzs a
     WHERE a.id = (SELECT c.authz_id FROM challenges c WHERE c.id = $1)
     FOR NO KEY UPDATE";

#[async_trait]
impl Store for PgStore {
    async fn redeem_nonce(&self, nonce: &[u8], expires: i64) -> Result<bool, Problem> {
        // Two instances inserting the same nonce: the second waits for the
        // first's commit, then conflicts and inserts nothing: one use only.
        let r = sqlx::query(
            "INSERT INTO used_nonces (nonce, expires) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(expires)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn prune_nonces(&self, now: i64) -> Result<u64, Problem> {
        let r = sqlx::query("DELETE FROM used_nonces WHERE expires < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, Problem> {
        // The loser of a race waits in the INSERT for the winner's commit, so
        // the SELECT (a new statement, a new snapshot) sees the winner's value.
        sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
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
             VALUES ($1, $2, $3, 'valid', $4) ON CONFLICT (thumbprint) DO NOTHING",
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
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"
        ))
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
        // One statement: the nonce insert (as in redeem_nonce: a racing
        // second insert waits for the first's commit, then conflicts) and
        // the account, joined to a one-row source so a missing account
        // still reports the nonce.
        let r = sqlx::query(
            "WITH spent AS (
                 INSERT INTO used_nonces (nonce, expires) VALUES ($2, $3)
                 ON CONFLICT DO NOTHING RETURNING 1)
             SELECT (SELECT count(*) FROM spent) AS fresh,
                    a.id, a.thumbprint, a.jwk, a.contact, a.status, a.created_at
             FROM (SELECT 1) AS one LEFT JOIN accounts a ON a.id = $1",
        )
        .bind(id.0)
        .bind(nonce)
        .bind(expires)
        .fetch_one(&self.pool)
        .await?;
        let fresh = r.try_get::<i64, _>("fresh")? == 1;
        let acct = match r.try_get::<Option<i64>, _>("id")? {
            Some(_) => Some(account_from_row(&r)?),
            None => None,
        };
        Ok((acct, fresh))
    }

    async fn account_by_thumbprint(&self, thumbprint: &str) -> Result<Option<Account>, Problem> {
        sqlx::query(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE thumbprint = $1"
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
        sqlx::query("UPDATE accounts SET contact = $1 WHERE id = $2 AND status = 'valid'")
            .bind(to_json(&contact)?)
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn deactivate_account(&self, id: AccountId) -> Result<(), Problem> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE accounts SET status = 'deactivated' WHERE id = $1 AND status = 'valid'",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        // RFC 8555 §7.3.6: the server SHOULD cancel pending operations.
        sqlx::query(
            "UPDATE authzs SET status = 'deactivated' WHERE account_id = $1 AND status IN ('pending', 'valid')",
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
        // A concurrent key change of this account makes the re-evaluated
        // `thumbprint = $4` false (0 rows); one of another account to the same
        // key makes the unique index wait for it, then fail: both as in SQLite.
        let r = sqlx::query(
            "UPDATE accounts SET jwk = $1, thumbprint = $2 WHERE id = $3 AND thumbprint = $4 AND status = 'valid'",
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
        let mut tx = self.pool.begin().await?;
        if let Some(serial) = &o.replaces {
            // Serialise orders replacing the same certificate: the second
            // waits here and then sees the first.
            sqlx::query("SELECT 1 FROM certificates WHERE serial = $1 FOR UPDATE")
                .bind(serial)
                .execute(&mut *tx)
                .await?;
        }
        let order_id: i64 = sqlx::query_scalar(
            "INSERT INTO orders (account_id, status, expires, identifiers, created_at, updated_at, replaces)
             VALUES ($1, 'pending', $2, $3, $4, $5, $6) RETURNING id",
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
            sqlx::query("INSERT INTO order_reservations (order_id, tokens) VALUES ($1, $2)")
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
                         VALUES ($1, $2, $3, 'pending', $4, $5) RETURNING id",
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
                            "INSERT INTO challenges (authz_id, type, token, status) VALUES ($1, $2, $3, 'pending')",
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
            // A reused authorization may be deactivated concurrently; like
            // SQLite, the order still links it, and begin_finalize refuses it.
            sqlx::query(
                "INSERT INTO order_authzs (order_id, authz_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
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
                    ARRAY(SELECT authz_id FROM order_authzs WHERE order_id = orders.id
                          ORDER BY authz_id) AS authz_ids
             FROM orders WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let authz_ids: Vec<i64> = r.try_get("authz_ids")?;
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
            "SELECT id FROM orders WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
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
            "SELECT id FROM authzs WHERE account_id = $1 AND identifier = $2 AND wildcard = $3
             AND status = 'valid' AND expires > $4 ORDER BY expires DESC LIMIT 1",
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
        // One BIGINT[] parameter instead of SQLite's placeholder list: one
        // prepared statement whatever the number of ids.
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let rows = sqlx::query(
            "SELECT id, account_id, identifier, wildcard, status, expires FROM authzs
             WHERE id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let challenges = sqlx::query(&format!(
            "SELECT {CHALLENGE_COLS} FROM challenges WHERE authz_id = ANY($1) ORDER BY id"
        ))
        .bind(&ids)
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
            "UPDATE authzs SET status = 'deactivated' WHERE id = $1 AND status IN ('pending', 'valid')",
        )
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn challenge(&self, id: ChallengeId) -> Result<Option<Challenge>, Problem> {
        sqlx::query(&format!(
            "SELECT {CHALLENGE_COLS} FROM challenges WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| challenge_from_row(&r))
        .transpose()
    }

    async fn start_challenge(&self, id: ChallengeId, now: i64) -> Result<bool, Problem> {
        // Alone, the UPDATE below would let two *different* challenges of one
        // authorization both start: each locks only its own row, and each
        // one's NOT EXISTS reads the other as still pending (the subquery is
        // not re-evaluated, and the other's change is not committed). SQLite's
        // single writer rules that out; here the authorization row lock does:
        // it is held to commit by whoever starts a challenge of it, and the
        // UPDATE, a later statement, takes its snapshot only once the lock is
        // ours, so it sees every earlier start and every authorization change
        // (those are UPDATEs of the locked row, so they wait for us or we for
        // them). Two starts of the *same* challenge would be safe without the
        // lock (`status = 'pending'` is re-evaluated on the target row); with
        // it they simply queue.
        let mut tx = self.pool.begin().await?;
        let authz: Option<i64> = sqlx::query_scalar(LOCK_CHALLENGE_AUTHZ)
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
        if authz.is_none() {
            tx.rollback().await?;
            return Ok(false);
        }
        let r = sqlx::query(
            "UPDATE challenges SET status = 'processing', started_at = $1
             WHERE id = $2 AND status = 'pending'
               AND EXISTS (SELECT 1 FROM authzs a WHERE a.id = challenges.authz_id
                           AND a.status = 'pending' AND a.expires > $1)
               AND NOT EXISTS (SELECT 1 FROM challenges o WHERE o.authz_id = challenges.authz_id
                               AND o.id != challenges.id AND o.status != 'pending')",
        )
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        // Both UPDATEs below are compare-and-sets on their own row (status
        // re-evaluated on the current version), so they are correct without
        // any lock. The authorization lock keeps one lock order with
        // start_challenge (authorization, then challenge). Today's statements
        // would not deadlock in the other order either (a start only waits
        // for a challenge pending in its snapshot; a finish only holds one
        // already processing), but that argument breaks with the next
        // statement added; one order does not. It costs one round trip per
        // validation, off the request path.
        sqlx::query(LOCK_CHALLENGE_AUTHZ)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        let (status, error, records) = match &result {
            Ok(records) => ("valid", None, Some(records.clone())),
            Err(p) => ("invalid", Some(to_json(p)?), None),
        };
        let authz_id: Option<i64> = sqlx::query_scalar(
            "UPDATE challenges SET status = $1, validated = $2, error = $3, records = $4
             WHERE id = $5 AND status = 'processing' RETURNING authz_id",
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
                sqlx::query(
                    "UPDATE authzs SET status = 'valid', expires = $1 WHERE id = $2 AND status = 'pending'",
                )
                .bind(valid_authz_expires)
                .bind(authz_id)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE authzs SET status = 'invalid' WHERE id = $1 AND status = 'pending'",
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
            "UPDATE challenges SET started_at = $1
             WHERE status = 'processing' AND started_at < $2 RETURNING id",
        )
        .bind(now)
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(ChallengeId).collect())
    }

    async fn begin_finalize(&self, id: OrderId, now: i64) -> Result<bool, Problem> {
        // One statement, no lock, and still correct when instances race:
        // - Two finalizes of the order: the second waits for the first's row
        //   lock, then re-evaluates `status = 'pending'` on the new version,
        //   finds 'processing' and updates nothing: exactly one wins.
        //   complete_order and fail_order change the row the same way.
        // - An authorization changing meanwhile: the NOT EXISTS is not
        //   re-evaluated, so it judges the authorizations as of this
        //   statement's snapshot. The only change that could matter is a
        //   valid authorization being deactivated (pending → valid cannot
        //   make us wrong: we just refuse, as if we had run first; expiry is
        //   `now`, not a write). That outcome equals running this statement
        //   just before the deactivation, a serial order: the deactivation
        //   reads nothing that we write, so there is no write skew to
        //   prevent. Locking the authorizations (FOR SHARE) would buy nothing
        //   but waits.
        let r = sqlx::query(
            "UPDATE orders SET status = 'processing', updated_at = $1
             WHERE id = $2 AND status = 'pending' AND expires > $1
               AND NOT EXISTS (SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
                               WHERE oa.order_id = orders.id AND (a.status != 'valid' OR a.expires <= $1))",
        )
        .bind(now)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn complete_order(&self, id: OrderId, c: &Certificate, now: i64) -> Result<(), Problem> {
        // A second completion of the order fails on certificates.order_id's
        // unique index (after waiting for the first to commit), as in SQLite.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO certificates (serial, account_id, order_id, der, chain_pem, not_before, not_after, issued_at, names, set_hash, spki_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
                "INSERT INTO certificate_names (name, serial) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(name.to_ascii_lowercase())
            .bind(&c.serial)
            .execute(&mut *tx)
            .await?;
        }
        let r = sqlx::query(
            "UPDATE orders SET status = 'valid', cert_serial = $1, updated_at = $2 WHERE id = $3 AND status = 'processing'",
        )
        .bind(&c.serial)
        .bind(now)
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(Problem::internal("order left processing during issuance"));
        }
        // The certificate uses the tokens the order reserved.
        sqlx::query("DELETE FROM order_reservations WHERE order_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail_order(&self, id: OrderId, error: &ErrorDoc, now: i64) -> Result<(), Problem> {
        sqlx::query(
            "UPDATE orders SET status = 'invalid', error = $1, updated_at = $2
             WHERE id = $3 AND status IN ('pending', 'processing')",
        )
        .bind(to_json(error)?)
        .bind(now)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_reservation(&self, id: OrderId) -> Result<Option<String>, Problem> {
        Ok(sqlx::query_scalar(
            "DELETE FROM order_reservations WHERE order_id = $1 RETURNING tokens",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn reservations_of_authz(&self, authz: AuthzId) -> Result<Vec<OrderId>, Problem> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT r.order_id FROM order_reservations r
             JOIN order_authzs oa ON oa.order_id = r.order_id
             JOIN orders o ON o.id = r.order_id
             WHERE oa.authz_id = $1 AND o.status = 'pending' ORDER BY r.order_id",
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
                OR (o.status = 'processing' AND o.updated_at < $2)
                OR (o.status = 'pending' AND (o.expires <= $1 OR EXISTS (
                    SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
                    WHERE oa.order_id = o.id
                      AND (a.status IN ('invalid', 'deactivated', 'revoked') OR a.expires <= $1))))
             ORDER BY r.order_id LIMIT $3",
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
            "SELECT {CERT_COLS} FROM certificates WHERE serial = $1"
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
             SET revoked_at = COALESCE(revoked_at, $1), revoked_reason = $2
             WHERE serial = $3
               AND (revoked_at IS NULL
                    OR ($4 AND revoked_reason IS DISTINCT FROM $2))",
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
                "INSERT INTO blocked_keys (spki_sha256, blocked_at, serial) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(hash)
            .bind(now)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE certificates SET revoked_at = $1, revoked_reason = 1
                 WHERE spki_sha256 = $2 AND revoked_at IS NULL",
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
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = $1)")
                .bind(spki_sha256)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn find_certificates(&self, q: &CertQuery) -> Result<Vec<Certificate>, Problem> {
        let mut b = QueryBuilder::<Postgres>::new(format!(
            "SELECT {CERT_COLS} FROM certificates WHERE TRUE"
        ));
        push_cert_filters(&mut b, q);
        b.push(" ORDER BY issued_at DESC, serial LIMIT ");
        b.push_bind(i64::from(q.limit.max(1)));
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn mark_renew_early(&self, q: &CertQuery, now: i64) -> Result<u64, Problem> {
        let mut b = QueryBuilder::<Postgres>::new("UPDATE certificates SET renew_early_at = ");
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
        let rows = sqlx::query("SELECT serial, der FROM certificates WHERE set_hash = '' LIMIT $1")
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
            "UPDATE certificates SET names = $1, set_hash = $2, spki_sha256 = $3 WHERE serial = $4",
        )
        .bind(to_json(&names)?)
        .bind(identifier_set_hash(names))
        .bind(spki_sha256)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        for name in names {
            sqlx::query(
                "INSERT INTO certificate_names (name, serial) VALUES ($1, $2) ON CONFLICT DO NOTHING",
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
             WHERE revoked_at IS NOT NULL AND not_after > $1 ORDER BY serial",
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
            "INSERT INTO crls (number, this_update, next_update, der) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(&crl.der)
        .execute(&mut *tx)
        .await?;
        // Older CRLs are superseded; keep a few for inspection.
        sqlx::query("DELETE FROM crls WHERE number < $1")
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
     WHERE o.replaces = $1 AND o.id <> $2 AND (
        o.status = 'valid'
        OR (o.status = 'processing' AND o.updated_at >= $4)
        OR (o.status = 'pending' AND o.expires > $3 AND NOT EXISTS (
            SELECT 1 FROM order_authzs oa JOIN authzs a ON a.id = oa.authz_id
            WHERE oa.order_id = o.id
              AND (a.status IN ('invalid', 'deactivated', 'revoked') OR a.expires <= $3)))))";

fn cert_from_row(r: &PgRow) -> Result<Certificate, Problem> {
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

fn push_cert_filters(b: &mut QueryBuilder<'_, Postgres>, q: &CertQuery) {
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
