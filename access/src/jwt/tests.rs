//! The forged-token corpus and the accepted tokens, against keys the openssl CLI generates
//! for each run (nothing secret is committed).

use std::path::PathBuf;
use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "orderflow-api";

/// A private key the openssl CLI made, with its PEM files.
struct TestKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    public_pem: Vec<u8>,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI is needed to generate test keys (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("access-jwt-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key(dir: &std::path::Path, kid: &str, algorithm: Algorithm) -> TestKey {
    let path = dir.join(format!("{kid}.pem"));
    let path_s = path.to_str().unwrap();
    match algorithm {
        Algorithm::RS256 => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_s,
        ]),
        Algorithm::ES256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_s,
        ]),
        Algorithm::EdDSA => openssl(&["genpkey", "-algorithm", "ED25519", "-out", path_s]),
        other => panic!("no test keys for {other:?}"),
    };
    let pem = std::fs::read(&path).unwrap();
    let public_pem = openssl(&["pkey", "-in", path_s, "-pubout"]);
    // A test key leaves nothing behind once loaded.
    std::fs::remove_file(&path).unwrap();
    let encoding = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    TestKey {
        kid: kid.into(),
        algorithm,
        encoding,
        public_pem,
    }
}

fn jwk(key: &TestKey) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&key.encoding, key.algorithm).unwrap();
    jwk.common.key_id = Some(key.kid.clone());
    jwk
}

fn write_jwks(path: &std::path::Path, keys: &[&TestKey]) {
    let set = JwkSet {
        keys: keys.iter().map(|k| jwk(k)).collect(),
    };
    std::fs::write(path, serde_json::to_string_pretty(&set).unwrap()).unwrap();
}

fn settings(jwks: &std::path::Path) -> JwtSettings {
    JwtSettings {
        jwks_file: Some(jwks.to_path_buf()),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        ..JwtSettings::default()
    }
}

fn claims(role: &str) -> Value {
    let now = get_current_timestamp();
    json!({"sub": "svc-checkout", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "role": role})
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    encode(&header, claims, &key.encoding).unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

struct Fixture {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    verifier: Verifier,
    jwks: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.jwks.parent().unwrap());
    }
}

fn fixture() -> Fixture {
    let dir = dir();
    let rsa = key(&dir, "rsa-1", Algorithm::RS256);
    let ec = key(&dir, "ec-1", Algorithm::ES256);
    let ed = key(&dir, "ed-1", Algorithm::EdDSA);
    let jwks = dir.join("jwks.json");
    write_jwks(&jwks, &[&rsa, &ec, &ed]);
    let verifier = Verifier::new(settings(&jwks)).unwrap();
    Fixture {
        rsa,
        ec,
        ed,
        verifier,
        jwks,
    }
}

#[test]
fn valid_rs256_es256_and_eddsa_tokens_are_accepted() {
    let f = fixture();
    for key in [&f.rsa, &f.ec, &f.ed] {
        let principal = f
            .verifier
            .verify(&sign(key, &claims("service")))
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.algorithm));
        assert_eq!(
            principal,
            Principal {
                id: "svc-checkout".into(),
                role: Role::Service,
                customer_id: None
            }
        );
    }
    // A scope list with one role in it, and a role array, also name the role.
    let mut scoped = claims("orders:read analyst");
    assert_eq!(
        f.verifier.verify(&sign(&f.rsa, &scoped)).unwrap().role,
        Role::Analyst
    );
    scoped["role"] = json!(["operator"]);
    assert_eq!(
        f.verifier.verify(&sign(&f.rsa, &scoped)).unwrap().role,
        Role::Operator
    );
    // A customer carries its customer id; `typ` may be absent.
    let mut customer = claims("customer");
    customer["customer_id"] = json!("c-42");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec-1".into());
    header.typ = None;
    let token = encode(&header, &customer, &f.ec.encoding).unwrap();
    assert_eq!(
        f.verifier.verify(&token).unwrap(),
        Principal {
            id: "svc-checkout".into(),
            role: Role::Customer,
            customer_id: Some("c-42".into())
        }
    );
    // Within the leeway, a just-expired token still passes.
    let mut late = claims("service");
    late["exp"] = json!(get_current_timestamp() - 5);
    f.verifier
        .verify(&sign(&f.rsa, &late))
        .expect("5 s past exp is within the 30 s leeway");
}

