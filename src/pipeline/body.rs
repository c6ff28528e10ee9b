//! A plain request's body on its way to the relay: streamed frame by frame (never held
//! whole), counted against `http.max_body_bytes`, and watched for its end, from which
//! `http.response_timeout` runs (a body that makes no progress for as long is cut: 408).
//!
//! An upload takes as long as the client takes to send it: a timer from the start of the
//! request (the connect timeout, before) cut a 30 MB Blossom upload at 5 s with a 504.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;

/// What the gateway learns of a body while the relay reads it.
#[derive(Default)]
pub(crate) struct BodyWatch {
    /// Data frames handed on so far: progress, for a client that stops sending.
    frames: AtomicU64,
    ended: AtomicBool,
    over: AtomicBool,
    changed: Notify,
}

impl BodyWatch {
    /// Resolves once the whole body has been handed to the relay's connection (at once
    /// for a request without one).
    pub(crate) async fn ended(&self) {
        loop {
            let notified = self.changed.notified();
            if self.ended.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// `true` once the body has ended; `false` once it made no progress for a whole
    /// `period` (a client that stopped sending holds its connection and the relay's, and no
    /// other timer runs while a body streams).
    pub(crate) async fn ended_or_stalled(&self, period: Duration) -> bool {
        loop {
            let seen = self.frames.load(Ordering::Acquire);
            if tokio::time::timeout(period, self.ended()).await.is_ok() {
                return true;
            }
            if self.frames.load(Ordering::Acquire) == seen {
                return false;
            }
        }
    }

    /// Whether the body went over the limit (the request was cut: 413).
    pub(crate) fn over_limit(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// More bytes than `http.max_body_bytes`.
    #[error("request body over {0} bytes")]
    TooLarge(u64),
    /// The client's side failed.
    #[error("reading the request body")]
    Client(#[source] hyper::Error),
}

pin_project_lite::pin_project! {
    /// A client's body as it streams to the relay.
    pub(crate) struct Watched {
        #[pin]
        inner: Incoming,
        seen: u64,
        max: u64,
        watch: Arc<BodyWatch>,
    }
}

impl Watched {
    /// Watches `inner`, allowing at most `max` bytes.
    pub(crate) fn new(inner: Incoming, max: u64) -> (Watched, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch::default());
        if inner.is_end_stream() {
            watch.end();
        }
        let body = Watched {
            inner,
            seen: 0,
            max,
            watch: watch.clone(),
        };
        (body, watch)
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.watch.frames.fetch_add(1, Ordering::Release);
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.max {
                        this.watch.over.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(*this.max))));
                    }
                }
                // A body of known length is not polled past its last byte.
                if this.inner.is_end_stream() {
                    this.watch.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => {
                this.watch.end();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
