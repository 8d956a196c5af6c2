//! Account keys from hostile clients (issue 10 items 4-6): a key is one key
//! whatever its JWK spelling, so non-canonical JWKs are refused (`malformed`);
//! keys Cairn will not accept are refused as `badPublicKey` before any
//! signature work: small-order Ed25519 points, RSA exponents other than 65537,
//! odd sizes and even moduli.

mod common;

use common::*;
use openssl::bn::{BigNum, BigNumContext, BigNumRef, MsbOption};
use openssl::pkey::Private;
use openssl::rsa::Rsa;
use serde_json::{json, Value};

/// `jwk` with `member` (a base64url big-endian integer) given one leading zero byte.
fn with_leading_zero(jwk: &Value, member: &str) -> Value {
    let mut bytes = vec![0u8];
    bytes.extend(b64u_decode(jwk[member].as_str().expect("member")));
    let mut out = jwk.clone();
    out[member] = json!(b64u(bytes));
    out
}

/// An RSA key of `bits` bits with public exponent `e`, built from two primes
/// (OpenSSL will not generate one with a huge exponent).
fn rsa_with_exponent(bits: i32, e: &BigNumRef) -> Rsa<Private> {
    let mut ctx = BigNumContext::new().expect("ctx");
    let one = BigNum::from_u32(1).expect("1");
    loop {
        let mut p = BigNum::new().expect("p");
        p.generate_prime(bits / 2, false, None, None)
            .expect("prime");
        let mut q = BigNum::new().expect("q");
        q.generate_prime(bits / 2, false, None, None)
            .expect("prime");
        let (p1, q1) = (&p - &one, &q - &one);
        let mut phi = BigNum::new().expect("phi");
        phi.checked_mul(&p1, &q1, &mut ctx).expect("mul");
        let mut d = BigNum::new().expect("d");
        if d.mod_inverse(e, &phi, &mut ctx).is_err() {
            continue;
        }
        let n = &p * &q;
        if n.num_bits() != bits {
            continue;
        }
        let mut dmp1 = BigNum::new().expect("dmp1");
        dmp1.nnmod(&d, &p1, &mut ctx).expect("mod");
        let mut dmq1 = BigNum::new().expect("dmq1");
        dmq1.nnmod(&d, &q1, &mut ctx).expect("mod");
        let mut iqmp = BigNum::new().expect("iqmp");
        iqmp.mod_inverse(&q, &p, &mut ctx).expect("inverse");
        return Rsa::from_private_components(
            n,
            e.to_owned().expect("e"),
            d,
            p,
            q,
            dmp1,
            dmq1,
            iqmp,
        )
        .expect("RSA key");
    }
}

/// newAccount signed by `key` (with whatever JWK it announces).
async fn new_account_with(server: &Server, key: AcmeKey) -> AcmeResponse {
    AcmeClient::with_key(server, key)
        .await
        .new_account(&[], true)
        .await
}

/// A newAccount JWS with an arbitrary `jwk` and signature (no private key needed).
async fn new_account_raw(c: &AcmeClient, alg: &str, jwk: Value, signature: &[u8]) -> AcmeResponse {
    let url = c.endpoint("newAccount");
    let h = json!({"alg": alg, "jwk": jwk, "nonce": c.nonce().await, "url": url});
    let body = json!({
        "protected": b64u(serde_json::to_vec(&h).expect("header")),
        "payload": b64u(br#"{"termsOfServiceAgreed":true}"#),
        "signature": b64u(signature),
    });
    c.post_jws(&url, &body).await
}

/// The same RSA key with a leading zero in `n` (or `e`) is not a second account:
/// RFC 7518 §6.3.1 requires the minimal encoding, and the thumbprint (the account's
/// identity) is computed over it.
#[tokio::test]
async fn leading_zero_rsa_members_refused() {
    let server = Server::start(ServerOpts::test());
    let owner = AcmeClient::new(&server, KeyKind::Rs256(2048)).await;
    let acct_url = owner.register().await;
    let key = owner.key();
    for member in ["n", "e"] {
        let twin = key
            .clone_key()
            .with_jwk(with_leading_zero(&key.jwk(), member));
        let r = new_account_with(&server, twin).await;
        let p = assert_problem(&r, 400, "malformed");
        assert!(
            p["detail"].as_str().unwrap_or("").contains("leading zero"),
            "{member}: {r}"
        );
    }
    // The canonical form still finds the one account.
    let r = owner
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.location().as_deref(), Some(acct_url.as_str()), "{r}");
}

