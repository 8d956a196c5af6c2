//! The `Store` contract, run against both backends: every behaviour below is
//! one function, called once for SQLite (a file in a temporary directory) and
//! once for PostgreSQL (a database of its own, created on the server named by
//! `CAIRN_TEST_DATABASE_URL` and dropped at the end, panic or not). The race
//! tests open several stores on one database, as several Cairn instances
//! would, and check that each one-shot transition happens exactly once.
//!
//! Without `CAIRN_TEST_DATABASE_URL` the PostgreSQL tests fail, so CI cannot
//! skip them silently; `CAIRN_TEST_SKIP_POSTGRES=1` skips them on purpose.
//! `url=$(scripts/pg-cluster start)` gives a server.

mod common;

use cairn::core::{
    identifier_set_hash, Account, AccountId, AccountStatus, AuthzId, AuthzStatus, Certificate,
    ChallengeId, ChallengeStatus, ChallengeType, Conflict, EabKey, Identifier, IdentifierType,
    Order, OrderId, OrderStatus, RevocationCounts, RevokedEntry, StoreError, StoredCrl,
};
use cairn::problem::Problem;
use cairn::ra::{error_doc, problem_of};
use cairn::sa::{
    CertQuery, DynStore, KeyChange, NewAuthz, NewOrder, OrderAuthz, PastAccount, PastIssuance,
    Store,
};
use common::{contract_tests, Fixture};
use std::sync::Arc;
use tokio::sync::Barrier;

/// The test clock: times are Unix seconds, and no behaviour reads the real
/// clock, so a fixed "now" keeps every expiry comparison exact.
const NOW: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

// ------------------------------------------------ one test per backend ---

contract_tests!(
    nonce_redeemed_once,
    prune_nonces_forgets_expired,
    secret_first_writer_wins,
    create_account_is_idempotent_by_thumbprint,
    account_contact_and_deactivation,
    key_change_and_conflict,
    create_order_with_new_and_reused_authzs,
    missing_rows_read_as_none,
    account_orders_paginate,
    start_challenge_only_once,
    finish_challenge_valid_updates_authz,
    finish_challenge_invalid_updates_authz,
    deactivate_authz_once,
    stale_challenges_claimed_once,
    revoke_certificate_once,
    begin_finalize_needs_valid_unexpired_authzs,
    begin_finalize_only_once,
    complete_order_stores_certificate_once,
    complete_order_requires_processing,
    fail_order_from_pending_or_processing,
    race_redeem_nonce,
    race_redeem_many_nonces,
    race_begin_finalize,
    race_start_same_challenge,
    race_start_sibling_challenges,
    race_start_while_finishing,
    race_create_account,
    eab_key_binds_by_its_terms,
    race_single_use_eab_key,
    certificates_found_by_name_account_serial_and_date,
    renew_early_marks_only_live_unmarked_certificates,
    issued_for_set_ignores_order_and_case,
    key_compromise_blocks_key_and_revokes_its_certificates,
    crl_rows_and_revoked_entries,
    revoked_entries_come_whole_across_pages,
    replacement_refused_while_another_is_live,
    race_replacement_orders,
    race_insert_crl,
    reservation_is_taken_once_and_consumed_by_issuance,
    account_read_spends_the_nonce_once,
    race_account_spending_nonce,
    dead_reservations_are_failed_expired_or_stuck_orders,
    lifecycle_sql_matches_rust,
    purge_takes_only_what_nothing_needs,
);

/// Several instances migrating one fresh PostgreSQL database at the same
/// moment (the advisory lock in sqlx's migrator). PostgreSQL only: an
/// SQLite file belongs to one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_migrations() {
    let Some(f) = Fixture::postgres().await else {
        return;
    };
    let opens = (0..8).map(|_| cairn::sa::open(&f.url, 2));
    let stores = futures::future::join_all(opens).await;
    for s in &stores {
        if let Err(e) = s {
            panic!("a concurrent open failed: {e:#}");
        }
    }
    let s = stores
        .into_iter()
        .next()
        .and_then(Result::ok)
        .expect("a store");
    assert!(s.redeem_nonce(b"after-migrations", NOW).await.unwrap());
}

// -------------------------------------------------------------- helpers ---

async fn new_account(s: &dyn Store, thumbprint: &str) -> Account {
    let (acct, created) = s
        .create_account(
            &format!("{{\"kty\":\"OKP\",\"x\":\"{thumbprint}\"}}"),
            thumbprint,
            &[format!("mailto:{thumbprint}@example.com")],
            None,
            NOW,
        )
        .await
        .unwrap();
    assert!(created, "account {thumbprint} existed already");
    acct
}

/// A new pending authorization with all three challenge types.
fn new_authz(identifier: &str, expires: i64) -> OrderAuthz {
    OrderAuthz::New(NewAuthz {
        identifier_type: IdentifierType::Dns,
        profile: "classic".into(),
        identifier: identifier.to_owned(),
        wildcard: false,
        expires,
        challenges: [
            ChallengeType::Http01,
            ChallengeType::Dns01,
            ChallengeType::TlsAlpn01,
        ]
        .into_iter()
        .map(|kind| (kind, format!("token-{identifier}-{}", kind.as_str())))
        .collect(),
    })
}

async fn new_order(s: &dyn Store, account: AccountId, names: &[&str], expires: i64) -> Order {
    s.create_order(NewOrder {
        profile: "classic".into(),
        account_id: account,
        expires,
        identifiers: names.iter().map(|n| Identifier::dns(*n)).collect(),
        authzs: names.iter().map(|n| new_authz(n, NOW + DAY)).collect(),
        replaces: None,
        reservation: None,
        now: NOW,
    })
    .await
    .unwrap()
}

/// A certificate issued for `names` to a new order of `account`.
async fn issued(s: &dyn Store, account: AccountId, serial: &str, names: &[&str], at: i64) -> Order {
    let order = ready_order(s, account, names).await;
    assert!(s.begin_finalize(order.id, NOW).await.unwrap());
    let mut c = certificate(serial, &order);
    c.issued_at = at;
    s.complete_order(order.id, &c, NOW).await.unwrap();
    order
}

async fn replacing_order(
    s: &dyn Store,
    account: AccountId,
    serial: &str,
) -> Result<Order, StoreError> {
    s.create_order(NewOrder {
        profile: "classic".into(),
        account_id: account,
        expires: NOW + DAY,
        identifiers: vec![Identifier::dns("r.example")],
        authzs: vec![new_authz("r.example", NOW + DAY)],
        replaces: Some(serial.to_owned()),
        reservation: None,
        now: NOW,
    })
    .await
}

/// The id of the authorization's challenge of `kind`.
async fn challenge_of(s: &dyn Store, authz: AuthzId, kind: ChallengeType) -> ChallengeId {
    let a = s.authz(authz).await.unwrap().expect("authz exists");
    a.challenges
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("authz {authz} has no {} challenge", kind.as_str()))
        .id
}

/// Validate the authorization through its http-01 challenge, valid until
/// `valid_until`.
async fn validate(s: &dyn Store, authz: AuthzId, valid_until: i64) {
    let c = challenge_of(s, authz, ChallengeType::Http01).await;
    assert!(s.start_challenge(c, NOW).await.unwrap(), "start {c}");
    s.finish_challenge(c, Ok("[]".into()), NOW, valid_until)
        .await
        .unwrap();
    assert_eq!(
        s.authz(authz).await.unwrap().unwrap().status,
        AuthzStatus::Valid
    );
}

/// An order whose authorizations are all valid: ready to finalize.
async fn ready_order(s: &dyn Store, account: AccountId, names: &[&str]) -> Order {
    let order = new_order(s, account, names, NOW + 7 * DAY).await;
    for a in &order.authz_ids {
        validate(s, *a, NOW + 30 * DAY).await;
    }
    order
}

fn certificate(serial: &str, order: &Order) -> Certificate {
    Certificate {
        serial: serial.to_owned(),
        account_id: order.account_id,
        order_id: order.id,
        der: vec![0x30, 0x82, 0x01, 0x00, 0xff, 0x00],
        chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
        not_before: NOW - 60,
        not_after: NOW + 90 * DAY,
        issued_at: NOW,
        revoked_at: None,
        revoked_reason: None,
        names: order.identifiers.iter().map(|i| i.value.clone()).collect(),
        renew_early_at: None,
        spki_sha256: format!("key-of-{serial}").into_bytes(),
    }
}

async fn order_status(s: &dyn Store, id: OrderId) -> OrderStatus {
    s.order(id).await.unwrap().expect("order exists").status
}

/// Runs `n` copies of `op` at once, each on one of `instances` stores (each
/// its own pool, as separate Cairn instances have), released together by a
/// barrier after every pool has its connections open. Returns how many
/// returned true.
async fn race<F, Fut>(f: &Fixture, instances: usize, n: usize, op: F) -> usize
where
    F: Fn(DynStore, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool, StoreError>> + Send + 'static,
{
    let per_instance = n.div_ceil(instances) as u32;
    let mut stores = Vec::new();
    for _ in 0..instances {
        stores.push(f.open(per_instance).await);
    }
    // Warm every pool up to its size, so the race is not spread out by
    // connection set-up.
    let warm = (0..n).map(|i| {
        let s = stores[i % instances].clone();
        async move { s.account(AccountId(0)).await.unwrap() }
    });
    futures::future::join_all(warm).await;

    let barrier = Arc::new(Barrier::new(n));
    let op = Arc::new(op);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let s = stores[i % instances].clone();
            let barrier = barrier.clone();
            let op = op.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                op(s, i).await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.expect("task").expect("store call") {
            wins += 1;
        }
    }
    wins
}

