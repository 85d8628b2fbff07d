//! Cancel keys of the sessions pgfront can read (plain text, or TLS it terminates), so a
//! CancelRequest goes straight to the server that issued the key instead of to every
//! server of the listener.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::cluster::Server;

/// A cancel key as a CancelRequest carries it: process id and secret. Protocol 3.0's keys
/// (eight bytes, every PostgreSQL before 18 and 18 by default) are held inline, so an idle
/// session's key costs no allocation of its own; 3.2's longer secrets are boxed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Short([u8; 8]),
    Long(Box<[u8]>),
}

impl Key {
    fn new(bytes: &[u8]) -> Key {
        match <[u8; 8]>::try_from(bytes) {
            Ok(a) => Key::Short(a),
            Err(_) => Key::Long(bytes.into()),
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        match self {
            Key::Short(a) => a,
            Key::Long(b) => b,
        }
    }
}

// Hashes as the bytes do, so the map can be searched with a slice (`Borrow` requires it).
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<[u8]>::borrow(self).hash(state)
    }
}

/// Key -> the server that issued it.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: Mutex<HashMap<Key, Arc<Server>>>,
}

impl CancelKeys {
    /// The address of the server that issued `key`.
    pub fn lookup(&self, key: &[u8]) -> Option<String> {
        self.lock().get(key).map(|s| s.address.clone())
    }

    fn insert(&self, key: Key, server: Arc<Server>) {
        self.lock().insert(key, server);
    }

