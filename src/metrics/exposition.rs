//! The `/metrics` page as a response body written part by part while it
//! is sent: the registered metrics first, then the group series a page of
//! groups at a time, then `# EOF`.
//!
//! Why: built whole, the page (about 450 bytes a group) was a String of
//! 45 MB at 100,000 groups for every scrape, and glibc's malloc (the
//! allocator then) kept much of it afterwards. Written as the client reads, a scrape holds a page of text
//! (about 110 KB), what hyper buffers before it writes (up to about 400
//! KiB) and a list of the groups' keys (two shared IDs, 32 bytes, a
//! group: 3.2 MB at 100,000). Each part is written under the tables' read locks
//! and released before the next, so a slow client never holds the rotator
//! up; the groups listed are those of when the scrape began, each read as
//! it is when its page is written (so one scrape is not one instant).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use hyper::body::{Body, Frame};
use prometheus_client::encoding::text::{encode_eof, encode_registry};

use super::Metrics;
use super::groups::Pages;

/// A part is sent once it holds this much text (or the page ends).
const CHUNK: usize = 64 * 1024;

/// The `/metrics` page, written as it is read.
#[derive(Debug)]
pub struct Exposition {
    metrics: Arc<Metrics>,
    next: Part,
}

#[derive(Debug)]
enum Part {
    Registered,
    Groups(Pages),
    Eof,
    Done,
}

impl Exposition {
    /// The page of `metrics` as they are while it is read.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            next: Part::Registered,
        }
    }

    /// The next part of the page; `None` after `# EOF`.
    pub fn next_chunk(&mut self) -> Option<String> {
        next_chunk(&self.metrics, &mut self.next)
    }
}

/// The whole page of `metrics`, written the same way.
pub(super) fn whole(metrics: &Metrics) -> String {
    let mut next = Part::Registered;
    let mut out = String::new();
    while let Some(part) = next_chunk(metrics, &mut next) {
        out.push_str(&part);
    }
    out
}

/// The part of `metrics`' page after `next`, which it moves on.
fn next_chunk(metrics: &Metrics, next: &mut Part) -> Option<String> {
    let mut out = String::new();
    loop {
        match next {
            Part::Registered => {
                // Writing into a String cannot fail.
                let _ = encode_registry(&mut out, &metrics.registry);
                *next = Part::Groups(metrics.groups.pages());
            }
            Part::Groups(pages) => {
                if !metrics.groups.write_page(pages, &mut out) {
                    *next = Part::Eof;
                }
            }
            Part::Eof => {
                let _ = encode_eof(&mut out);
                *next = Part::Done;
                return Some(out);
            }
            Part::Done => return None,
        }
        if out.len() >= CHUNK {
            return Some(out);
        }
    }
}

impl Body for Exposition {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.get_mut()
                .next_chunk()
                .map(|text| Ok(Frame::data(Bytes::from(text)))),
        )
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.next, Part::Done)
    }
}