// ----------------------------------------------------------- behaviours ---

async fn nonce_redeemed_once(f: &Fixture) {
    let s = f.open(4).await;
    assert!(s.redeem_nonce(b"nonce-1", NOW + 60).await.unwrap());
    assert!(!s.redeem_nonce(b"nonce-1", NOW + 60).await.unwrap());
    assert!(s.redeem_nonce(b"nonce-2", NOW + 60).await.unwrap());
    // Binary values, not text: a NUL and high bytes are their own nonce.
    assert!(s.redeem_nonce(&[0, 0xff, 1], NOW + 60).await.unwrap());
    assert!(!s.redeem_nonce(&[0, 0xff, 1], NOW + 60).await.unwrap());
}

async fn prune_nonces_forgets_expired(f: &Fixture) {
    let s = f.open(4).await;
    assert!(s.redeem_nonce(b"old", NOW).await.unwrap());
    assert!(s.redeem_nonce(b"edge", NOW + 1).await.unwrap());
    assert!(s.redeem_nonce(b"young", NOW + 100).await.unwrap());
    // Strictly before `now`: a nonce expiring at `now` is kept.
    assert_eq!(s.prune_nonces(NOW + 1, 100).await.unwrap(), 1);
    assert!(s.redeem_nonce(b"old", NOW + 200).await.unwrap());
    assert!(!s.redeem_nonce(b"edge", NOW + 200).await.unwrap());
    assert!(!s.redeem_nonce(b"young", NOW + 200).await.unwrap());
    assert_eq!(s.prune_nonces(NOW + 1, 100).await.unwrap(), 0);
}

async fn secret_first_writer_wins(f: &Fixture) {
    let s = f.open(4).await;
    assert_eq!(s.secret("nonce-key", b"first").await.unwrap(), b"first");
    assert_eq!(s.secret("nonce-key", b"second").await.unwrap(), b"first");
    assert_eq!(
        s.secret("other", &[0, 1, 0xff]).await.unwrap(),
        [0, 1, 0xff]
    );
    // A second instance sees the same value.
    let s2 = f.open(1).await;
    assert_eq!(s2.secret("nonce-key", b"third").await.unwrap(), b"first");
}

async fn create_account_is_idempotent_by_thumbprint(f: &Fixture) {
    let s = f.open(4).await;
    let contact = vec!["mailto:a@example.com".to_owned()];
    let (a, created) = s
        .create_account("{\"k\":1}", "tp-a", &contact, None, NOW)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(a.thumbprint, "tp-a");
    assert_eq!(a.jwk, "{\"k\":1}");
    assert_eq!(a.contact, contact);
    assert_eq!(a.status, AccountStatus::Valid);
    assert_eq!(a.created_at, NOW);

    // The same key again: the existing account, unchanged.
    let (again, created) = s
        .create_account("{\"k\":2}", "tp-a", &[], None, NOW + 10)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.id, a.id);
    assert_eq!(again.jwk, "{\"k\":1}");
    assert_eq!(again.contact, contact);
    assert_eq!(again.created_at, NOW);

    let b = new_account(&*s, "tp-b").await;
    assert_ne!(b.id, a.id);
    assert_eq!(s.account(a.id).await.unwrap().unwrap().thumbprint, "tp-a");
    assert_eq!(
        s.account_by_thumbprint("tp-b").await.unwrap().unwrap().id,
        b.id
    );
}

async fn account_contact_and_deactivation(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let other = new_account(&*s, "tp-other").await;
    let contact = vec![
        "mailto:x@example.com".to_owned(),
        "mailto:y@example.com".to_owned(),
    ];
    s.update_account_contact(a.id, &contact).await.unwrap();
    assert_eq!(s.account(a.id).await.unwrap().unwrap().contact, contact);

    // Deactivation takes the account's pending and valid authorizations
    // with it, and nobody else's.
    let order = new_order(&*s, a.id, &["a.example", "b.example"], NOW + DAY).await;
    validate(&*s, order.authz_ids[0], NOW + DAY).await;
    let others = new_order(&*s, other.id, &["c.example"], NOW + DAY).await;
    s.deactivate_account(a.id).await.unwrap();
    let acct = s.account(a.id).await.unwrap().unwrap();
    assert_eq!(acct.status, AccountStatus::Deactivated);
    for authz in s.authzs(&order.authz_ids).await.unwrap() {
        assert_eq!(authz.status, AuthzStatus::Deactivated, "authz {}", authz.id);
    }
    assert_eq!(
        s.authz(others.authz_ids[0]).await.unwrap().unwrap().status,
        AuthzStatus::Pending
    );
    // A deactivated account's contact no longer changes.
    s.update_account_contact(a.id, &[]).await.unwrap();
    assert_eq!(s.account(a.id).await.unwrap().unwrap().contact, contact);
    // Deactivating twice is harmless.
    s.deactivate_account(a.id).await.unwrap();
}

async fn key_change_and_conflict(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let b = new_account(&*s, "tp-b").await;

    let changed = s
        .change_account_key(a.id, "tp-a", "{\"new\":1}", "tp-c")
        .await
        .unwrap();
    assert_eq!(changed, KeyChange::Changed);
    let moved = s.account_by_thumbprint("tp-c").await.unwrap().unwrap();
    assert_eq!(moved.id, a.id);
    assert_eq!(moved.jwk, "{\"new\":1}");
    assert!(s.account_by_thumbprint("tp-a").await.unwrap().is_none());

    // A key another account holds: a unique violation, reported as InUse.
    let in_use = s
        .change_account_key(a.id, "tp-c", "{\"b\":1}", "tp-b")
        .await
        .unwrap();
    assert_eq!(in_use, KeyChange::InUse(b.id));
    assert_eq!(
        s.account(a.id).await.unwrap().unwrap().thumbprint,
        "tp-c",
        "a refused key change leaves the key alone"
    );

    // A stale old key (a concurrent change won): refused, nothing changes.
    let stale = s
        .change_account_key(a.id, "tp-a", "{\"d\":1}", "tp-d")
        .await
        .expect_err("stale old key");
    assert_eq!(Problem::from(stale).short_type(), "malformed");
    assert!(s.account_by_thumbprint("tp-d").await.unwrap().is_none());

    // A deactivated account's key does not change.
    s.deactivate_account(b.id).await.unwrap();
    assert!(s
        .change_account_key(b.id, "tp-b", "{\"e\":1}", "tp-e")
        .await
        .is_err());
}

