//! Basic authentication against the configured users (clear passwords, Argon2 or bcrypt
//! hashes), and the CSRF token that guards admin actions.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};

use crate::config::{Secret, User};

/// Remembers credentials that verified, so a page refresh does not pay for an Argon2 or
/// bcrypt verification each time (they are slow on purpose), and runs those verifications
/// one at a time on a blocking thread, so a flood of wrong passwords cannot stall the
/// proxy's workers.
pub struct Verified {
    /// Authorization header value -> user name, for as long as that user's secret is unchanged.
    seen: Mutex<HashMap<String, (String, SecretId)>>,
    slow: tokio::sync::Semaphore,
}

impl Default for Verified {
    fn default() -> Self {
        Verified { seen: Mutex::default(), slow: tokio::sync::Semaphore::new(1) }
    }
}

/// Identifies a secret without holding the password itself.
type SecretId = u64;

const CACHE: usize = 256;
/// A longer Authorization value is refused unread: no configured password needs it (see
/// `config::LONGEST_CREDENTIALS`), and Argon2 would hash all of it.
const LONGEST: usize = 1024;

fn id(s: &Secret) -> SecretId {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match s {
        Secret::Clear(p) | Secret::Argon2(p) | Secret::Bcrypt(p) => p.hash(&mut h),
    }
    h.finish()
}

impl Verified {
    /// The authenticated user, if the request carries valid credentials.
    pub async fn user<'a>(&self, headers: &HeaderMap, users: &'a [User]) -> Option<&'a User> {
        let value = headers.get(AUTHORIZATION)?.to_str().ok().filter(|v| v.len() <= LONGEST)?;
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((name, secret)) = seen.get(value) {
                if let Some(u) = users.iter().find(|u| &u.name == name && id(&u.secret) == *secret) {
                    return Some(u);
                }
            }
        }
        let (name, password, secret) = credentials(value, users)?;
        // With a hashed user configured, every check not answered from the cache costs one
        // hash verification, a clear user's too (its result unused): a fast refusal would
        // tell that the name exists.
        let clear = match &secret {
            Secret::Clear(p) => Some(constant_time_eq(p.as_bytes(), password.as_bytes())),
            _ => None,
        };
        let slow = match clear {
            None => Some(secret),
            Some(_) => users.iter().map(|u| &u.secret).find(|s| !matches!(s, Secret::Clear(_))).cloned(),
        };
        let hashed = match slow {
            Some(secret) => {
                let _one_at_a_time = self.slow.acquire().await.ok()?;
                tokio::task::spawn_blocking(move || verify_hash(&secret, &password)).await.unwrap_or(false)
            }
            None => false,
        };
        let ok = clear.unwrap_or(hashed);
        let user = users.iter().find(|u| Some(&u.name) == name.as_ref()).filter(|_| ok)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= CACHE {
            seen.clear();
        }
        seen.insert(value.to_owned(), (user.name.clone(), id(&user.secret)));
        Some(user)
    }
}

/// The user name, the password given, and that user's secret, from a Basic header. A
/// name no user has comes back as `None` with a hashed user's secret to verify all the
/// same (when there is one), so that the time to answer does not tell which names exist
/// (as long as the hashes cost alike).
fn credentials(value: &str, users: &[User]) -> Option<(Option<String>, String, Secret)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    match users.iter().find(|u| u.name == name) {
        Some(user) => Some((Some(user.name.clone()), password.to_owned(), user.secret.clone())),
        None => {
            let decoy = users.iter().find(|u| !matches!(u.secret, Secret::Clear(_)))?;
            Some((None, password.to_owned(), decoy.secret.clone()))
        }
    }
}

/// The user name a Basic header claims (for the log of a refused login; never the password).
pub fn claimed_user(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok().filter(|v| v.len() <= LONGEST)?;
    let (scheme, encoded) = value.split_once(' ')?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let name = String::from_utf8_lossy(&decoded).split_once(':')?.0.to_owned();
    scheme.eq_ignore_ascii_case("basic").then_some(name)
}

/// Checks a password against a secret; Argon2 and bcrypt are slow by design.
fn verify_hash(secret: &Secret, password: &str) -> bool {
    match secret {
        Secret::Clear(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
        Secret::Argon2(h) => PasswordHash::new(h)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()),
        Secret::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
    }
}

