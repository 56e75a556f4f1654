//! RS256 and ES256, and algorithm confusion, with real keys (tests/keys).

use herald_auth::{jwt, Action, Auth, AuthConfig, Credential, Source};
use herald_core::Topic;

const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("keys/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("keys/ec_public.pem");

fn claims() -> jwt::Claims {
    let now = herald_auth::now();
    jwt::Claims {
        sub: Some("alice".into()),
        exp: now + 60,
        iat: Some(now),
        nbf: None,
        herald: jwt::HeraldClaim {
            subscribe: vec!["users/{sub}/**".into()],
            publish: vec![],
            ..Default::default()
        },
        info: None,
    }
}

fn with_key(pem: &[u8], secret: Option<&[u8]>) -> Auth {
    Auth::new(AuthConfig {
        public_key_pem: Some(pem.to_vec()),
        hs256_secret: secret.map(<[u8]>::to_vec),
        ..AuthConfig::default()
    })
    .unwrap()
}

fn header(auth: &Auth, token: String) -> Result<herald_auth::Principal, herald_auth::AuthError> {
    auth.authenticate(Some(Credential::new(token, Source::Header)))
}

#[test]
fn rs256_and_es256_verify() {
    for (private, public) in [(RSA_PRIVATE, RSA_PUBLIC), (EC_PRIVATE, EC_PUBLIC)] {
        let auth = with_key(public, None);
        let tok = jwt::sign(&claims(), private, true, None).unwrap();
        let who = header(&auth, tok).unwrap();
        assert!(auth
            .authorize(
                &who,
                Action::Subscribe,
                &Topic::new("users/alice/x").unwrap()
            )
            .is_ok());
    }
    // An ES256 token against an RS256-only server, and the other way round.
    let rsa = with_key(RSA_PUBLIC, None);
    assert!(header(&rsa, jwt::sign(&claims(), EC_PRIVATE, true, None).unwrap()).is_err());
    let ec = with_key(EC_PUBLIC, None);
    assert!(header(&ec, jwt::sign(&claims(), RSA_PRIVATE, true, None).unwrap()).is_err());
}

#[test]
fn algorithm_confusion_is_refused() {
    // The classic attack: sign HS256 with the server's public key as the HMAC secret.
    let forged = jwt::sign(&claims(), RSA_PUBLIC, false, None).unwrap();
    let rsa_only = with_key(RSA_PUBLIC, None);
    assert!(header(&rsa_only, forged.clone()).is_err());
    // Even with an HS256 secret configured too, the public key is never an HMAC key.
    let both = with_key(RSA_PUBLIC, Some(b"the-real-hmac-secret-0123456789ab"));
    assert!(header(&both, forged).is_err());
}