#[test]
fn every_forged_token_is_refused_for_its_own_reason() {
    let f = fixture();
    let now = get_current_timestamp();
    let good = sign(&f.rsa, &claims("service"));
    let parts: Vec<&str> = good.split('.').collect();

    let none_header = json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"});
    let alg_none = format!("{}.{}.", b64(&none_header), b64(&claims("operator")));

    // HS256 with the RSA public key (as PEM text) as the HMAC secret: the classic confusion.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa-1".into());
    let hs256_with_public_key = encode(
        &hs,
        &claims("operator"),
        &EncodingKey::from_secret(&f.rsa.public_pem).unwrap(),
    )
    .unwrap();

    let with = |field: &str, value: Value| {
        let mut c = claims("service");
        c[field] = value;
        sign(&f.rsa, &c)
    };
    let without = |field: &str| {
        let mut c = claims("service");
        c.as_object_mut().unwrap().remove(field);
        sign(&f.rsa, &c)
    };
    let unknown_kid = sign(
        &TestKey {
            kid: "rsa-9".into(),
            ..key(f.jwks.parent().unwrap(), "rsa-9", Algorithm::RS256)
        },
        &claims("service"),
    );
    // A key not in the set that claims the set's kid: the signature does not verify.
    let impostor = sign(
        &TestKey {
            kid: "rsa-1".into(),
            ..key(f.jwks.parent().unwrap(), "x", Algorithm::RS256)
        },
        &claims("service"),
    );
    // An ES256 token naming the RSA key's kid.
    let wrong_alg_for_kid = sign(
        &TestKey {
            kid: "rsa-1".into(),
            ..key(f.jwks.parent().unwrap(), "y", Algorithm::ES256)
        },
        &claims("service"),
    );
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims("operator")), parts[2]);
    let truncated_signature = &good[..good.len() - 20];
    let header_only = format!("{}.", parts[0]);
    let mut typed = Header::new(Algorithm::RS256);
    typed.kid = Some("rsa-1".into());
    typed.typ = Some("secevent+jwt".into());
    let wrong_typ = encode(&typed, &claims("service"), &f.rsa.encoding).unwrap();
    let mut critical = Header::new(Algorithm::RS256);
    critical.kid = Some("rsa-1".into());
    critical.crit = Some(vec!["exp".into()]);
    let crit = encode(&critical, &claims("service"), &f.rsa.encoding).unwrap();
    let mut kidless = Header::new(Algorithm::RS256);
    kidless.kid = None;
    let no_kid = encode(&kidless, &claims("service"), &f.rsa.encoding).unwrap();
    let two_roles = with("role", json!("service operator"));
    let customer_without_id = with("role", json!("customer"));

    type Check = fn(&Rejected) -> bool;
    let corpus: Vec<(&str, String, Check)> = vec![
        ("alg none", alg_none, |r| matches!(r, Rejected::Header(_))),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
            |r| matches!(r, Rejected::Algorithm { .. }),
        ),
        ("expired", with("exp", json!(now - 3600)), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("not yet valid", with("nbf", json!(now + 3600)), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        (
            "wrong iss",
            with("iss", json!("https://evil.example")),
            |r| matches!(r, Rejected::Invalid(_)),
        ),
        ("wrong aud", with("aud", json!("another-api")), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("no exp", without("exp"), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("no iss", without("iss"), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("no aud", without("aud"), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("no sub", without("sub"), |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("empty sub", with("sub", json!(" ")), |r| {
            matches!(r, Rejected::Claim(_))
        }),
        ("unknown kid", unknown_kid, |r| {
            matches!(r, Rejected::UnknownKid)
        }),
        ("no kid", no_kid, |r| matches!(r, Rejected::NoKid)),
        ("a foreign key under a known kid", impostor, |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        ("ES256 naming an RS256 key", wrong_alg_for_kid, |r| {
            matches!(r, Rejected::Algorithm { .. })
        }),
        ("tampered payload", tampered, |r| {
            matches!(r, Rejected::Invalid(_))
        }),
        (
            "truncated signature",
            truncated_signature.to_string(),
            |r| matches!(r, Rejected::Invalid(_)),
        ),
        ("header only", header_only, |r| {
            matches!(r, Rejected::Header(_))
        }),
        ("one segment", parts[0].to_string(), |r| {
            matches!(r, Rejected::Header(_))
        }),
        ("empty", String::new(), |r| matches!(r, Rejected::Header(_))),
        ("garbage", "not.a.jwt".into(), |r| {
            matches!(r, Rejected::Header(_))
        }),
        ("oversized", "a".repeat(TOKEN_MAX_BYTES + 1), |r| {
            matches!(r, Rejected::TooLong)
        }),
        ("typ not JWT", wrong_typ, |r| matches!(r, Rejected::Type(_))),
        ("crit header", crit, |r| matches!(r, Rejected::Critical)),
        ("no role", without("role"), |r| {
            matches!(r, Rejected::Claim(_))
        }),
        ("an unknown role", with("role", json!("root")), |r| {
            matches!(r, Rejected::Claim(_))
        }),
        ("two roles", two_roles, |r| matches!(r, Rejected::Claim(_))),
        ("customer without customer id", customer_without_id, |r| {
            matches!(r, Rejected::Claim(_))
        }),
    ];
    for (name, token, check) in corpus {
        match f.verifier.verify(&token) {
            Ok(p) => panic!("{name}: accepted as {p:?}"),
            Err(reason) => {
                assert!(
                    check(&reason),
                    "{name}: refused for the wrong reason: {reason:?}"
                );
                // The reason is for the log: it never repeats the token.
                if token.len() > 8 {
                    assert!(
                        !reason.to_string().contains(&token),
                        "{name}: the reason quotes the token"
                    );
                }
            }
        }
    }
    // The good token passes, so each refusal above is the forgery's doing.
    f.verifier.verify(&good).unwrap();
}

#[test]
fn keys_rotate_by_kid_on_reload_and_a_bad_file_keeps_the_old_keys() {
    let f = fixture();
    let dir = f.jwks.parent().unwrap().to_path_buf();
    let next = key(&dir, "rsa-2", Algorithm::RS256);
    let old_token = sign(&f.rsa, &claims("service"));
    let new_token = sign(&next, &claims("service"));
    assert_eq!(f.verifier.verify(&new_token), Err(Rejected::UnknownKid));

    write_jwks(&f.jwks, &[&f.rsa, &next]);
    assert_eq!(f.verifier.reload().unwrap(), 2);
    f.verifier
        .verify(&new_token)
        .expect("the added kid is accepted after reload");
    f.verifier
        .verify(&old_token)
        .expect("both keys are in force during the rotation");

    write_jwks(&f.jwks, &[&next]);
    f.verifier.reload().unwrap();
    assert_eq!(
        f.verifier.verify(&old_token),
        Err(Rejected::UnknownKid),
        "the removed kid is refused"
    );

    std::fs::write(&f.jwks, "{not json").unwrap();
    let error = f.verifier.reload().unwrap_err();
    assert!(error.to_string().contains("not a JWKS document"), "{error}");
    f.verifier
        .verify(&new_token)
        .expect("a file that does not load leaves the keys in force");
    let _ = (&f.ec, &f.ed);
}

#[test]
fn a_key_set_pins_one_algorithm_per_key() {
    let f = fixture();
    let mut set: Value = serde_json::from_str(&std::fs::read_to_string(&f.jwks).unwrap()).unwrap();
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "no alg",
            Box::new(|s| {
                s["keys"][0].as_object_mut().unwrap().remove("alg");
            }),
            "no `alg`",
        ),
        (
            "no kid",
            Box::new(|s| {
                s["keys"][0].as_object_mut().unwrap().remove("kid");
            }),
            "no `kid`",
        ),
        (
            "alg of another key type",
            Box::new(|s| s["keys"][0]["alg"] = json!("ES256")),
            "does not fit",
        ),
        (
            "an HMAC key",
            Box::new(|s| {
                s["keys"][0] = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"})
            }),
            "not accepted",
        ),
        (
            "duplicate kid",
            Box::new(|s| s["keys"][1]["kid"] = json!("rsa-1")),
            "appears twice",
        ),
    ];
    for (name, change, expected) in cases {
        let mut bad = set.clone();
        change(&mut bad);
        let error = KeySet::parse("jwks.json", &bad.to_string())
            .err()
            .unwrap_or_else(|| panic!("{name}: loaded"));
        assert!(error.to_string().contains(expected), "{name}: {error}");
        assert!(
            error.to_string().contains("jwks.json"),
            "{name}: the file is not named: {error}"
        );
    }
    set["keys"] = json!([]);
    assert!(KeySet::parse("j", &set.to_string()).unwrap().is_empty());

    let mut settings = settings(&f.jwks);
    settings.leeway_secs = LEEWAY_MAX_SECS + 1;
    assert!(matches!(
        Verifier::new(settings.clone()),
        Err(JwtConfigError::Leeway(_))
    ));
    settings.leeway_secs = 30;
    settings.audience = String::new();
    assert!(matches!(
        Verifier::new(settings),
        Err(JwtConfigError::Missing("audience"))
    ));
    let keyless = Verifier::new(JwtSettings::default()).unwrap();
    assert_eq!(
        keyless.verify(&sign(&f.rsa, &claims("service"))),
        Err(Rejected::NoKeys)
    );
}