async fn create_order_with_new_and_reused_authzs(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let other = new_account(&*s, "tp-other").await;

    let wildcard = OrderAuthz::New(NewAuthz {
        identifier_type: IdentifierType::Dns,
        profile: "classic".into(),
        identifier: "w.example".into(),
        wildcard: true,
        expires: NOW + DAY,
        challenges: vec![(ChallengeType::Dns01, "tok-w".into())],
    });
    let first = s
        .create_order(NewOrder {
            profile: "classic".into(),
            account_id: a.id,
            expires: NOW + 7 * DAY,
            identifiers: vec![Identifier::dns("a.example"), Identifier::dns("*.w.example")],
            authzs: vec![new_authz("a.example", NOW + DAY), wildcard],
            replaces: None,
            reservation: None,
            now: NOW,
        })
        .await
        .unwrap();
    assert_eq!(first.status, OrderStatus::Pending);
    assert_eq!(first.authz_ids.len(), 2);

    let read = s.order(first.id).await.unwrap().unwrap();
    assert_eq!(read.account_id, a.id);
    assert_eq!(read.status, OrderStatus::Pending);
    assert_eq!(read.expires, NOW + 7 * DAY);
    assert_eq!(read.identifiers, first.identifiers);
    assert_eq!(read.authz_ids, first.authz_ids, "ascending, as created");
    assert!(read.error.is_none() && read.cert_serial.is_none());
    assert_eq!((read.created_at, read.updated_at), (NOW, NOW));

    let authzs = s.authzs(&first.authz_ids).await.unwrap();
    assert_eq!(authzs.len(), 2);
    let (plain, wild) = (&authzs[0], &authzs[1]);
    assert_eq!(plain.id, first.authz_ids[0]);
    assert_eq!(plain.account_id, a.id);
    assert_eq!(plain.identifier, "a.example");
    assert!(!plain.wildcard);
    assert_eq!(plain.status, AuthzStatus::Pending);
    assert_eq!(plain.expires, NOW + DAY);
    let kinds: Vec<_> = plain.challenges.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChallengeType::Http01,
            ChallengeType::Dns01,
            ChallengeType::TlsAlpn01
        ]
    );
    for c in &plain.challenges {
        assert_eq!(c.authz_id, plain.id);
        assert_eq!(c.status, ChallengeStatus::Pending);
        assert_eq!(c.token, format!("token-a.example-{}", c.kind.as_str()));
        assert!(c.validated.is_none() && c.error.is_none() && c.records.is_none());
        let alone = s.challenge(c.id).await.unwrap().unwrap();
        assert_eq!(
            (alone.id, alone.kind, &alone.token),
            (c.id, c.kind, &c.token)
        );
        // The authorization a challenge belongs to, whole, in one read.
        let of = s.authz_of_challenge(c.id).await.unwrap().unwrap();
        let ids = |a: &cairn::core::Authz| a.challenges.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(
            (of.id, of.status, ids(&of)),
            (plain.id, plain.status, ids(plain))
        );
    }
    assert!(s
        .authz_of_challenge(ChallengeId(-1))
        .await
        .unwrap()
        .is_none());
    assert_eq!(wild.identifier, "w.example");
    assert!(wild.wildcard);
    assert_eq!(wild.challenges.len(), 1);
    assert_eq!(wild.challenges[0].token, "tok-w");
    // authzs() takes the ids in any order and returns them by id.
    let reversed: Vec<_> = first.authz_ids.iter().rev().copied().collect();
    let ids: Vec<_> = s
        .authzs(&reversed)
        .await
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, first.authz_ids);
    assert_eq!(
        s.authz(first.authz_ids[1])
            .await
            .unwrap()
            .unwrap()
            .identifier,
        "w.example"
    );

    // Only a valid, unexpired authorization of the same account, name and
    // wildcard-ness is reusable.
    let plain_id = plain.id;
    assert!(s
        .reusable_authz(
            a.id,
            (IdentifierType::Dns, "a.example", false),
            Some("classic"),
            NOW
        )
        .await
        .unwrap()
        .is_none());
    validate(&*s, plain_id, NOW + 30 * DAY).await;
    assert_eq!(
        s.reusable_authz(
            a.id,
            (IdentifierType::Dns, "a.example", false),
            Some("classic"),
            NOW
        )
        .await
        .unwrap(),
        Some(plain_id)
    );
    assert!(s
        .reusable_authz(
            a.id,
            (IdentifierType::Dns, "a.example", true),
            Some("classic"),
            NOW
        )
        .await
        .unwrap()
        .is_none());
    assert!(s
        .reusable_authz(
            a.id,
            (IdentifierType::Dns, "a.example", false),
            Some("classic"),
            NOW + 30 * DAY
        )
        .await
        .unwrap()
        .is_none());
    assert!(s
        .reusable_authz(
            other.id,
            (IdentifierType::Dns, "a.example", false),
            Some("classic"),
            NOW
        )
        .await
        .unwrap()
        .is_none());

    // A second order reusing it, plus a new one.
    let second = s
        .create_order(NewOrder {
            profile: "classic".into(),
            account_id: a.id,
            expires: NOW + 7 * DAY,
            identifiers: vec![Identifier::dns("a.example"), Identifier::dns("b.example")],
            authzs: vec![
                OrderAuthz::Reuse(plain_id),
                new_authz("b.example", NOW + DAY),
            ],
            replaces: None,
            reservation: None,
            now: NOW + 5,
        })
        .await
        .unwrap();
    assert_eq!(second.authz_ids[0], plain_id);
    assert_eq!(second.authz_ids.len(), 2);
    let read = s.order(second.id).await.unwrap().unwrap();
    assert_eq!(read.authz_ids, second.authz_ids);
    assert_eq!(read.created_at, NOW + 5);
    let shared = s.authzs(&read.authz_ids).await.unwrap();
    assert_eq!(shared[0].status, AuthzStatus::Valid);
    assert_eq!(shared[1].status, AuthzStatus::Pending);
}

async fn missing_rows_read_as_none(f: &Fixture) {
    let s = f.open(4).await;
    assert!(s.account(AccountId(404)).await.unwrap().is_none());
    assert!(s.account_by_thumbprint("nobody").await.unwrap().is_none());
    assert!(s.order(OrderId(404)).await.unwrap().is_none());
    assert!(s.authz(AuthzId(404)).await.unwrap().is_none());
    assert!(s.authzs(&[]).await.unwrap().is_empty());
    assert!(s.authzs(&[AuthzId(404)]).await.unwrap().is_empty());
    assert!(s.challenge(ChallengeId(404)).await.unwrap().is_none());
    assert!(s.certificate("00ff").await.unwrap().is_none());
    assert!(!s.start_challenge(ChallengeId(404), NOW).await.unwrap());
    assert!(!s.deactivate_authz(AuthzId(404)).await.unwrap());
    assert!(!s.begin_finalize(OrderId(404), NOW).await.unwrap());
    s.finish_challenge(ChallengeId(404), Ok("[]".into()), NOW, NOW)
        .await
        .unwrap();
}

