//! Everything pgfront parses from a client or a server before a session is established:
//! the opening, the StartupMessage and its options, the server's first message, the
//! cancel-key scan. None of it may panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgfront::pg;
use pgfront::proxy::keys::{CancelKeys, KeySniffer};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&data[..8]);
        let _ = pg::classify(head);
    }
    if let Ok(s) = pg::Startup::parse(data) {
        let _ = s.option("pgfront.target");
        let _ = s.get("user");
    }
    let _ = pg::error_sqlstate(data);
    let mut reply = data.to_vec();
    pg::strip_channel_binding(&mut reply);
    let keys = CancelKeys::default();
    let mut sniffer = KeySniffer::new(&keys, "fuzz".into());
    for chunk in data.chunks(7) {
        sniffer.feed(chunk);
    }
});
