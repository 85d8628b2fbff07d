//! Copy buffers held only while data is in flight, as HAProxy does: an idle session holds
//! none. Plain TCP sources wait for readiness without a buffer and take one from a
//! per-thread pool for the burst; sources that cannot wait that way (TLS) keep theirs.
//! Taking and returning is a thread-local push and pop: no allocation in steady state and
//! no lock on the data path.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Buffer size: PostgreSQL messages are mostly small; 16 KiB keeps bulk COPY efficient.
pub const BUF: usize = 16 * 1024;

/// Buffers a thread keeps for reuse; more are freed.
const POOL: usize = 256;

/// Bytes freed (copy buffers beyond the pools, ended sessions) since the allocator was
/// last asked to give memory back: a burst on thousands of sessions, or thousands of
/// sessions ending, frees megabytes that glibc's malloc would otherwise keep resident.
static FREED: AtomicUsize = AtomicUsize::new(0);

/// `FREED` as the previous look (`TRIM_LOOK` ago) saw it.
static LOOKED: AtomicUsize = AtomicUsize::new(0);

/// How often freed memory is looked at. A mass close is handed back at most two looks
/// after its last session ended (once freeing stopped, the next look sees it so and the one
/// after trims): with a 1 s look, one in seven runs of `perf-bench --cases mem` still read
/// RSS 2.2x of before 2 s after the close (the others 1.01-1.03x). A look is two atomic
/// loads when nothing was freed.
pub const TRIM_LOOK: std::time::Duration = std::time::Duration::from_millis(250);

/// How much must have been freed before memory is handed back while freeing goes on.
const TRIM_AFTER: usize = 1 << 20;

/// How much must have been freed before memory is handed back once freeing stopped.
const TRIM_QUIET: usize = 64 << 10;

/// Looks since the last trim.
static LOOKS: AtomicUsize = AtomicUsize::new(0);

/// While freeing goes on (sessions churning), a trim at most this many looks apart (a
/// second): each gives pages back that new sessions then fault in again.
const BUSY_LOOKS: usize = 4;

/// Whether to hand memory back now, from the bytes freed since the last time, that count
/// at the previous look, and the looks since the last trim: after a megabyte (at most once
/// a second while freeing goes on), or once nothing more was freed for a look (the last
/// sessions of a mass close, or a few hundred ending, free less than a megabyte after the
/// last trim, which would otherwise stay resident until more end).
fn due(freed: usize, at_last_look: usize, looks: usize) -> bool {
    (freed >= TRIM_AFTER && looks >= BUSY_LOOKS) || (freed >= TRIM_QUIET && freed == at_last_look)
}

/// Hands freed memory back to the system if enough was freed (called from a control task
/// every `TRIM_LOOK`; nothing happens while traffic is steady).
pub fn trim() {
    let freed = FREED.load(Ordering::Relaxed);
    let at_last_look = LOOKED.swap(freed, Ordering::Relaxed);
    let looks = LOOKS.fetch_add(1, Ordering::Relaxed) + 1;
    if !due(freed, at_last_look, looks) {
        return;
    }
    // What was freed meanwhile counts towards the next time.
    FREED.fetch_sub(freed, Ordering::Relaxed);
    LOOKED.store(0, Ordering::Relaxed);
    LOOKS.store(0, Ordering::Relaxed);
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Notes memory freed outside the buffer pools (a session's task and registrations when it
/// ends), so that many ended sessions hand their memory back as a burst does.
pub fn freed(bytes: usize) {
    FREED.fetch_add(bytes, Ordering::Relaxed);
}

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take() -> Box<[u8]> {
    FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten().unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
}

fn give(buf: Box<[u8]>) {
    // During thread teardown the pool may be gone: the buffer is simply freed.
    let kept = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < POOL {
            f.push(buf);
            true
        } else {
            false
        }
    });
    if kept != Ok(true) {
        FREED.fetch_add(BUF, Ordering::Relaxed);
    }
}

/// A buffer slot of one copy direction; returns its buffer to the pool when dropped.
#[derive(Default)]
pub struct Slot {
    buf: Option<Box<[u8]>>,
    /// The last read did not fill the buffer: the socket was drained, so the next read
    /// waits for readiness (with no buffer held) instead of trying and failing first.
    drained: bool,
}

impl Slot {
    /// The bytes of the last read.
    pub fn filled(&self, n: usize) -> &[u8] {
        self.buf.as_deref().map_or(&[][..], |b| &b[..n])
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give(b);
        }
    }
}

/// Where a copy direction reads from.
pub trait Source {
    /// Reads the next chunk into `slot`, taking a buffer when there is something to read.
    /// A poll function, not an async one: a session's future holds no read future.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, slot: &mut Slot) -> Poll<io::Result<usize>>;
}

/// One read into `buf` (tokio's read clears the socket's readiness after a short read:
/// epoll is edge triggered, and a short read means the socket was drained, so no read is
/// made just to learn that nothing is left).
fn poll_read_into<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(r).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl Source for tokio::net::tcp::ReadHalf<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>, slot: &mut Slot) -> Poll<io::Result<usize>> {
        if slot.drained {
            // Drained by the last read: give the buffer back until the next burst.
            if let Some(b) = slot.buf.take() {
                give(b);
            }
            slot.drained = false;
        }
        if let Some(buf) = slot.buf.as_mut() {
            // The last read filled the buffer: more may be waiting (a bulk transfer), or the
            // message ended exactly at the buffer's end. Look without waiting, so an idle
            // session never waits while holding a buffer.
            match self.as_ref().try_read(buf) {
                Ok(n) => {
                    slot.drained = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(b) = slot.buf.take() {
                        give(b);
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Idle: wait with no buffer held.
        ready!(self.as_ref().poll_read_ready(cx))?;
        let buf = slot.buf.get_or_insert_with(take);
        match poll_read_into(self, cx, buf) {
            Poll::Ready(Ok(n)) => {
                slot.drained = n < buf.len();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // The readiness was stale (the read cleared it and registered for the next):
                // wait without a buffer.
                if let Some(b) = slot.buf.take() {
                    give(b);
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncRead + Send> Source for tokio::io::ReadHalf<T> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>, slot: &mut Slot) -> Poll<io::Result<usize>> {
        let buf = slot.buf.get_or_insert_with(take);
        poll_read_into(self, cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_reuses_buffers() {
        let a = take();
        let ptr = a.as_ptr();
        give(a);
        let again = take();
        assert_eq!(again.as_ptr(), ptr);
    }

    #[test]
    fn memory_is_handed_back_once_freeing_stops_even_below_a_megabyte() {
        // 450 sessions ended (2 KiB each counted), and nothing since the last look.
        let freed = 450 * 2048;
        assert!(!due(freed, 0, 9), "still freeing: wait for the megabyte or the end");
        assert!(due(freed, freed, 2), "freeing stopped below a megabyte: handed back");
        assert!(due(TRIM_AFTER, 0, BUSY_LOOKS), "a megabyte: handed back while freeing goes on");
        assert!(!due(TRIM_AFTER, 0, 1), "while sessions churn: at most once a second");
        assert!(due(TRIM_AFTER, TRIM_AFTER, 1), "but at once when freeing stopped");
        assert!(!due(0, 0, 9) && !due(4096, 4096, 9), "a session or two: not worth a trim yet");
    }
}