async fn account_orders_paginate(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let b = new_account(&*s, "tp-b").await;
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(
            new_order(&*s, a.id, &[&format!("{i}.example")], NOW + DAY)
                .await
                .id,
        );
        // Another account's orders in between must not show up.
        new_order(&*s, b.id, &["b.example"], NOW + DAY).await;
    }
    let page1 = s.account_orders(a.id, None, 2).await.unwrap();
    assert_eq!(page1, mine[0..2]);
    let page2 = s
        .account_orders(a.id, page1.last().copied(), 2)
        .await
        .unwrap();
    assert_eq!(page2, mine[2..4]);
    let page3 = s
        .account_orders(a.id, page2.last().copied(), 2)
        .await
        .unwrap();
    assert_eq!(page3, mine[4..5]);
    assert!(s
        .account_orders(a.id, page3.last().copied(), 2)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.account_orders(a.id, None, 100).await.unwrap(), mine);
    assert!(s.account_orders(a.id, None, 0).await.unwrap().is_empty());
    let nobody = new_account(&*s, "tp-c").await;
    assert!(s
        .account_orders(nobody.id, None, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn start_challenge_only_once(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    let authz = order.authz_ids[0];
    let http = challenge_of(&*s, authz, ChallengeType::Http01).await;
    let dns = challenge_of(&*s, authz, ChallengeType::Dns01).await;

    assert!(s.start_challenge(http, NOW).await.unwrap());
    let c = s.challenge(http).await.unwrap().unwrap();
    assert_eq!(c.status, ChallengeStatus::Processing);
    assert!(
        !s.start_challenge(http, NOW).await.unwrap(),
        "started twice"
    );
    // Another challenge of the same authorization: one validation at a time.
    assert!(!s.start_challenge(dns, NOW).await.unwrap());
    assert_eq!(
        s.challenge(dns).await.unwrap().unwrap().status,
        ChallengeStatus::Pending
    );
    // Still refused once the first is finished (the authorization is decided).
    s.finish_challenge(
        http,
        Err(error_doc(&Problem::connection("refused"))),
        NOW,
        NOW,
    )
    .await
    .unwrap();
    assert!(!s.start_challenge(dns, NOW).await.unwrap());

    // Not for an expired authorization (expires <= now)...
    let expiring = new_order(&*s, a.id, &["b.example"], NOW + DAY).await;
    let c = challenge_of(&*s, expiring.authz_ids[0], ChallengeType::Http01).await;
    assert!(!s.start_challenge(c, NOW + DAY).await.unwrap());
    assert!(s.start_challenge(c, NOW + DAY - 1).await.unwrap());
    // ...nor a deactivated one.
    let gone = new_order(&*s, a.id, &["c.example"], NOW + DAY).await;
    assert!(s.deactivate_authz(gone.authz_ids[0]).await.unwrap());
    let c = challenge_of(&*s, gone.authz_ids[0], ChallengeType::Dns01).await;
    assert!(!s.start_challenge(c, NOW).await.unwrap());
}

async fn finish_challenge_valid_updates_authz(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    let authz = order.authz_ids[0];
    let c = challenge_of(&*s, authz, ChallengeType::Dns01).await;

    // Not started: finishing changes nothing.
    assert!(!s
        .finish_challenge(c, Ok("[]".into()), NOW, NOW + 30 * DAY)
        .await
        .unwrap());
    assert_eq!(
        s.challenge(c).await.unwrap().unwrap().status,
        ChallengeStatus::Pending
    );

    assert!(s.start_challenge(c, NOW).await.unwrap());
    let records = r#"[{"hostname":"a.example"}]"#.to_owned();
    assert!(s
        .finish_challenge(c, Ok(records.clone()), NOW + 3, NOW + 30 * DAY)
        .await
        .unwrap());
    let done = s.challenge(c).await.unwrap().unwrap();
    assert_eq!(done.status, ChallengeStatus::Valid);
    assert_eq!(done.validated, Some(NOW + 3));
    assert_eq!(done.records.as_deref(), Some(records.as_str()));
    assert!(done.error.is_none());
    let authz = s.authz(authz).await.unwrap().unwrap();
    assert_eq!(authz.status, AuthzStatus::Valid);
    assert_eq!(authz.expires, NOW + 30 * DAY);

    // A second result for the same challenge is ignored.
    assert!(!s
        .finish_challenge(
            c,
            Err(error_doc(&Problem::connection("late"))),
            NOW + 9,
            NOW
        )
        .await
        .unwrap());
    let again = s.challenge(c).await.unwrap().unwrap();
    assert_eq!(again.status, ChallengeStatus::Valid);
    assert_eq!(again.validated, Some(NOW + 3));
    assert_eq!(
        s.authz(authz.id).await.unwrap().unwrap().status,
        AuthzStatus::Valid
    );
}

async fn finish_challenge_invalid_updates_authz(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    let authz = order.authz_ids[0];
    let c = challenge_of(&*s, authz, ChallengeType::TlsAlpn01).await;
    assert!(s.start_challenge(c, NOW).await.unwrap());
    let problem = Problem::connection("127.0.0.1:443: connection refused");
    s.finish_challenge(c, Err(error_doc(&problem)), NOW + 2, NOW + 30 * DAY)
        .await
        .unwrap();
    let done = s.challenge(c).await.unwrap().unwrap();
    assert_eq!(done.status, ChallengeStatus::Invalid);
    assert_eq!(done.validated, Some(NOW + 2));
    assert!(done.records.is_none());
    let stored = problem_of(&done.error.expect("the problem is stored"));
    assert_eq!(stored.short_type(), "connection");
    assert_eq!(stored.detail, problem.detail);
    let authz = s.authz(authz).await.unwrap().unwrap();
    assert_eq!(authz.status, AuthzStatus::Invalid);
    assert_eq!(
        authz.expires,
        NOW + DAY,
        "an invalid authz keeps its expiry"
    );
}

async fn deactivate_authz_once(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example", "b.example"], NOW + DAY).await;
    let (pending, valid) = (order.authz_ids[0], order.authz_ids[1]);
    validate(&*s, valid, NOW + DAY).await;
    assert!(s.deactivate_authz(pending).await.unwrap());
    assert!(!s.deactivate_authz(pending).await.unwrap());
    assert!(s.deactivate_authz(valid).await.unwrap());
    for authz in s.authzs(&order.authz_ids).await.unwrap() {
        assert_eq!(authz.status, AuthzStatus::Deactivated);
    }
}

async fn stale_challenges_claimed_once(f: &Fixture) {
    let s = f.open(4).await;
    assert!(s
        .claim_stale_challenges(NOW + 1, NOW)
        .await
        .unwrap()
        .is_empty());
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example", "b.example"], NOW + DAY).await;
    let c1 = challenge_of(&*s, order.authz_ids[0], ChallengeType::Http01).await;
    let c2 = challenge_of(&*s, order.authz_ids[1], ChallengeType::Dns01).await;
    assert!(s.start_challenge(c1, NOW).await.unwrap());
    assert!(s.start_challenge(c2, NOW + 100).await.unwrap());
    // Only c1's lease (started at NOW) ran out before NOW + 50.
    assert_eq!(
        s.claim_stale_challenges(NOW + 50, NOW + 60).await.unwrap(),
        [c1]
    );
    // Claimed: its lease now starts at NOW + 60, so it is not stale again.
    assert!(s
        .claim_stale_challenges(NOW + 50, NOW + 61)
        .await
        .unwrap()
        .is_empty());
    s.finish_challenge(c1, Ok("[]".into()), NOW + 62, NOW + DAY)
        .await
        .unwrap();
    // Finished challenges are never claimed; c2 is once its lease runs out.
    assert_eq!(
        s.claim_stale_challenges(NOW + 1000, NOW + 1000)
            .await
            .unwrap(),
        [c2]
    );
}

async fn revoke_certificate_once(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    validate(&*s, order.authz_ids[0], NOW + 30 * DAY).await;
    assert!(s.begin_finalize(order.id, NOW).await.unwrap());
    s.complete_order(order.id, &certificate("0a0b", &order), NOW)
        .await
        .unwrap();
    assert!(s
        .revoke_certificate("0a0b", 4, NOW + 5, None)
        .await
        .unwrap());
    assert!(!s
        .revoke_certificate("0a0b", 1, NOW + 6, None)
        .await
        .unwrap());
    assert!(!s
        .revoke_certificate("ffff", 1, NOW + 6, None)
        .await
        .unwrap());
    let c = s.certificate("0a0b").await.unwrap().unwrap();
    assert_eq!((c.revoked_at, c.revoked_reason), (Some(NOW + 5), Some(4)));
}

async fn begin_finalize_needs_valid_unexpired_authzs(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;

    // Pending authorizations: not yet.
    let order = new_order(&*s, a.id, &["a.example", "b.example"], NOW + 7 * DAY).await;
    assert!(!s.begin_finalize(order.id, NOW).await.unwrap());
    validate(&*s, order.authz_ids[0], NOW + 30 * DAY).await;
    assert!(
        !s.begin_finalize(order.id, NOW).await.unwrap(),
        "one of two"
    );
    validate(&*s, order.authz_ids[1], NOW + 30 * DAY).await;
    assert_eq!(order_status(&*s, order.id).await, OrderStatus::Pending);

    // A valid authorization that has expired (expires <= now).
    let short = new_order(&*s, a.id, &["c.example"], NOW + 7 * DAY).await;
    validate(&*s, short.authz_ids[0], NOW + 100).await;
    assert!(!s.begin_finalize(short.id, NOW + 100).await.unwrap());
    assert!(s.begin_finalize(short.id, NOW + 99).await.unwrap());

    // An expired order.
    let old = new_order(&*s, a.id, &["d.example"], NOW + 50).await;
    validate(&*s, old.authz_ids[0], NOW + 30 * DAY).await;
    assert!(!s.begin_finalize(old.id, NOW + 50).await.unwrap());
    assert_eq!(order_status(&*s, old.id).await, OrderStatus::Pending);

    // A deactivated authorization.
    let dead = ready_order(&*s, a.id, &["e.example"]).await;
    assert!(s.deactivate_authz(dead.authz_ids[0]).await.unwrap());
    assert!(!s.begin_finalize(dead.id, NOW).await.unwrap());

    // An invalid one.
    let bad = new_order(&*s, a.id, &["f.example"], NOW + 7 * DAY).await;
    let c = challenge_of(&*s, bad.authz_ids[0], ChallengeType::Http01).await;
    assert!(s.start_challenge(c, NOW).await.unwrap());
    s.finish_challenge(c, Err(error_doc(&Problem::connection("no"))), NOW, NOW)
        .await
        .unwrap();
    assert!(!s.begin_finalize(bad.id, NOW).await.unwrap());

    // All valid and unexpired: yes, and the order records when.
    assert!(s.begin_finalize(order.id, NOW + 7).await.unwrap());
    let read = s.order(order.id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Processing);
    assert_eq!(read.updated_at, NOW + 7);
}

async fn begin_finalize_only_once(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = ready_order(&*s, a.id, &["a.example"]).await;
    assert!(s.begin_finalize(order.id, NOW).await.unwrap());
    assert!(!s.begin_finalize(order.id, NOW).await.unwrap());
    // Another instance sees it processing too.
    let s2 = f.open(1).await;
    assert!(!s2.begin_finalize(order.id, NOW).await.unwrap());
}

async fn complete_order_stores_certificate_once(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = ready_order(&*s, a.id, &["a.example"]).await;
    assert!(s.begin_finalize(order.id, NOW).await.unwrap());
    let cert = certificate("0a1b2c", &order);
    s.complete_order(order.id, &cert, NOW + 4).await.unwrap();

    let read = s.order(order.id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Valid);
    assert_eq!(read.cert_serial.as_deref(), Some("0a1b2c"));
    assert_eq!(read.updated_at, NOW + 4);
    let stored = s.certificate("0a1b2c").await.unwrap().unwrap();
    assert_eq!(stored.serial, cert.serial);
    assert_eq!(stored.account_id, a.id);
    assert_eq!(stored.order_id, order.id);
    assert_eq!(stored.der, cert.der);
    assert_eq!(stored.chain_pem, cert.chain_pem);
    assert_eq!(
        (stored.not_before, stored.not_after, stored.issued_at),
        (cert.not_before, cert.not_after, cert.issued_at)
    );

    // A second certificate for the same order: the unique order_id refuses
    // it, and the transaction leaves nothing behind.
    let second = certificate("0d0e0f", &order);
    assert!(s.complete_order(order.id, &second, NOW + 5).await.is_err());
    assert!(s.certificate("0d0e0f").await.unwrap().is_none());
    let read = s.order(order.id).await.unwrap().unwrap();
    assert_eq!(read.cert_serial.as_deref(), Some("0a1b2c"));
}

async fn complete_order_requires_processing(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let order = ready_order(&*s, a.id, &["a.example"]).await;
    // Never finalized: refused, and the certificate insert is rolled back.
    let cert = certificate("aa", &order);
    assert!(s.complete_order(order.id, &cert, NOW).await.is_err());
    assert!(s.certificate("aa").await.unwrap().is_none());
    assert_eq!(order_status(&*s, order.id).await, OrderStatus::Pending);
    // Failed while issuing: the same.
    assert!(s.begin_finalize(order.id, NOW).await.unwrap());
    s.fail_order(order.id, &error_doc(&Problem::malformed("bad CSR")), NOW)
        .await
        .unwrap();
    assert!(s.complete_order(order.id, &cert, NOW).await.is_err());
    assert!(s.certificate("aa").await.unwrap().is_none());
}

async fn fail_order_from_pending_or_processing(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;

    let pending = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    s.fail_order(
        pending.id,
        &error_doc(&Problem::malformed("first")),
        NOW + 1,
    )
    .await
    .unwrap();
    let read = s.order(pending.id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Invalid);
    assert_eq!(read.updated_at, NOW + 1);
    let error = problem_of(&read.error.expect("error stored"));
    assert_eq!(
        (error.short_type(), error.detail.as_str()),
        ("malformed", "first")
    );
    // An invalid order keeps its first error.
    s.fail_order(
        pending.id,
        &error_doc(&Problem::malformed("second")),
        NOW + 2,
    )
    .await
    .unwrap();
    let read = s.order(pending.id).await.unwrap().unwrap();
    assert_eq!(
        read.error.map(|e| problem_of(&e).detail).as_deref(),
        Some("first")
    );
    assert_eq!(read.updated_at, NOW + 1);

    let processing = ready_order(&*s, a.id, &["b.example"]).await;
    assert!(s.begin_finalize(processing.id, NOW).await.unwrap());
    s.fail_order(
        processing.id,
        &error_doc(&Problem::internal("CA down")),
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(order_status(&*s, processing.id).await, OrderStatus::Invalid);

    // A valid order stays valid.
    let valid = ready_order(&*s, a.id, &["c.example"]).await;
    assert!(s.begin_finalize(valid.id, NOW).await.unwrap());
    s.complete_order(valid.id, &certificate("cc", &valid), NOW)
        .await
        .unwrap();
    s.fail_order(valid.id, &error_doc(&Problem::malformed("late")), NOW)
        .await
        .unwrap();
    let read = s.order(valid.id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Valid);
    assert!(read.error.is_none());
}

// ---------------------------------------------------------------- races ---

async fn race_redeem_nonce(f: &Fixture) {
    let wins = race(f, 4, 20, |s, _| async move {
        s.redeem_nonce(b"raced-nonce", NOW + 60).await
    })
    .await;
    assert_eq!(wins, 1, "one nonce redeemed {wins} times");
}

/// Many nonces at once on one store, each asked for four times: each is
/// fresh exactly once (SQLite spends the nonces of requests arriving
/// together in one statement).
async fn race_redeem_many_nonces(f: &Fixture) {
    let wins = race(f, 1, 64, |s, i| async move {
        let nonce = format!("many-{}", i % 16);
        s.redeem_nonce(nonce.as_bytes(), NOW + 60).await
    })
    .await;
    assert_eq!(wins, 16, "16 nonces redeemed {wins} times");
    let s = f.open(1).await;
    for i in 0..16 {
        let nonce = format!("many-{i}");
        assert!(!s.redeem_nonce(nonce.as_bytes(), NOW + 60).await.unwrap());
    }
}

async fn race_begin_finalize(f: &Fixture) {
    let s = f.open(2).await;
    let a = new_account(&*s, "tp-a").await;
    let order = ready_order(&*s, a.id, &["a.example", "b.example"]).await;
    let id = order.id;
    let wins = race(f, 4, 20, move |s, _| async move {
        s.begin_finalize(id, NOW).await
    })
    .await;
    assert_eq!(wins, 1, "one order finalized {wins} times");
    assert_eq!(order_status(&*s, id).await, OrderStatus::Processing);
}

async fn race_start_same_challenge(f: &Fixture) {
    let s = f.open(2).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    let c = challenge_of(&*s, order.authz_ids[0], ChallengeType::Http01).await;
    let wins = race(f, 4, 20, move |s, _| async move {
        s.start_challenge(c, NOW).await
    })
    .await;
    assert_eq!(wins, 1, "one challenge started {wins} times");
}

/// The case a single UPDATE cannot get right at READ COMMITTED: different
/// challenges of one authorization started at once.
async fn race_start_sibling_challenges(f: &Fixture) {
    let s = f.open(2).await;
    let a = new_account(&*s, "tp-a").await;
    for round in 0..5 {
        let order = new_order(&*s, a.id, &[&format!("{round}.example")], NOW + DAY).await;
        let authz = order.authz_ids[0];
        let ids: Arc<Vec<ChallengeId>> = Arc::new(
            s.authz(authz)
                .await
                .unwrap()
                .unwrap()
                .challenges
                .iter()
                .map(|c| c.id)
                .collect(),
        );
        let picks = ids.clone();
        let wins = race(f, 4, 21, move |s, i| {
            let c = picks[i % picks.len()];
            async move { s.start_challenge(c, NOW).await }
        })
        .await;
        assert_eq!(
            wins, 1,
            "round {round}: {wins} challenges of one authz started"
        );
        let authz = s.authz(authz).await.unwrap().unwrap();
        let processing = authz
            .challenges
            .iter()
            .filter(|c| c.status == ChallengeStatus::Processing)
            .count();
        assert_eq!(processing, 1, "round {round}");
    }
}

/// Results arriving while clients retry other challenges of the same
/// authorization: no call fails (in PostgreSQL, a deadlock would abort one),
/// one result counts, and nothing else starts.
async fn race_start_while_finishing(f: &Fixture) {
    let s = f.open(2).await;
    let a = new_account(&*s, "tp-a").await;
    let order = new_order(&*s, a.id, &["a.example"], NOW + DAY).await;
    let authz = order.authz_ids[0];
    let http = challenge_of(&*s, authz, ChallengeType::Http01).await;
    let dns = challenge_of(&*s, authz, ChallengeType::Dns01).await;
    assert!(s.start_challenge(http, NOW).await.unwrap());
    let wins = race(f, 4, 20, move |s, i| async move {
        if i % 2 == 0 {
            s.finish_challenge(http, Ok("[]".into()), NOW, NOW + DAY)
                .await
                .map(|_| false)
        } else {
            s.start_challenge(if i % 4 == 1 { http } else { dns }, NOW)
                .await
        }
    })
    .await;
    assert_eq!(wins, 0, "a challenge started while another was processing");
    let authz = s.authz(authz).await.unwrap().unwrap();
    assert_eq!(authz.status, AuthzStatus::Valid);
    let statuses: Vec<_> = authz.challenges.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            ChallengeStatus::Valid,
            ChallengeStatus::Pending,
            ChallengeStatus::Pending
        ]
    );
}

async fn race_create_account(f: &Fixture) {
    let wins = race(f, 4, 20, |s, i| async move {
        let (acct, created) = s
            .create_account(&format!("{{\"i\":{i}}}"), "tp-raced", &[], None, NOW)
            .await?;
        assert_eq!(acct.thumbprint, "tp-raced");
        Ok(created)
    })
    .await;
    assert_eq!(wins, 1, "one key created {wins} accounts");
}

fn eab_key(kid: &str, reusable: bool, expires: Option<i64>) -> EabKey {
    EabKey {
        kid: kid.into(),
        hmac_key: vec![7; 32],
        names: vec!["*.corp.example".into()],
        created_at: NOW,
        expires,
        reusable,
        revoked_at: None,
        bound_count: 0,
        first_account: None,
    }
}

async fn bind(s: &dyn Store, thumbprint: &str, kid: &str) -> Result<(Account, bool), StoreError> {
    s.create_account("{}", thumbprint, &[], Some(kid), NOW)
        .await
}

fn unusable(r: Result<(Account, bool), StoreError>, kid: &str) {
    match r {
        Err(StoreError::Conflict(Conflict::EabKeyUnusable(k))) => assert_eq!(k, kid),
        other => panic!("expected EabKeyUnusable({kid}), got {other:?}"),
    }
}

async fn eab_key_binds_by_its_terms(f: &Fixture) {
    let s = f.open(2).await;
    s.put_eab_key(&eab_key("once", false, None)).await.unwrap();
    s.put_eab_key(&eab_key("many", true, None)).await.unwrap();
    s.put_eab_key(&eab_key("old", true, Some(NOW)))
        .await
        .unwrap();
    let k = s.eab_key("once").await.unwrap().unwrap();
    assert_eq!(k, eab_key("once", false, None));
    assert!(s.eab_key("none").await.unwrap().is_none());

    let (a, created) = bind(&*s, "tp-1", "once").await.unwrap();
    assert!(created);
    assert_eq!(a.eab_kid.as_deref(), Some("once"));
    assert_eq!(
        s.account(a.id).await.unwrap().unwrap().eab_kid.as_deref(),
        Some("once")
    );
    // Used: no second account, and nothing created.
    unusable(bind(&*s, "tp-2", "once").await, "once");
    assert!(s.account_by_thumbprint("tp-2").await.unwrap().is_none());
    // The existing account is found without using the key again.
    let (again, created) = bind(&*s, "tp-1", "once").await.unwrap();
    assert!(!created);
    assert_eq!(again.id, a.id);
    let k = s.eab_key("once").await.unwrap().unwrap();
    assert_eq!((k.bound_count, k.first_account), (1, Some(a.id)));

    // Reusable: many accounts, the first remembered.
    let (b, _) = bind(&*s, "tp-3", "many").await.unwrap();
    bind(&*s, "tp-4", "many").await.unwrap();
    let k = s.eab_key("many").await.unwrap().unwrap();
    assert_eq!((k.bound_count, k.first_account), (2, Some(b.id)));

    // Expired at `now`, revoked.
    unusable(bind(&*s, "tp-5", "old").await, "old");
    assert!(s.revoke_eab_key("many", NOW + 1).await.unwrap());
    assert!(!s.revoke_eab_key("many", NOW + 2).await.unwrap());
    assert!(!s.revoke_eab_key("none", NOW).await.unwrap());
    assert_eq!(
        s.eab_key("many").await.unwrap().unwrap().revoked_at,
        Some(NOW + 1)
    );
    unusable(bind(&*s, "tp-6", "many").await, "many");

    // Put again (Pebble's keys at each start): new secret and terms,
    // unrevoked, its bindings kept.
    let mut renewed = eab_key("many", true, None);
    renewed.hmac_key = vec![9; 48];
    s.put_eab_key(&renewed).await.unwrap();
    let k = s.eab_key("many").await.unwrap().unwrap();
    assert_eq!(k.hmac_key, vec![9; 48]);
    assert_eq!((k.revoked_at, k.bound_count), (None, 2));

    let kids: Vec<String> = s
        .eab_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["many", "old", "once"]);
}

