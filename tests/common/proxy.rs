//! A TCP proxy the harness puts between the daemon and a store, to make the store slow or
//! unreachable for real (the daemon sees genuine latency, resets and refusals).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Pass,
    /// Adds this much latency to every chunk sent from the client to the server.
    Delay(Duration),
    /// Drops every open connection and resets new ones: the store looks down.
    Down,
    /// The peer vanished without a word (a node lost, a NAT entry expired): open connections
    /// stop carrying anything, for good, and new ones are accepted but never answered.
    /// Nothing is reset, so only the client's own timeouts can notice.
    Silent,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(Mode::Pass);
        let target = target.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let rx = rx.clone();
                let target = target.clone();
                let mode = *rx.borrow();
                match mode {
                    Mode::Down => drop(client),
                    Mode::Silent => {
                        tokio::spawn(swallow(client));
                    }
                    _ => {
                        tokio::spawn(async move {
                            if let Ok(server) = TcpStream::connect(&target).await {
                                pipe(client, server, rx).await;
                            }
                        });
                    }
                }
            }
        });
        Proxy {
            port,
            mode: Arc::new(tx),
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut client: TcpStream, server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let silent = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.into_split();
        let up = forward(cr, sw, Some(mode.clone()));
        let down = forward(sr, cw, None);
        // Resolves to whether the connection goes silent (true) or is cut (false).
        let cut = async move {
            loop {
                match *mode.borrow_and_update() {
                    Mode::Down => return false,
                    Mode::Silent => return true,
                    _ => {}
                }
                if mode.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            silent = cut => silent,
        }
    };
    // The server side is gone either way (its session ends); a silent client side stays open.
    if silent {
        swallow(client).await;
    }
}

/// Copies `from` to `to` until either side closes. With `mode`, each chunk first waits out
/// the current [`Mode::Delay`].
async fn forward(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut mode: Option<watch::Receiver<Mode>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(Mode::Delay(d)) = mode.as_mut().map(|m| *m.borrow_and_update()) {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Holds a connection open, reading and discarding whatever arrives, answering nothing, until
/// the client gives up on it.
async fn swallow(client: TcpStream) {
    forward(client, tokio::io::sink(), None).await;
}

/// Starts a proxy in front of the host:port of `url` (postgres:// or http://) and returns it with
/// the same URL pointing at the proxy.
pub async fn in_front_of(url: &str) -> (Proxy, String) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
    let target = &rest[host_start..authority_end];
    let proxy = Proxy::start(target).await;
    let rewritten = format!(
        "{}{}127.0.0.1:{}{}",
        &url[..after_scheme],
        &rest[..host_start],
        proxy.port,
        &rest[authority_end..]
    );
    (proxy, rewritten)
}
