//! Listening: every graft server accepts through [`nodelay_incoming`].

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

/// The health service name that stays SERVING while the process serves (for liveness
/// probes; readiness probes ask for the overall status, service `""`).
pub const LIVENESS_SERVICE: &str = "liveness";

/// The connections accepted on `listener`, with Nagle's algorithm off.
///
/// tonic's `Server::tcp_nodelay` applies only to listeners it binds itself, not to
/// `serve_with_incoming`. With Nagle on, a small write that follows another unacknowledged
/// one waits for the peer's delayed ACK: 40 ms for a step report, a window update or the
/// end of a ring stream.
pub fn nodelay_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    })
}