/// Compares without an early exit, so response time does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random token per process, embedded in the admin forms and required with every admin
/// POST: another site can make a browser send the POST, but cannot read the token.
pub fn csrf_token() -> String {
    let mut bytes = [0u8; 32];
    // Without an entropy source the token is still unguessable enough from the process's
    // own randomised hashing state; getrandom failing on Linux means no /dev/urandom at all.
    if getrandom::fill(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use hyper::header::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn users() -> Vec<User> {
        let argon = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3k4BDXdaJ/xsWY32y0rsM6WWO1gxVV9R+9N5TNtPkQU";
        vec![
            User { name: "admin".into(), secret: Secret::Clear("secret".into()), role: Role::Admin },
            User { name: "argon".into(), secret: Secret::Argon2(argon.into()), role: Role::ReadOnly },
            User {
                name: "bcrypt".into(),
                secret: Secret::Bcrypt(bcrypt::hash("pw", 4).unwrap()),
                role: Role::ReadOnly,
            },
        ]
    }

    fn basic(user: &str, pw: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}")))
    }

    #[tokio::test]
    async fn accepts_the_right_credentials_only() {
        let u = users();
        let v = Verified::default();
        assert!(v.user(&with("Basic YWRtaW46c2VjcmV0"), &u).await.is_some());
        assert!(v.user(&with("basic YWRtaW46c2VjcmV0"), &u).await.is_some());
        assert!(v.user(&with("Basic YWRtaW46d3Jvbmc="), &u).await.is_none()); // admin:wrong
        assert!(v.user(&with("Basic !!!"), &u).await.is_none());
        assert!(v.user(&with("Bearer YWRtaW46c2VjcmV0"), &u).await.is_none());
        assert!(v.user(&HeaderMap::new(), &u).await.is_none());
    }

    #[tokio::test]
    async fn verifies_hashes() {
        let u = users();
        let v = Verified::default();
        assert_eq!(v.user(&with(&basic("bcrypt", "pw")), &u).await.map(|u| u.name.as_str()), Some("bcrypt"));
        assert!(v.user(&with(&basic("bcrypt", "nope")), &u).await.is_none());
        assert!(v.user(&with(&basic("argon", "wrong")), &u).await.is_none());
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
        let hash = Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        let u = vec![User { name: "a".into(), secret: Secret::Argon2(hash), role: Role::Admin }];
        assert!(v.user(&with(&basic("a", "pw")), &u).await.is_some());
    }

    #[tokio::test]
    async fn a_changed_secret_invalidates_the_cache() {
        let mut u = users();
        let v = Verified::default();
        let h = with(&basic("admin", "secret"));
        assert!(v.user(&h, &u).await.is_some());
        u[0].secret = Secret::Clear("rotated".into());
        assert!(v.user(&h, &u).await.is_none());
    }

    #[tokio::test]
    async fn an_unknown_name_costs_what_a_known_one_does() {
        let u = users();
        // Verified against a hashed user's secret, and refused whatever the password.
        let (name, _, secret) = credentials(&basic("nobody", "pw"), &u).unwrap();
        assert!(name.is_none() && secret == u[1].secret);
        assert!(Verified::default().user(&with(&basic("nobody", "pw")), &u).await.is_none());
        // With clear passwords only, nothing slow to pretend.
        assert!(credentials(&basic("nobody", "pw"), &u[..1]).is_none());
    }

    #[tokio::test]
    async fn a_huge_authorization_is_refused_unread() {
        let u = vec![
            User { name: "long".into(), secret: Secret::Clear("x".repeat(2000)), role: Role::Admin },
            User { name: "short".into(), secret: Secret::Clear("y".repeat(700)), role: Role::Admin },
        ];
        let v = Verified::default();
        assert!(v.user(&with(&basic("long", &"x".repeat(2000))), &u).await.is_none(), "right, but too long");
        assert!(v.user(&with(&basic("short", &"y".repeat(700))), &u).await.is_some());
    }

    #[test]
    fn a_refused_login_is_logged_with_its_name_only() {
        assert_eq!(claimed_user(&with(&basic("mallory", "guess"))).as_deref(), Some("mallory"));
        assert_eq!(claimed_user(&with("Bearer abc")), None);
        assert_eq!(claimed_user(&with("Basic !!!")), None);
    }

    #[test]
    fn csrf_tokens_differ() {
        assert_ne!(csrf_token(), csrf_token());
        assert_eq!(csrf_token().len(), 64);
    }
}
