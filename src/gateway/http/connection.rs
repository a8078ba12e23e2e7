//! Noticing that an HTTP client went away: actix-web keeps running a handler whose client has
//! closed its connection, so a synchronous call watches the connection's socket itself.
//!
//! [`on_connect`] (registered with `HttpServer::on_connect`) keeps each connection's socket
//! descriptor in its data; `client_gone` peeks at it while a handler waits. What waits for a
//! run holds a [`CancelOnDrop`]: dropped before the answer (a streamed answer's body that actix
//! drops when its client goes, a handler that gives up), it cancels the run.

use std::time::Duration;

use actix_web::HttpRequest;

use crate::conversation::{msg, Handle};

/// Cancels a synchronous run if its HTTP request goes away before the answer.
pub(super) struct CancelOnDrop {
    pub(super) addr: Option<Handle>,
    pub(super) owner: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(a) = self.addr.take() {
            a.do_send(msg::Cancel {
                owner: self.owner.clone(),
            });
        }
    }
}

/// The file descriptor of a connection's socket, kept in the connection's data to notice a
/// client that goes away while a synchronous run is pending (see [`on_connect`]). Only the
/// number: a duplicate per connection would double the descriptors of every idle socket.
#[derive(Clone, Copy)]
pub struct ConnFd(std::os::fd::RawFd);

/// `HttpServer::on_connect` hook: remember the TCP socket's descriptor.
pub fn on_connect(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsRawFd;
    if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(ConnFd(sock.as_raw_fd()));
    }
}

/// How often a waiting handler peeks at its client's socket.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Resolves when the request's client has closed its connection (checked every
/// [`CHECK_EVERY`] by peeking at the socket: end-of-stream means gone). Never resolves if that
/// cannot be known. The first check comes after one period: a call answered sooner (most
/// automated calls take milliseconds) makes no system call for it.
pub(super) async fn client_gone(req: &HttpRequest) {
    let Some(ConnFd(fd)) = req.conn_data::<ConnFd>().copied() else {
        return std::future::pending().await;
    };
    tokio::time::sleep(CHECK_EVERY).await;
    // SAFETY: a handler runs inside the HTTP dispatcher that owns this connection's socket, so
    // while the request is being handled the descriptor is open and is this connection's. The
    // duplicate made here is owned, and lives only as long as this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let Ok(owned) = borrowed.try_clone_to_owned() else {
        return std::future::pending().await;
    };
    let socket = std::net::TcpStream::from(owned);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let mut buf = [0u8; 1];
        // The socket is non-blocking (tokio's; the flag is shared by the duplicate).
        match socket.peek(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
