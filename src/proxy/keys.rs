//! Cancel keys of the sessions pgfront can read (plain text, or TLS it terminates), so a
//! CancelRequest goes straight to the server that issued the key instead of to every
//! server of the listener.

use std::collections::HashMap;
use std::sync::Mutex;

/// Key (process id and secret, as a CancelRequest carries them) -> server address.
#[derive(Debug, Default)]
pub struct CancelKeys {
    map: Mutex<HashMap<Vec<u8>, String>>,
}

impl CancelKeys {
    pub fn lookup(&self, key: &[u8]) -> Option<String> {
        self.lock().get(key).cloned()
    }

    fn insert(&self, key: Vec<u8>, server: String) {
        self.lock().insert(key, server);
    }

    fn remove(&self, key: &[u8]) {
        self.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, String>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Follows the server's messages after authentication began, until ReadyForQuery, and
/// registers the BackendKeyData it carries; unregisters it when the session ends. After
/// ReadyForQuery it is done and costs nothing per message.
pub struct KeySniffer<'a> {
    keys: &'a CancelKeys,
    server: String,
    /// Bytes of the current message header (type + length) or of a BackendKeyData body.
    buf: Vec<u8>,
    /// Body bytes of the current (uninteresting) message still to skip.
    skip: usize,
    /// Body bytes of the current BackendKeyData still to collect.
    want: usize,
    registered: Option<Vec<u8>>,
    seen: usize,
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
    pub fn new(keys: &'a CancelKeys, server: String) -> KeySniffer<'a> {
        KeySniffer {
            keys,
            server,
            buf: Vec::with_capacity(16),
            skip: 0,
            want: 0,
            registered: None,
            seen: 0,
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
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            if self.want > 0 {
                let n = self.want.min(data.len());
                self.buf.extend_from_slice(&data[..n]);
                self.want -= n;
                data = &data[n..];
                if self.want == 0 {
                    let key = std::mem::take(&mut self.buf);
                    self.keys.insert(key.clone(), self.server.clone());
                    self.registered = Some(key);
                }
                continue;
            }
            let n = (5 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() < 5 {
                continue;
            }
            let kind = self.buf[0];
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            self.buf.clear();
            if len < 4 {
                self.done = true;
                continue;
            }
            match kind {
                // BackendKeyData: pid + secret (4 bytes in protocol 3.0, up to 256 in 3.2).
                b'K' if (12..=4 + 4 + 256).contains(&len) => self.want = len - 4,
                // ReadyForQuery: the startup phase is over.
                b'Z' => self.done = true,
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
        {
            let mut s = KeySniffer::new(&keys, "10.0.0.1:5432".into());
            s.feed(&stream());
            assert!(s.done);
            assert_eq!(keys.lookup(&[0, 0, 0x30, 0x39, 1, 2, 3, 4]).as_deref(), Some("10.0.0.1:5432"));
        }
        assert!(keys.is_empty(), "unregistered when the session ends");
    }

    #[test]
    fn works_byte_by_byte() {
        let keys = CancelKeys::default();
        let mut s = KeySniffer::new(&keys, "a".into());
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
            let mut s = KeySniffer::new(&keys, "a".into());
            for c in &chunks {
                s.feed(c);
            }
        }
    }
}
