//! Basic authentication against the users of the configuration.

use base64::Engine;
use hyper::header::{HeaderMap, AUTHORIZATION};

use crate::config::User;

/// The authenticated user, if the request carries valid credentials.
pub fn user<'a>(headers: &HeaderMap, users: &'a [User]) -> Option<&'a User> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    users.iter().find(|u| u.name == name && constant_time_eq(u.password.as_bytes(), password.as_bytes()))
}

/// Compares without an early exit, so response time does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn users() -> Vec<User> {
        vec![User { name: "admin".into(), password: "secret".into() }]
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn accepts_the_right_credentials_only() {
        let u = users();
        assert!(user(&with("Basic YWRtaW46c2VjcmV0"), &u).is_some());
        assert!(user(&with("basic YWRtaW46c2VjcmV0"), &u).is_some());
        assert!(user(&with("Basic YWRtaW46d3Jvbmc="), &u).is_none()); // admin:wrong
        assert!(user(&with("Basic !!!"), &u).is_none());
        assert!(user(&with("Bearer YWRtaW46c2VjcmV0"), &u).is_none());
        assert!(user(&HeaderMap::new(), &u).is_none());
    }
}
