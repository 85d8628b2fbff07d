//! Password hashes of web users, checked when the file is read: a hash is verified on
//! every login attempt (and a name no user has is verified against a hashed user's, so
//! the answer's time does not tell names apart), so a hash whose parameters ask for
//! terabytes or hours would let any request stop pgfront, and one that cannot be used
//! would refuse its user for good. Both are refused here, by line and key.

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Params, Version};

/// Most memory an Argon2 hash may ask for, in KiB (256 MiB; OWASP's recommendations are
/// 19-46 MiB, and the argon2 crate's default 19 MiB).
pub const ARGON2_MAX_M_KIB: u32 = 256 * 1024;
/// Most passes (the crate's default is 2; OWASP's lowest memory setting asks 5).
pub const ARGON2_MAX_T: u32 = 16;
/// Most lanes.
pub const ARGON2_MAX_P: u32 = 16;
/// Highest bcrypt cost: 2^16 rounds take seconds per login (common settings are 10-12).
pub const BCRYPT_MAX_COST: u32 = 16;
/// bcrypt's lowest cost.
const BCRYPT_MIN_COST: u32 = 4;

/// The kind of a usable hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Argon2,
    Bcrypt,
}

/// Whether `text` is an Argon2 or bcrypt hash pgfront can verify at a bounded cost; the
/// error says what is wrong with it.
pub fn usable(text: &str) -> Result<Kind, String> {
    if text.starts_with("$argon2") {
        argon2(text).map(|()| Kind::Argon2).map_err(|e| format!("not a usable Argon2 hash: {e}"))
    } else if text.starts_with("$2") {
        bcrypt(text).map(|()| Kind::Bcrypt).map_err(|e| format!("not a usable bcrypt hash: {e}"))
    } else {
        Err("expected an Argon2 ($argon2id$...) or bcrypt ($2b$...) hash".to_owned())
    }
}

fn argon2(text: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(text).map_err(|e| e.to_string())?;
    Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    if let Some(v) = parsed.version {
        Version::try_from(v).map_err(|e| e.to_string())?;
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("it has no salt or no hash".to_owned());
    }
    let params = Params::try_from(&parsed).map_err(|e| e.to_string())?;
    let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
    if m > ARGON2_MAX_M_KIB || t > ARGON2_MAX_T || p > ARGON2_MAX_P {
        return Err(format!(
            "m={m},t={t},p={p} costs more than a login may (at most m={ARGON2_MAX_M_KIB} KiB, t={ARGON2_MAX_T}, p={ARGON2_MAX_P})"
        ));
    }
    Ok(())
}

fn bcrypt(text: &str) -> Result<(), String> {
    let parts: bcrypt::HashParts = text.parse().map_err(|e: bcrypt::BcryptError| e.to_string())?;
    let cost = parts.get_cost();
    if !(BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&cost) {
        return Err(format!("cost {cost} is outside {BCRYPT_MIN_COST}-{BCRYPT_MAX_COST}"));
    }
    // The salt and the hash in bcrypt's own base64 (the crate takes any character here
    // and refuses the hash only at the first login).
    let body = text.rsplit('$').next().unwrap_or_default();
    if !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/') {
        return Err("its salt and hash are not bcrypt's base64".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_that_would_stop_pgfront_or_lock_a_user_out_are_refused() {
        // Made by `argon2` and `htpasswd -B`: usable.
        let good_argon = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$7n7ZbT1MJ5OQnSvgJGHzbQ3W2v6Tt6rQW6vTGhGfJkE";
        assert_eq!(usable(good_argon), Ok(Kind::Argon2));
        let good_bcrypt = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
        assert_eq!(usable(good_bcrypt), Ok(Kind::Bcrypt));
        // Before: accepted, and the first login asked for 4 TiB and aborted the process.
        let huge =
            "$argon2id$v=19$m=4294967295,t=4294967295,p=255$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        for bad in [
            huge,
            "$argon2id$garbage",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2x$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$7n7ZbT1MJ5OQnSvgJGHzbQ3W2v6Tt6rQW6vTGhGfJkE",
            &format!("$2b${}", "x".repeat(56)),
            "$2b$99$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
            "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lh!y",
            "secret",
        ] {
            assert!(usable(bad).is_err(), "{bad} accepted");
        }
        assert!(usable(huge).unwrap_err().contains("m=4294967295,t=4294967295,p=255"));
    }
}