    fn remove(&self, key: &Key) {
        let mut map = self.lock();
        map.remove(Borrow::<[u8]>::borrow(key));
        // A burst of sessions grows the table; give the memory back once most have ended.
        let (len, capacity) = (map.len(), map.capacity());
        if capacity > 1024 && len < capacity / 8 {
            map.shrink_to(len * 2);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Server>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Follows the server's messages after authentication began, until ReadyForQuery, and
/// registers the BackendKeyData it carries; unregisters it when the session ends. After
/// ReadyForQuery it is done and costs nothing per message.
pub struct KeySniffer<'a> {
    keys: &'a CancelKeys,
    server: &'a Arc<Server>,
    /// The current message's header (type + length).
    head: crate::pg::MessageHead,
    /// The BackendKeyData body collected so far (allocated only when one arrives).
    key: Vec<u8>,
    /// Body bytes of the current (uninteresting) message still to skip.
    skip: usize,
    /// Body bytes of the current BackendKeyData still to collect.
    want: usize,
    registered: Option<Key>,
    seen: usize,
    /// The code of an Authentication message being read, and how many of its 4 bytes are
    /// still to come (read before the rest of its body is skipped).
    code: [u8; 4],
    code_left: u8,
    /// The server has asked the client to authenticate (a password, a SASL step): the
    /// client's turn. Taken (and cleared) by the copy, which notes when it began.
    pub client_turn: bool,
    pub done: bool,
    /// The session's place among its server's connects in flight, given back at
    /// ReadyForQuery: authentication is over, and the next queued session may connect.
    connecting: Option<&'a Held>,
}

/// A session's connect place, shared by the cancel-key reader (which gives it back at
/// ReadyForQuery) and the copy (which gives it back after `timeout_connect` at the
/// latest, for servers whose startup pgfront cannot follow). Session-local: uncontended.
pub type Held = std::sync::Mutex<Option<crate::balance::Connecting>>;

/// Gives a held connect place back.
pub fn release(held: &Held) {
    drop(held.lock().unwrap_or_else(|p| p.into_inner()).take());
}

/// Give up if the startup phase runs longer than this (nothing to learn, stop looking).
const MAX_STARTUP_BYTES: usize = 256 * 1024;

impl<'a> KeySniffer<'a> {
    pub fn new(keys: &'a CancelKeys, server: &'a Arc<Server>) -> KeySniffer<'a> {
        KeySniffer {
            keys,
            server,
            head: crate::pg::MessageHead::default(),
            key: Vec::new(),
            skip: 0,
            want: 0,
            registered: None,
            seen: 0,
            code: [0; 4],
            code_left: 0,
            client_turn: false,
            done: false,
            connecting: None,
        }
    }

    /// Holds the session's connect place until the startup phase ends.
    pub fn holding(mut self, connecting: &'a Held) -> KeySniffer<'a> {
        self.connecting = Some(connecting);
        self
    }

    /// Feeds bytes the server sent, in order.
    pub fn feed(&mut self, mut data: &[u8]) {
        self.seen += data.len();
        if self.seen > MAX_STARTUP_BYTES {
            self.done = true;
        }
        while !self.done && !data.is_empty() {
            if self.code_left > 0 {
                let at = 4 - self.code_left as usize;
                let n = (self.code_left as usize).min(data.len());
                self.code[at..at + n].copy_from_slice(&data[..n]);
                self.code_left -= n as u8;
                data = &data[n..];
                if self.code_left == 0 {
                    // KerberosV5, cleartext, MD5, GSS, SSPI, SASL and SASLContinue want an
                    // answer; Ok and SASLFinal do not, and neither, often, does GSSContinue
                    // (8): PostgreSQL sends the last GSS token with it, then starts the backend.
                    self.client_turn = matches!(u32::from_be_bytes(self.code), 2 | 3 | 5 | 7 | 9 | 10 | 11);
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            if self.want > 0 {
                let n = self.want.min(data.len());
                self.key.extend_from_slice(&data[..n]);
                self.want -= n;
                data = &data[n..];
                if self.want == 0 {
                    let key = Key::new(&std::mem::take(&mut self.key));
                    if let Some(old) = self.registered.replace(key.clone()) {
                        self.keys.remove(&old);
                    }
                    self.keys.insert(key, Arc::clone(self.server));
                }
                continue;
            }
            let Some((kind, len)) = self.head.take(&mut data) else { continue };
            let len = len as usize;
            if len < 4 {
                self.done = true;
                continue;
            }
            match kind {
                // BackendKeyData: pid + secret (4 bytes in protocol 3.0, up to 256 in 3.2).
                b'K' if (12..=4 + 4 + 256).contains(&len) => {
                    self.want = len - 4;
                    self.key = Vec::with_capacity(self.want);
                }
                // ReadyForQuery: the startup phase is over.
                b'Z' => self.done = true,
                // Authentication: its code says whether the client is to answer.
                b'R' if len >= 8 => {
                    self.code_left = 4;
                    self.skip = len - 8;
                }
                _ => self.skip = len - 4,
            }
        }
        if self.done {
            if let Some(held) = self.connecting.take() {
                release(held);
            }
        }
    }
}

impl Drop for KeySniffer<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.registered.take() {
            self.keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(address: &str) -> Arc<Server> {
        let text = format!(
            "[[node]]\nname = \"n\"\naddress = \"{address}\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ncheck = {{ path = \"/replica\" }}\n"
        );
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let rt = crate::cluster::Runtime::build(Arc::new(config), &tokio_util::sync::CancellationToken::new());
        Arc::clone(&rt.listeners[0].servers[0])
    }

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn stream() -> Vec<u8> {
        let mut s = msg(b'R', &[0, 0, 0, 0]);
        s.extend(msg(b'S', b"server_version\x0015\x00"));
        s.extend(msg(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]));
        s.extend(msg(b'Z', b"I"));
        s.extend(msg(b'T', &[0; 40]));
        s
    }

    #[test]
    fn registers_the_key_until_the_session_ends() {
        let keys = CancelKeys::default();
        let server = server("10.0.0.1:5432");
        {
            let mut s = KeySniffer::new(&keys, &server);
            s.feed(&stream());
            assert!(s.done);
            assert_eq!(keys.lookup(&[0, 0, 0x30, 0x39, 1, 2, 3, 4]).as_deref(), Some("10.0.0.1:5432"));
        }
        assert!(keys.is_empty(), "unregistered when the session ends");
    }

    #[test]
    fn works_byte_by_byte() {
        let keys = CancelKeys::default();
        let server = server("10.0.0.1:5432");
        let mut s = KeySniffer::new(&keys, &server);
        for b in stream() {
            s.feed(&[b]);
        }
        assert_eq!(keys.len(), 1);
        assert!(s.done);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks: Vec<Vec<u8>>) {
            let keys = CancelKeys::default();
            let server = server("10.0.0.1:5432");
            let mut s = KeySniffer::new(&keys, &server);
            for c in &chunks {
                s.feed(c);
            }
        }
    }

    #[test]
    fn an_authentication_request_that_wants_an_answer_is_the_clients_turn() {
        let keys = CancelKeys::default();
        let server = server("10.0.0.1:5432");
        let auth = |code: u32, rest: &[u8]| msg(b'R', &[&code.to_be_bytes()[..], rest].concat());
        // SASL with its mechanisms, fed byte by byte; then SASLContinue; MD5; cleartext.
        for (m, turn) in [
            (auth(10, b"SCRAM-SHA-256\0\0"), true),
            (auth(11, b"r=abc,s=def,i=4096"), true),
            (auth(5, &[1, 2, 3, 4]), true),
            (auth(3, b""), true),
            (auth(12, b"v=xyz"), false),
            (auth(8, b"last token"), false),
            (auth(0, b""), false),
        ] {
            let mut s = KeySniffer::new(&keys, &server);
            for b in &m {
                s.feed(&[*b]);
            }
            assert_eq!(s.client_turn, turn, "{m:?}");
            // What follows is read as messages again.
            s.feed(&msg(b'Z', b"I"));
            assert!(s.done);
        }
    }

    #[test]
    fn long_keys_of_protocol_3_2_and_a_replaced_key() {
        let keys = CancelKeys::default();
        let server = server("10.0.0.1:5432");
        let long: Vec<u8> = (0..36).collect();
        {
            let mut s = KeySniffer::new(&keys, &server);
            let mut m = msg(b'K', &[0, 0, 0, 1, 9, 9, 9, 9]);
            m.extend(msg(b'K', &long));
            s.feed(&m);
            assert_eq!(keys.len(), 1, "the first key was replaced");
            assert_eq!(keys.lookup(&long).as_deref(), Some("10.0.0.1:5432"));
            assert_eq!(keys.lookup(&[0, 0, 0, 1, 9, 9, 9, 9]), None);
        }
        assert!(keys.is_empty());
    }
}