async fn race_single_use_eab_key(f: &Fixture) {
    f.open(1)
        .await
        .put_eab_key(&eab_key("raced", false, None))
        .await
        .unwrap();
    let wins = race(f, 4, 20, |s, i| async move {
        match s
            .create_account("{}", &format!("tp-eab-{i}"), &[], Some("raced"), NOW)
            .await
        {
            Ok((_, created)) => Ok(created),
            Err(StoreError::Conflict(Conflict::EabKeyUnusable(_))) => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await;
    assert_eq!(wins, 1, "a single-use key bound {wins} accounts");
    let k = f.open(1).await.eab_key("raced").await.unwrap().unwrap();
    assert_eq!(k.bound_count, 1);
}

async fn certificates_found_by_name_account_serial_and_date(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let b = new_account(&*s, "tp-b").await;
    issued(&*s, a.id, "01", &["x.example", "Y.example"], NOW - 100).await;
    issued(&*s, a.id, "02", &["x.example"], NOW - 50).await;
    issued(&*s, b.id, "03", &["z.example"], NOW).await;
    let serials = |v: Vec<Certificate>| v.into_iter().map(|c| c.serial).collect::<Vec<_>>();
    let q = |f: fn(&mut CertQuery)| {
        let mut q = CertQuery {
            limit: 10,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    let by_name = s
        .find_certificates(&q(|q| q.name = Some("x.example".into())))
        .await
        .unwrap();
    assert_eq!(serials(by_name), ["02", "01"]);
    let by_name = s
        .find_certificates(&q(|q| q.name = Some("y.EXAMPLE".into())))
        .await
        .unwrap();
    assert_eq!(serials(by_name), ["01"]);
    let mut qa = q(|_| {});
    qa.account = Some(a.id);
    assert_eq!(
        serials(s.find_certificates(&qa).await.unwrap()),
        ["02", "01"]
    );
    qa.limit = 1;
    assert_eq!(serials(s.find_certificates(&qa).await.unwrap()), ["02"]);
    let before = s
        .find_certificates(&q(|q| q.issued_before = Some(NOW - 50)))
        .await
        .unwrap();
    assert_eq!(serials(before), ["01"]);
    let one = s
        .find_certificates(&q(|q| q.serial = Some("03".into())))
        .await
        .unwrap();
    assert_eq!(one[0].names, ["z.example"]);
    assert_eq!(one[0].account_id, b.id);
}

async fn renew_early_marks_only_live_unmarked_certificates(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    issued(&*s, a.id, "01", &["x.example"], NOW).await;
    issued(&*s, a.id, "02", &["x.example"], NOW).await;
    issued(&*s, a.id, "03", &["other.example"], NOW).await;
    assert!(s.revoke_certificate("02", 4, NOW, None).await.unwrap());
    let q = CertQuery {
        name: Some("x.example".into()),
        ..Default::default()
    };
    assert_eq!(s.mark_renew_early(&q, NOW + 10).await.unwrap(), 1);
    assert_eq!(s.mark_renew_early(&q, NOW + 20).await.unwrap(), 0);
    let c = s.certificate("01").await.unwrap().unwrap();
    assert_eq!(c.renew_early_at, Some(NOW + 10));
    assert_eq!(
        s.certificate("03").await.unwrap().unwrap().renew_early_at,
        None
    );
    // Expired certificates are left alone.
    let q = CertQuery {
        serial: Some("03".into()),
        ..Default::default()
    };
    assert_eq!(s.mark_renew_early(&q, NOW + 91 * DAY).await.unwrap(), 0);
}

async fn issued_for_set_ignores_order_and_case(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    issued(&*s, a.id, "01", &["b.example", "A.example"], NOW).await;
    let renewal = |set: &'static [&'static str], since: i64| {
        let s = s.clone();
        async move {
            s.order_limit_facts(a.id, &[], &identifier_set_hash(set), since, NOW)
                .await
                .unwrap()
                .renewal
        }
    };
    assert!(renewal(&["a.example", "B.EXAMPLE", "a.example"], NOW).await);
    assert!(!renewal(&["a.example", "b.example"], NOW + 1).await);
    assert!(!renewal(&["a.example"], 0).await);
}

async fn key_compromise_blocks_key_and_revokes_its_certificates(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let o1 = ready_order(&*s, a.id, &["a.example"]).await;
    let o2 = ready_order(&*s, a.id, &["b.example"]).await;
    let o3 = ready_order(&*s, a.id, &["c.example"]).await;
    for (o, serial, key) in [(&o1, "01", "k"), (&o2, "02", "k"), (&o3, "03", "other")] {
        assert!(s.begin_finalize(o.id, NOW).await.unwrap());
        let mut c = certificate(serial, o);
        c.spki_sha256 = key.as_bytes().to_vec();
        s.complete_order(o.id, &c, NOW).await.unwrap();
    }
    assert!(!s.key_blocked(b"k").await.unwrap());
    assert!(s
        .revoke_certificate("01", 1, NOW + 5, Some(b"k"))
        .await
        .unwrap());
    assert!(s.key_blocked(b"k").await.unwrap());
    assert!(!s.key_blocked(b"other").await.unwrap());
    let c2 = s.certificate("02").await.unwrap().unwrap();
    assert_eq!((c2.revoked_at, c2.revoked_reason), (Some(NOW + 5), Some(1)));
    assert_eq!(s.certificate("03").await.unwrap().unwrap().revoked_at, None);
}

async fn crl_rows_and_revoked_entries(f: &Fixture) {
    let s = f.open(4).await;
    assert_eq!(s.latest_crl().await.unwrap(), None);
    let a = new_account(&*s, "tp-a").await;
    issued(&*s, a.id, "0b", &["a.example"], NOW).await;
    issued(&*s, a.id, "0a", &["b.example"], NOW).await;
    issued(&*s, a.id, "0c", &["c.example"], NOW).await;
    assert!(s.revoke_certificate("0b", 4, NOW + 1, None).await.unwrap());
    assert!(s.revoke_certificate("0a", 0, NOW + 2, None).await.unwrap());
    let entries = s.revoked_certificates(NOW).await.unwrap();
    assert_eq!(
        entries,
        [
            RevokedEntry {
                serial: "0a".into(),
                revoked_at: NOW + 2,
                reason: 0
            },
            RevokedEntry {
                serial: "0b".into(),
                revoked_at: NOW + 1,
                reason: 4
            },
        ]
    );
    // The counts the CRL check compares are those of the same entries...
    let counts = |entries, key_compromises| RevocationCounts {
        entries,
        key_compromises,
    };
    assert_eq!(s.revocation_counts(NOW).await.unwrap(), counts(2, 0));
    assert_eq!(
        RevocationCounts::of(&entries),
        s.revocation_counts(NOW).await.unwrap()
    );
    // ...and move with each kind of change a revocation makes: a shown key
    // compromise turns a revoked certificate's reason (its count of
    // entries unchanged), a new revocation adds one.
    assert!(s
        .revoke_certificate("0b", 1, NOW + 3, Some(b"key-0b"))
        .await
        .unwrap());
    assert_eq!(s.revocation_counts(NOW).await.unwrap(), counts(2, 1));
    assert!(s.revoke_certificate("0c", 5, NOW + 4, None).await.unwrap());
    assert_eq!(s.revocation_counts(NOW).await.unwrap(), counts(3, 1));
    // Expired certificates leave the CRL.
    assert!(s
        .revoked_certificates(NOW + 91 * DAY)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.revocation_counts(NOW + 91 * DAY).await.unwrap(),
        counts(0, 0)
    );
    for n in 1..=15 {
        let crl = StoredCrl {
            number: n,
            this_update: NOW + n,
            next_update: NOW + DAY,
            der: vec![n as u8],
            // Stored and read back with its counts, and without (older rows).
            counts: (n % 2 == 0).then_some(RevocationCounts {
                entries: n,
                key_compromises: n / 3,
            }),
        };
        assert!(s.insert_crl(&crl).await.unwrap());
        assert_eq!(s.latest_crl().await.unwrap(), Some(crl.clone()));
        assert!(!s.insert_crl(&crl).await.unwrap());
    }
}

/// The CRL's entries are read in pages of 1,000 in (not_after, serial)
/// order: a store of 2,345 revoked certificates, most sharing one of three
/// expiry times (so pages end inside a run of equal not_after) and 45
/// expired, yields each unexpired one exactly once, sorted by serial.
async fn revoked_entries_come_whole_across_pages(f: &Fixture) {
    let s = f.open(4).await;
    let account = s
        .insert_past_accounts(&[PastAccount {
            jwk: r#"{"kty":"EC","crv":"P-256","x":"pages","y":"pages"}"#.into(),
            thumbprint: "pages".into(),
            created_at: NOW - DAY,
        }])
        .await
        .unwrap()[0];
    let not_afters = [NOW - 60, NOW + DAY, NOW + 2 * DAY, NOW + 3 * DAY];
    let past: Vec<PastIssuance> = (0..2345u32)
        .map(|i| {
            // 45 expired, the rest spread over the three future times.
            let not_after = if i < 45 {
                not_afters[0]
            } else {
                not_afters[1 + (i as usize % 3)]
            };
            let serial = format!("{:06x}", (i * 7919) % 2345 + 1);
            PastIssuance {
                profile: "classic".into(),
                ordered_at: NOW - DAY,
                order_expires: NOW,
                authz_expires: NOW,
                challenges: Vec::new(),
                records: Vec::new(),
                cert: Certificate {
                    serial: serial.clone(),
                    account_id: account,
                    order_id: OrderId(0),
                    der: vec![0x30, 0x00],
                    chain_pem: String::new(),
                    not_before: NOW - DAY,
                    not_after,
                    issued_at: NOW - DAY,
                    revoked_at: Some(NOW - i64::from(i)),
                    revoked_reason: Some(i64::from(i % 6)),
                    names: vec![format!("p{i}.example")],
                    renew_early_at: None,
                    spki_sha256: serial.into_bytes(),
                },
            }
        })
        .collect();
    for batch in past.chunks(1000) {
        s.insert_past_issuances(batch).await.unwrap();
    }
    let mut want: Vec<RevokedEntry> = past
        .iter()
        .filter(|p| p.cert.not_after > NOW)
        .map(|p| RevokedEntry {
            serial: p.cert.serial.clone(),
            revoked_at: p.cert.revoked_at.unwrap(),
            reason: p.cert.revoked_reason.unwrap(),
        })
        .collect();
    want.sort_by(|a, b| a.serial.cmp(&b.serial));
    let got = s.revoked_certificates(NOW).await.unwrap();
    assert_eq!(got.len(), 2300);
    assert_eq!(got, want);
    assert_eq!(
        RevocationCounts::of(&got),
        s.revocation_counts(NOW).await.unwrap()
    );
    // From a later time, only what expires after it.
    let later = s.revoked_certificates(NOW + DAY).await.unwrap();
    assert_eq!(later.len(), 1533);
    assert!(later.windows(2).all(|w| w[0].serial < w[1].serial));
}

async fn replacement_refused_while_another_is_live(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    issued(&*s, a.id, "01", &["r.example"], NOW).await;
    let first = replacing_order(&*s, a.id, "01").await.unwrap();
    assert_eq!(first.replaces.as_deref(), Some("01"));
    assert_eq!(
        s.order(first.id)
            .await
            .unwrap()
            .unwrap()
            .replaces
            .as_deref(),
        Some("01")
    );
    let e = replacing_order(&*s, a.id, "01").await.unwrap_err();
    assert_eq!(Problem::from(e).short_type(), "alreadyReplaced");
    // The first fails (its authorization is deactivated): free again.
    assert!(s.deactivate_authz(first.authz_ids[0]).await.unwrap());
    let second = replacing_order(&*s, a.id, "01").await.unwrap();
    // A failed order (stored invalid) does not count either.
    s.fail_order(second.id, &error_doc(&Problem::malformed("x")), NOW)
        .await
        .unwrap();
    let third = replacing_order(&*s, a.id, "01").await.unwrap();
    // Nor does a pending order whose authorization expired (the order
    // itself has not).
    s.fail_order(third.id, &error_doc(&Problem::malformed("x")), NOW)
        .await
        .unwrap();
    let short = NewOrder {
        profile: "classic".into(),
        account_id: a.id,
        expires: NOW + 2 * DAY,
        identifiers: vec![Identifier::dns("r.example")],
        authzs: vec![new_authz("r.example", NOW + 10)],
        replaces: Some("01".into()),
        reservation: None,
        now: NOW,
    };
    s.create_order(short.clone()).await.unwrap();
    let e = s.create_order(short.clone()).await.unwrap_err();
    assert_eq!(Problem::from(e).short_type(), "alreadyReplaced");
    s.create_order(NewOrder {
        now: NOW + 20,
        ..short
    })
    .await
    .unwrap();
    // An order stuck in processing (its instance died mid-issuance) stops
    // counting once it is stale, as the RA reports it invalid then.
    let s2 = f.open(2).await;
    let b = new_account(&*s2, "tp-b").await;
    issued(&*s2, b.id, "02", &["r2.example"], NOW).await;
    let stuck = s2
        .create_order(NewOrder {
            profile: "classic".into(),
            account_id: b.id,
            expires: NOW + 2 * DAY,
            identifiers: vec![Identifier::dns("r2.example")],
            authzs: vec![new_authz("r2.example", NOW + DAY)],
            replaces: Some("02".into()),
            reservation: None,
            now: NOW,
        })
        .await
        .unwrap();
    validate(&*s2, stuck.authz_ids[0], NOW + 30 * DAY).await;
    assert!(s2.begin_finalize(stuck.id, NOW).await.unwrap());
    let again = |now: i64| NewOrder {
        profile: "classic".into(),
        account_id: b.id,
        expires: NOW + 2 * DAY,
        identifiers: vec![Identifier::dns("r2.example")],
        authzs: vec![new_authz("r2.example", NOW + DAY)],
        replaces: Some("02".into()),
        reservation: None,
        now,
    };
    let e = s2.create_order(again(NOW + 10)).await.unwrap_err();
    assert_eq!(Problem::from(e).short_type(), "alreadyReplaced");
    s2.create_order(again(NOW + cairn::core::STALE_PROCESSING_SECS + 1))
        .await
        .unwrap();
}

async fn race_replacement_orders(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    issued(&*s, a.id, "01", &["r.example"], NOW).await;
    let account = a.id;
    let wins = race(f, 4, 20, move |s, _| async move {
        match replacing_order(&*s, account, "01").await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(Conflict::AlreadyReplaced(_))) => Ok(false),
            Err(p) => Err(p),
        }
    })
    .await;
    assert_eq!(wins, 1);
}

async fn race_insert_crl(f: &Fixture) {
    let wins = race(f, 4, 20, |s, i| async move {
        let crl = StoredCrl {
            number: 1,
            this_update: NOW,
            next_update: NOW + DAY,
            der: vec![i as u8],
            counts: None,
        };
        s.insert_crl(&crl).await
    })
    .await;
    assert_eq!(wins, 1);
}

async fn order_with_reservation(
    s: &dyn Store,
    account: AccountId,
    name: &str,
    expires: i64,
) -> Order {
    s.create_order(NewOrder {
        profile: "classic".into(),
        account_id: account,
        expires,
        identifiers: vec![Identifier::dns(name)],
        authzs: vec![new_authz(name, expires)],
        replaces: None,
        reservation: Some(format!("[\"{name}\"]")),
        now: NOW,
    })
    .await
    .unwrap()
}

async fn reservation_is_taken_once_and_consumed_by_issuance(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let o = order_with_reservation(&*s, a.id, "a.example", NOW + DAY).await;
    assert_eq!(
        s.take_reservation(o.id).await.unwrap().as_deref(),
        Some("[\"a.example\"]")
    );
    assert_eq!(s.take_reservation(o.id).await.unwrap(), None);

    // Issuance uses the reservation: nothing is left to give back.
    let o = order_with_reservation(&*s, a.id, "b.example", NOW + DAY).await;
    validate(&*s, o.authz_ids[0], NOW + 30 * DAY).await;
    assert!(s.begin_finalize(o.id, NOW).await.unwrap());
    s.complete_order(o.id, &certificate("0b", &o), NOW)
        .await
        .unwrap();
    assert_eq!(s.take_reservation(o.id).await.unwrap(), None);
    assert!(s
        .dead_reservations(NOW + 10 * DAY, NOW, 10)
        .await
        .unwrap()
        .is_empty());

    // Concurrent claims: exactly one caller gets the tokens.
    let o = order_with_reservation(&*s, a.id, "c.example", NOW + DAY).await;
    let id = o.id;
    let wins = race(f, 4, 20, move |s, _| async move {
        Ok(s.take_reservation(id).await?.is_some())
    })
    .await;
    assert_eq!(wins, 1);
}

async fn dead_reservations_are_failed_expired_or_stuck_orders(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let live = order_with_reservation(&*s, a.id, "live.example", NOW + DAY).await;
    let expiring = order_with_reservation(&*s, a.id, "exp.example", NOW + 100).await;
    let failed = order_with_reservation(&*s, a.id, "fail.example", NOW + DAY).await;
    let c = challenge_of(&*s, failed.authz_ids[0], ChallengeType::Http01).await;
    assert!(s.start_challenge(c, NOW).await.unwrap());
    assert!(s
        .finish_challenge(c, Err(error_doc(&Problem::connection("refused"))), NOW, NOW)
        .await
        .unwrap());
    let stuck = order_with_reservation(&*s, a.id, "stuck.example", NOW + DAY).await;
    validate(&*s, stuck.authz_ids[0], NOW + 30 * DAY).await;
    assert!(s.begin_finalize(stuck.id, NOW).await.unwrap());
    let errored = order_with_reservation(&*s, a.id, "err.example", NOW + DAY).await;
    s.fail_order(errored.id, &error_doc(&Problem::malformed("x")), NOW)
        .await
        .unwrap();

    let dead = s.dead_reservations(NOW + 50, NOW - 1, 10).await.unwrap();
    assert_eq!(dead, [failed.id, errored.id]);
    let dead = s.dead_reservations(NOW + 100, NOW + 1, 10).await.unwrap();
    assert_eq!(dead, [expiring.id, failed.id, stuck.id, errored.id]);
    assert_eq!(
        s.dead_reservations(NOW + 100, NOW + 1, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    // By authorization: only pending orders (one finalizing keeps its tokens).
    assert_eq!(
        s.reservations_of_authz(failed.authz_ids[0]).await.unwrap(),
        [failed.id]
    );
    assert!(s
        .reservations_of_authz(stuck.authz_ids[0])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.reservations_of_authz(live.authz_ids[0]).await.unwrap(),
        [live.id]
    );
}

async fn account_read_spends_the_nonce_once(f: &Fixture) {
    let s = f.open(4).await;
    let a = new_account(&*s, "tp-a").await;
    let (acct, fresh) = s.account_spending_nonce(a.id, b"n1", NOW).await.unwrap();
    assert_eq!(acct.map(|x| x.id), Some(a.id));
    assert!(fresh);
    let (acct, fresh) = s.account_spending_nonce(a.id, b"n1", NOW).await.unwrap();
    assert!(acct.is_some());
    assert!(!fresh, "a nonce is spent once");
    // A missing account still spends the nonce.
    let (acct, fresh) = s
        .account_spending_nonce(AccountId(404), b"n2", NOW)
        .await
        .unwrap();
    assert!(acct.is_none());
    assert!(fresh);
    assert!(!s.redeem_nonce(b"n2", NOW).await.unwrap());
    // It is the same record redeem_nonce keeps.
    assert!(s.redeem_nonce(b"n3", NOW).await.unwrap());
    let (_, fresh) = s.account_spending_nonce(a.id, b"n3", NOW).await.unwrap();
    assert!(!fresh);
}

async fn race_account_spending_nonce(f: &Fixture) {
    let s = f.open(2).await;
    let a = new_account(&*s, "tp-a").await;
    let id = a.id;
    let wins = race(f, 4, 20, move |s, _| async move {
        let (acct, fresh) = s.account_spending_nonce(id, b"raced", NOW).await?;
        assert!(acct.is_some());
        Ok(fresh)
    })
    .await;
    assert_eq!(wins, 1);
}

/// The status rules in SQL (`core::lifecycle::sql`, which `begin_finalize`,
/// `dead_reservations` and the replacement check run) say what the Rust
/// derivation (`lifecycle::order_state`) says, on this database, for every
/// stored order status with every set of up to two authorizations of every
/// stored status, at times before, at and after each expiry and the
/// staleness bound.
async fn lifecycle_sql_matches_rust(f: &Fixture) {
    use cairn::core::lifecycle::{self, sql as rule};
    let s = f.open(2).await;
    let a = new_account(&*s, "tp-a").await;
    let raw = Raw::open(&f.url).await;
    let kinds: Vec<(&str, i64)> = ["pending", "valid", "invalid", "deactivated", "revoked"]
        .into_iter()
        .flat_map(|st| [(st, NOW + 5), (st, NOW + 20)])
        .collect();
    let mut sets: Vec<Vec<(&str, i64)>> = vec![Vec::new()];
    for (i, k) in kinds.iter().enumerate() {
        sets.push(vec![*k]);
        for k2 in &kinds[i..] {
            sets.push(vec![*k, *k2]);
        }
    }
    let mut n = 0;
    for status in ["pending", "processing", "valid", "invalid"] {
        for set in &sets {
            n += 1;
            let names: Vec<String> = (0..set.len())
                .map(|k| format!("g{n}-{k}.example"))
                .collect();
            let o = s
                .create_order(NewOrder {
                    profile: "classic".into(),
                    account_id: a.id,
                    expires: NOW + 10,
                    identifiers: names.iter().map(Identifier::dns).collect(),
                    authzs: names.iter().map(|n| new_authz(n, NOW + DAY)).collect(),
                    replaces: None,
                    reservation: None,
                    now: NOW,
                })
                .await
                .unwrap();
            raw.exec(&format!(
                "UPDATE orders SET status = '{status}' WHERE id = {}",
                o.id
            ))
            .await;
            for (authz, (st, expires)) in o.authz_ids.iter().zip(set) {
                raw.exec(&format!(
                    "UPDATE authzs SET status = '{st}', expires = {expires} WHERE id = {authz}"
                ))
                .await;
            }
        }
    }
    let stale = lifecycle::STALE_PROCESSING_SECS;
    let mut outcomes = std::collections::BTreeSet::new();
    for t in [
        NOW,
        NOW + 5,
        NOW + 10,
        NOW + 20,
        NOW + stale,
        NOW + stale + 1,
    ] {
        let (now, before) = (t.to_string(), (t - stale).to_string());
        let rows = raw
            .flags(&format!(
                "SELECT o.id, {} AS invalid, {} AS ready FROM orders o ORDER BY o.id",
                rule::order_invalid("o", &now, &before),
                rule::order_ready("o", &now)
            ))
            .await;
        assert_eq!(rows.len(), n);
        for (id, invalid, ready) in rows {
            let order = s.order(OrderId(id)).await.unwrap().unwrap();
            let authzs = s.authzs(&order.authz_ids).await.unwrap();
            let derived = lifecycle::order_state(&order, &authzs, t).status;
            let at = format!("order {id} (stored {:?}) at NOW+{}", order.status, t - NOW);
            assert_eq!(
                invalid,
                derived == OrderStatus::Invalid,
                "{at}: {derived:?}"
            );
            assert_eq!(ready, derived == OrderStatus::Ready, "{at}: {derived:?}");
            outcomes.insert(format!("{derived:?}"));
        }
    }
    // The grid reaches every derived status.
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        ["Invalid", "Pending", "Processing", "Ready", "Valid"]
    );
}

/// Plain SQL on the fixture's database, for states the store's API does
/// not write directly.
enum Raw {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Raw {
    async fn open(url: &str) -> Raw {
        if url.starts_with("sqlite:") {
            Raw::Sqlite(sqlx::SqlitePool::connect(url).await.unwrap())
        } else {
            Raw::Postgres(sqlx::PgPool::connect(url).await.unwrap())
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            Raw::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
            Raw::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn flags(&self, sql: &str) -> Vec<(i64, bool, bool)> {
        match self {
            Raw::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await,
            Raw::Postgres(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Retention (src/retention.rs), purging as of `NOW + 100 days`: orders
/// that never issued go once expired, unless they still hold rate-limit
/// tokens; authorizations go once expired, unless a live order's status
/// depends on them; valid orders and certificates stay; batches are bounded.
async fn purge_takes_only_what_nothing_needs(f: &Fixture) {
    let s = f.open(4).await;
    let cutoff = NOW + 100 * DAY;
    let acct = new_account(&*s, "purge").await.id;
    let issued = issued(&*s, acct, "0a01", &["i.example"], NOW).await;
    let pending = new_order(&*s, acct, &["p.example"], NOW + 7 * DAY).await;
    let failed = new_order(&*s, acct, &["f.example"], NOW + 7 * DAY).await;
    let doc = error_doc(&Problem::unauthorized("no"));
    s.fail_order(failed.id, &doc, NOW).await.unwrap();
    let reserved = order_with_reservation(&*s, acct, "r.example", NOW + 7 * DAY).await;
    // Live at the cutoff, with an authorization expired before it: the
    // order reads invalid *because of* that authorization, so it stays.
    let live = s
        .create_order(NewOrder {
            profile: "classic".into(),
            account_id: acct,
            expires: NOW + 200 * DAY,
            identifiers: vec![Identifier::dns("l.example")],
            authzs: vec![new_authz("l.example", NOW + 50 * DAY)],
            replaces: None,
            reservation: None,
            now: NOW,
        })
        .await
        .unwrap();
    let young = new_order(&*s, acct, &["y.example"], NOW + 200 * DAY).await;
    assert!(s.redeem_nonce(b"old", NOW).await.unwrap());
    assert!(s.redeem_nonce(b"young", cutoff + 10).await.unwrap());

    let expected = cairn::sa::Purged {
        orders: 2,
        // issued's, pending's, failed's and reserved's authorizations.
        authzs: 4,
        challenges: 12,
        order_authzs: 4,
        used_nonces: 1,
        rate_limit_buckets: 0,
    };
    assert_eq!(s.purgeable(cutoff, cutoff, 0).await.unwrap(), expected);
    // Bounded: one order per batch.
    let one = s.purge_orders(cutoff, 1).await.unwrap();
    assert_eq!((one.orders, one.order_authzs), (1, 1));
    assert_eq!(s.purge_orders(cutoff, 1).await.unwrap().orders, 1);
    assert_eq!(s.purge_orders(cutoff, 1).await.unwrap().orders, 0);
    let a = s.purge_authzs(cutoff, 100).await.unwrap();
    assert_eq!((a.authzs, a.challenges, a.order_authzs), (4, 12, 2));
    assert_eq!(s.prune_nonces(cutoff, 100).await.unwrap(), 1);
    assert_eq!(
        s.purgeable(cutoff, cutoff, 0).await.unwrap(),
        cairn::sa::Purged::default()
    );

    for gone in [pending.id, failed.id] {
        assert!(s.order(gone).await.unwrap().is_none(), "order {gone}");
    }
    for gone in pending.authz_ids.iter().chain(&issued.authz_ids) {
        assert!(s.authz(*gone).await.unwrap().is_none(), "authz {gone}");
    }
    // The issued order stays (its certificate refers to it), without its
    // purged authorizations; the certificate is untouched.
    let kept = s.order(issued.id).await.unwrap().expect("issued order");
    assert_eq!(kept.status, OrderStatus::Valid);
    assert_eq!(kept.cert_serial.as_deref(), Some("0a01"));
    assert!(kept.authz_ids.is_empty());
    let cert = s.certificate("0a01").await.unwrap().expect("certificate");
    assert_eq!(cert.order_id, issued.id);
    // The order holding tokens waits for the sweeper; then it goes too.
    assert!(s.order(reserved.id).await.unwrap().is_some());
    assert!(s.take_reservation(reserved.id).await.unwrap().is_some());
    assert_eq!(s.purge_orders(cutoff, 10).await.unwrap().orders, 1);
    // Live orders keep their authorizations.
    let live = s.order(live.id).await.unwrap().expect("live order");
    assert_eq!(live.authz_ids.len(), 1);
    assert!(s.authz(live.authz_ids[0]).await.unwrap().is_some());
    assert_eq!(s.order(young.id).await.unwrap().unwrap().authz_ids.len(), 1);
}