/// keyChange (RFC 8555 §7.3.5) of account X onto account Y's key, written with a
/// leading zero, must not give Y's key to X: refused, and the canonical form is the
/// 409 pointing at Y.
#[tokio::test]
async fn key_change_onto_a_non_canonical_copy_of_another_key_refused() {
    let server = Server::start(ServerOpts::test());
    let x = AcmeClient::new(&server, KeyKind::Es256).await;
    let x_url = x.register().await;
    let y = AcmeClient::new(&server, KeyKind::Rs256(2048)).await;
    let y_url = y.register().await;
    let url = x.endpoint("keyChange");
    let y_key = y.key();
    let inner_with = |jwk: Value| {
        jws(
            &json!({"alg": "RS256", "jwk": jwk, "url": url}),
            json!({"account": x_url, "oldKey": x.key().jwk()})
                .to_string()
                .as_bytes(),
            &y_key,
        )
    };
    let send = |inner: Value| {
        let x = &x;
        let url = url.clone();
        async move {
            let h = x.header_kid(&url).await;
            let key = x.key();
            x.post_raw(&url, h, inner.to_string().as_bytes(), &key)
                .await
        }
    };
    let r = send(inner_with(with_leading_zero(&y_key.jwk(), "n"))).await;
    assert_problem(&r, 400, "malformed");
    let r = send(inner_with(y_key.jwk())).await;
    assert_problem(&r, 409, "conflict");
    assert_eq!(r.location().as_deref(), Some(y_url.as_str()), "{r}");
    // X still signs with its own key, and Y's key still names only Y.
    x.post_as_get(&x_url).await.expect_status(200);
    let r = y
        .new_account_payload(json!({"onlyReturnExisting": true}))
        .await;
    assert_eq!(r.location().as_deref(), Some(y_url.as_str()), "{r}");
}

/// EC coordinates have the curve's full length (RFC 7518 §6.2.1.2), no more, no less,
/// and name a point on the curve.
#[tokio::test]
async fn non_canonical_and_invalid_ec_keys_refused() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    let key = c.key();
    let jwk = key.jwk();
    let r = new_account_with(
        &server,
        key.clone_key().with_jwk(with_leading_zero(&jwk, "x")),
    )
    .await;
    assert_problem(&r, 400, "malformed");
    let mut short = jwk.clone();
    short["y"] = json!(b64u(&b64u_decode(jwk["y"].as_str().expect("y"))[1..]));
    let r = new_account_with(&server, key.clone_key().with_jwk(short)).await;
    assert_problem(&r, 400, "malformed");
    // A point off the curve: y + 1.
    let mut y = b64u_decode(jwk["y"].as_str().expect("y"));
    let last = y.len() - 1;
    y[last] ^= 1;
    let mut off = jwk.clone();
    off["y"] = json!(b64u(y));
    let r = new_account_with(&server, key.clone_key().with_jwk(off)).await;
    assert_problem(&r, 400, "badPublicKey");
    // A private member.
    let mut private = jwk.clone();
    private["d"] = json!(b64u([1u8; 32]));
    let r = new_account_with(&server, key.clone_key().with_jwk(private)).await;
    assert_problem(&r, 400, "malformed");
    // The genuine key is fine.
    assert_eq!(c.new_account(&[], true).await.status, 201);
}

