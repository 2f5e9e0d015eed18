//! Connections the sandbox can cut mid-request, for the "dropped
//! connection" faults.
//!
//! hyper gives a handler no way to close its connection, so the sandbox's
//! listener wraps every accepted socket in a [`KillableIo`] whose
//! [`ConnKill`] switch reaches the handler as axum connect info. Once a
//! handler flips the switch, every later read or write on that socket fails:
//! hyper cannot write the response and closes the connection, and the client
//! sees it closed with no answer, as after a network failure.
//!
//! Depends only on tokio and axum's `Listener` trait.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::accept::AcceptBackoff;

/// The switch that cuts one connection. Clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct ConnKill(Arc<AtomicBool>);

impl ConnKill {
    /// Makes every later IO on the connection fail.
    pub fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for ConnKill {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().kill.clone()
    }
}

/// A TCP listener whose connections carry a [`ConnKill`]. Failed accepts
/// (out of descriptors) back off as the daemon's listeners do
/// ([`AcceptBackoff`]: 10 ms doubling to 1 s, one log line per streak).
#[derive(Debug)]
pub struct KillableListener {
    listener: TcpListener,
    backoff: AcceptBackoff,
    /// Never cancelled: axum's serve loop owns shutdown.
    never: CancellationToken,
}

impl KillableListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            backoff: AcceptBackoff::new("sandbox"),
            never: CancellationToken::new(),
        }
    }
}

impl Listener for KillableListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let listener = &self.listener;
        loop {
            // `never` is never cancelled, so this only ends with a stream.
            if let Some((stream, addr)) =
                self.backoff.accept(|| listener.accept(), &self.never).await
            {
                // Small JSON answers: don't let Nagle delay them.
                let _ = stream.set_nodelay(true);
                let io = KillableIo {
                    inner: stream,
                    kill: ConnKill::default(),
                };
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// An accepted socket with a kill switch.
#[derive(Debug)]
pub struct KillableIo {
    inner: TcpStream,
    kill: ConnKill,
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "sandbox fault: connection dropped",
    )
}

impl AsyncRead for KillableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.kill.is_killed() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
