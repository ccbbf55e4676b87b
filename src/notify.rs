//! systemd's readiness protocol (`Type=notify`): a datagram to `$NOTIFY_SOCKET`.
//! A no-op when the variable is unset, so the same binary runs anywhere.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends a state line such as `READY=1` or `STOPPING=1`. Failures are logged, never fatal.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = (|| -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let addr = match path.strip_prefix('@') {
            // A leading '@' names a socket in the abstract namespace.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    match result {
        Ok(()) => tracing::debug!(state, "notified systemd"),
        Err(e) => tracing::warn!(state, error = %e, "could not notify systemd"),
    }
}