/// Ed25519 public keys of small order verify an all-zero signature for a quarter
/// (or more) of all messages; they and non-canonical encodings are refused, every time.
#[tokio::test]
async fn small_order_and_non_canonical_ed25519_keys_refused() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::EdDsa).await;
    let small_order = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ];
    // y >= p: p itself (y = 0) and p + 1 (y = 1), and x = 0 with the sign bit set.
    let non_canonical = [
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0100000000000000000000000000000000000000000000000000000000000080",
    ];
    for (i, x) in small_order.iter().chain(&non_canonical).enumerate() {
        let jwk = json!({"crv": "Ed25519", "kty": "OKP", "x": b64u(hex::decode(x).expect("hex"))});
        // Each try has its own nonce, so its own message: 24 tries of the
        // 32-zero-bytes key would pass about 6 times if it were accepted.
        let tries = if i == 0 { 24 } else { 2 };
        for _ in 0..tries {
            let r = new_account_raw(&c, "EdDSA", jwk.clone(), &[0u8; 64]).await;
            assert_problem_any(&r, &[(400, "badPublicKey"), (400, "malformed")]);
            assert_ne!(r.status, 201, "{x}: {r}");
        }
    }
    // A genuine key with an all-zero signature does not verify either.
    let r = new_account_raw(&c, "EdDSA", c.key().jwk(), &[0u8; 64]).await;
    assert_problem(&r, 400, "malformed");
    assert_eq!(c.new_account(&[], true).await.status, 201);
}

/// Boulder's key policy: RSA keys of 2048, 3072 or 4096 bits with e = 65537. A huge
/// exponent makes every verification (and every junk signature under its kid) cost
/// many times the usual CPU.
#[tokio::test]
async fn rsa_exponents_other_than_65537_refused() {
    let server = Server::start(ServerOpts::test());
    let three = BigNum::from_u32(3).expect("3");
    let r = new_account_with(&server, AcmeKey::from_rsa(rsa_with_exponent(2048, &three))).await;
    let p = assert_problem(&r, 400, "badPublicKey");
    assert!(p["detail"].as_str().unwrap_or("").contains("65537"), "{r}");

    let mut huge = BigNum::new().expect("e");
    huge.rand(3072, MsbOption::ONE, true).expect("rand");
    let key = AcmeKey::from_rsa(rsa_with_exponent(3072, &huge));
    let r = new_account_with(&server, key).await;
    assert_problem(&r, 400, "badPublicKey");

    // A 2560-bit modulus is not one of the three sizes.
    let r = new_account_with(&server, AcmeKey::generate(KeyKind::Rs256(2560))).await;
    assert_problem(&r, 400, "badPublicKey");
    let r = new_account_with(&server, AcmeKey::generate(KeyKind::Rs256(3072))).await;
    assert_eq!(r.status, 201, "{r}");
}

/// Degenerate `n` and `e` values are refused before any arithmetic on them: no
/// underflow, no panic, a problem naming the member.
#[tokio::test]
async fn degenerate_rsa_members_refused() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Rs256(2048)).await;
    let good = c.key().jwk();
    let mut even = b64u_decode(good["n"].as_str().expect("n"));
    let last = even.len() - 1;
    even[last] &= 0xfe;
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("n empty", "n", String::new(), "malformed"),
        ("n zero", "n", b64u([0u8]), "badPublicKey"),
        ("n one byte", "n", b64u([3u8]), "badPublicKey"),
        ("n tiny", "n", b64u([0xc3u8, 0x51]), "badPublicKey"),
        ("n even", "n", b64u(&even), "badPublicKey"),
        ("n huge", "n", b64u(vec![0xffu8; 1024]), "badPublicKey"),
        ("n not base64url", "n", "a+b/".into(), "malformed"),
        ("e empty", "e", String::new(), "malformed"),
        ("e zero", "e", b64u([0u8]), "badPublicKey"),
        ("e zero, two bytes", "e", b64u([0u8, 0]), "malformed"),
        ("e one", "e", b64u([1u8]), "badPublicKey"),
        ("e even", "e", b64u([1u8, 0, 0]), "badPublicKey"),
        ("e huge", "e", b64u(vec![0xffu8; 512]), "badPublicKey"),
    ];
    for (label, member, value, kind) in cases {
        let mut jwk = good.clone();
        jwk[member] = json!(value);
        let r = new_account_raw(&c, "RS256", jwk, &[1u8; 256]).await;
        assert_eq!(r.status, 400, "{label}: {r}");
        assert_eq!(
            r.problem_type().as_deref(),
            Some(&*format!("{ERR_NS}{kind}")),
            "{label}: {r}"
        );
    }
    let mut jwk = good.clone();
    jwk["n"] = json!(5);
    let r = new_account_raw(&c, "RS256", jwk, &[1u8; 256]).await;
    assert_problem(&r, 400, "malformed");
    assert_eq!(c.new_account(&[], true).await.status, 201);
}
