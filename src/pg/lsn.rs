//! WAL positions as PostgreSQL writes them (`pg_lsn`: `16/B374D848`), for a client's
//! `pgfront.min_lsn`. Patroni reports the same positions as plain integers.

/// Parses `X/Y` as PostgreSQL's `pg_lsn` input does: two hexadecimal numbers of one to
/// eight digits each, nothing else (no spaces, no sign).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let part = |p: &str| {
        ((1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(p, 16).ok())
            .flatten()
    };
    Some(u64::from(part(hi)?) << 32 | u64::from(part(lo)?))
}

/// Writes a position as PostgreSQL prints it (`%X/%X`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_postgresql_reads() {
        for (text, want) in [
            ("0/0", Some(0)),
            ("0/3000060", Some(0x300_0060)),
            ("16/B374D848", Some(0x16_B374_D848)),
            ("16/b374d848", Some(0x16_B374_D848)),
            ("FFFFFFFF/FFFFFFFF", Some(u64::MAX)),
            ("00000000/00000001", Some(1)),
            ("", None),
            ("0", None),
            ("/0", None),
            ("0/", None),
            ("0/3000060 ", None),
            (" 0/3000060", None),
            ("1FFFFFFFF/0", None),
            ("0/+1", None),
            ("0/-1", None),
            ("g/0", None),
            ("0/0/0", None),
            ("50331744", None),
        ] {
            assert_eq!(parse_lsn(text), want, "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trips(lsn: u64) {
            proptest::prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }

        #[test]
        fn never_panics(text: String) {
            let _ = parse_lsn(&text);
        }
    }
}
