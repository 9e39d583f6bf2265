//! An in-test TCP proxy per node, to cut, black-hole or delay the traffic of one directed link
//! between nodes, like network partitions made with iptables but without iptables or root.
//!
//! # How a test wires it
//!
//! Node `i` runs on its own loopback IP (127.0.0.11, 127.0.0.12, ...) and binds its outgoing
//! peer connections to that IP. Its *advertised* peer address is a proxy, started with
//! [`Network::proxy`], that forwards every accepted connection to the node's real peer
//! listener. The proxy in front of node `to` learns the sending node from the accepted
//! connection's source IP, through the map given to [`Network::new`]. All the proxies of a
//! test share one [`Network`], which holds the fault of every directed link and its counters.
//!
//! # Directions
//!
//! A fault set with [`Network::set`]`(from, to, ..)` applies to the bytes that node `from`
//! sends to node `to`, on every connection between the two, whichever side opened it:
//!
//! * a connection opened by `from` through `to`'s proxy: its client-to-server direction;
//! * a connection opened by `to` through `from`'s proxy: its server-to-client direction.
//!
//! The reverse direction of each connection belongs to the link `to -> from`, which keeps its
//! own fault. Faults apply at once to existing connections, not only to new ones: each chunk
//! read looks the current fault up, and every connection task also wakes up on each change.
//!
//! # Unknown sources
//!
//! A connection whose source IP is not in the map (a client, the CLI, a node that did not bind
//! its source address) comes from "unknown": it is forwarded and never faulted, whatever the
//! links' faults, and it counts in no [`LinkStats`].
//!
//! # Healing after a black hole
//!
//! Bytes discarded in the middle of a stream corrupt it (an HTTP/2 connection that lost a
//! frame is useless), whereas a real partition heals and TCP retransmits what was lost. The
//! proxy emulates the retransmission by forcing a reconnection: when the fault of a link
//! stops being [`Fault::Drop`] (set to [`Fault::None`], [`Fault::Delay`], or [`Network::heal`]),
//! every connection that discarded bytes (or an end-of-stream) of that link is closed with a
//! TCP reset, so that gRPC clients reconnect. Connections that lost nothing (idle during the
//! black hole) are kept.
//!
//! # Bounds and ownership
//!
//! Each direction of a connection reads chunks of at most [`CHUNK_SIZE`] bytes and holds at
//! most [`QUEUE_CHUNKS`] of them in flight (the delay queue), so a slow reader pushes back
//! on the sender as TCP would. A proxy serves at most [`MAX_CONNECTIONS`] connections at a
//! time and resets the ones beyond. Every task a proxy spawns is owned by its
//! [`ProxyHandle`]: stopping it ([`ProxyHandle::stop`], or dropping it) closes the listener
//! and ends every connection task, which closes their sockets.
//!
//! The proxy listens and connects on loopback addresses only ([`Network::proxy`] refuses
//! others).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The largest chunk one direction of a connection reads (and forwards) at a time.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// How many chunks one direction of a connection holds between reading and writing them
/// (waiting for their [`Fault::Delay`], or for a slow receiver). Once it is full, that
/// direction stops reading until the receiver catches up.
pub const QUEUE_CHUNKS: usize = 8;

/// The most connections one proxy serves at a time; it resets the ones beyond.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a proxy waits for its target to accept a forwarded connection before resetting
/// the client's.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The fault of one directed link (the bytes one node sends to another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Bytes pass.
    #[default]
    None,
    /// Black hole: the TCP connections stay open but their bytes in this direction are
    /// silently discarded (and counted in [`LinkStats::dropped_bytes`]); an end-of-stream is
    /// discarded too. That is what a partition looks like to TCP: no reset, just silence. New
    /// connections are accepted (the kernel completes the handshake) and black-holed as
    /// well. When the fault is lifted, the connections that lost something are reset (see the
    /// [module documentation](self)).
    Drop,
    /// Every chunk in this direction is delivered this long after the proxy read it, in
    /// order. The other direction is not slowed.
    Delay(Duration),
    /// Existing connections carrying this link (in either direction of the connection) are
    /// reset (`SO_LINGER` 0 on both of the proxy's sockets), and new ones are accepted and at
    /// once reset, for as long as the fault stays.
    Reset,
}

/// Counters of one directed link since the [`Network`] was made; they never decrease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Bytes of the link delivered to their receiver.
    pub forwarded_bytes: u64,
    /// Bytes of the link discarded by [`Fault::Drop`].
    pub dropped_bytes: u64,
    /// Connections the proxy closed or refused because of this link's fault: existing
    /// connections reset and new ones refused under [`Fault::Reset`], and connections reset
    /// because they had lost bytes to a [`Fault::Drop`] that was lifted.
    pub resets: u64,
}

/// The fault of a link as its connections see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct LinkState {
    fault: Fault,
    /// How many times [`Fault::Reset`] was set: a connection opened before the last one is
    /// reset even if the fault was lifted again before it looked.
    reset_epoch: u64,
}

/// One directed link: its fault (watched by the connections carrying it) and its counters.
#[derive(Debug)]
struct Link {
    state: watch::Sender<LinkState>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    resets: AtomicU64,
}

impl Link {
    fn new() -> Link {
        Link {
            state: watch::Sender::new(LinkState::default()),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        }
    }

    fn state(&self) -> LinkState {
        *self.state.borrow()
    }
}

#[derive(Debug)]
struct Inner {
    /// Source IP (canonical form) -> node index.
    nodes: HashMap<IpAddr, usize>,
    /// Directed links `(from, to)`, made on first use and never removed.
    links: Mutex<HashMap<(usize, usize), Arc<Link>>>,
}

impl Inner {
    fn links(&self) -> MutexGuard<'_, HashMap<(usize, usize), Arc<Link>>> {
        // No code panics while holding the lock; tolerate poisoning anyway.
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self, from: usize, to: usize) -> Arc<Link> {
        self.links()
            .entry((from, to))
            .or_insert_with(|| Arc::new(Link::new()))
            .clone()
    }
}

/// The faults and counters of every directed link between the nodes of a test, and who a
/// connection's source IP belongs to. Shared by all the proxies of a test; cheap to clone
/// (clones share everything).
#[derive(Debug, Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl Network {
    /// A network of the given nodes: `(node index, the IP its outgoing connections come
    /// from)`. A node may have several IPs. Every link starts with [`Fault::None`].
    ///
    /// # Panics
    ///
    /// If one IP is given to two different nodes.
    pub fn new(nodes: &[(usize, IpAddr)]) -> Network {
        let mut map = HashMap::new();
        for &(node, ip) in nodes {
            let ip = ip.to_canonical();
            if let Some(other) = map.insert(ip, node) {
                assert_eq!(other, node, "{ip} is given to nodes {other} and {node}");
            }
        }
        Network {
            inner: Arc::new(Inner {
                nodes: map,
                links: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A network of `n` nodes where node `i` has the loopback IP 127.0.0.(11 + i), as
    /// [`Cluster::start_proxied`](crate::Cluster::start_proxied) places them.
    pub fn loopback(n: usize) -> Network {
        Network::new(&(0..n).map(|i| (i, loopback_ip(i))).collect::<Vec<_>>())
    }

    /// The node a source IP belongs to (`None`: unknown, never faulted).
    pub fn node_of(&self, ip: IpAddr) -> Option<usize> {
        self.inner.nodes.get(&ip.to_canonical()).copied()
    }

    /// Starts the proxy in front of node `to`: it listens on `listen` (port 0 picks a free
    /// port: see [`ProxyHandle::local_addr`]) and forwards each accepted connection to
    /// `target`, the node's real listener. The connections it accepts from node `n` carry the
    /// link `n -> to` from client to server and `to -> n` from server to client.
    ///
    /// Both addresses must be loopback addresses (`InvalidInput` otherwise). Returns once the
    /// proxy listens; it serves until its handle is stopped or dropped.
    pub async fn proxy(
        &self,
        to: usize,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> io::Result<ProxyHandle> {
        self.start_proxy(to, listen, target, MAX_CONNECTIONS).await
    }

    async fn start_proxy(
        &self,
        to: usize,
        listen: SocketAddr,
        target: SocketAddr,
        max_connections: usize,
    ) -> io::Result<ProxyHandle> {
        for (what, addr) in [("listen", listen), ("target", target)] {
            if !addr.ip().to_canonical().is_loopback() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the test proxy only uses loopback addresses; {what} is {addr}"),
                ));
            }
        }
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let limit = Arc::new(Semaphore::new(max_connections));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            self.inner.clone(),
            listener,
            to,
            target,
            limit.clone(),
            stop_rx,
        ));
        Ok(ProxyHandle {
            to,
            local_addr,
            target,
            max_connections,
            limit,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Sets the fault of the directed link `from -> to` (the bytes `from` sends to `to`, on
    /// every connection between them, whichever side opened it: see the
    /// [module documentation](self)). It applies at once to existing connections.
    pub fn set(&self, from: usize, to: usize, fault: Fault) {
        self.inner.link(from, to).state.send_modify(|st| {
            if fault == Fault::Reset {
                st.reset_epoch += 1;
            }
            st.fault = fault;
        });
    }

    /// The current fault of the directed link `from -> to`.
    pub fn fault(&self, from: usize, to: usize) -> Fault {
        self.inner.link(from, to).state().fault
    }

    /// Sets every link back to [`Fault::None`] (which resets the connections that lost bytes
    /// to a [`Fault::Drop`]).
    pub fn heal(&self) {
        let links: Vec<Arc<Link>> = self.inner.links().values().cloned().collect();
        for link in links {
            link.state.send_modify(|st| st.fault = Fault::None);
        }
    }

    /// Partitions the listed nodes into `groups`: between two nodes of different groups both
    /// directions get [`Fault::Drop`]; between two nodes of one group both directions get
    /// [`Fault::None`]. So a partition defines every link among the listed nodes, whatever
    /// earlier calls set, and successive partitions do not accumulate. The links of a node
    /// listed in no group keep their faults (a node absent from the list is neither cut nor
    /// healed). [`Network::heal`] ends the partition.
    ///
    /// # Panics
    ///
    /// If a node is listed in two groups.
    pub fn partition(&self, groups: &[&[usize]]) {
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            for &node in *members {
                if let Some(other) = group_of.insert(node, g) {
                    assert_eq!(other, g, "node {node} is in groups {other} and {g}");
                }
            }
        }
        for (&a, &ga) in &group_of {
            for (&b, &gb) in &group_of {
                if a != b {
                    let fault = if ga == gb { Fault::None } else { Fault::Drop };
                    self.set(a, b, fault);
                }
            }
        }
    }

    /// The counters of the directed link `from -> to` since the network was made.
    pub fn stats(&self, from: usize, to: usize) -> LinkStats {
        let link = self.inner.link(from, to);
        LinkStats {
            forwarded_bytes: link.forwarded.load(Ordering::Relaxed),
            dropped_bytes: link.dropped.load(Ordering::Relaxed),
            resets: link.resets.load(Ordering::Relaxed),
        }
    }
}

/// A running proxy. Stopping it ([`ProxyHandle::stop`], or dropping the handle) closes its
/// listener and every connection it serves.
#[derive(Debug)]
pub struct ProxyHandle {
    to: usize,
    local_addr: SocketAddr,
    target: SocketAddr,
    max_connections: usize,
    limit: Arc<Semaphore>,
    /// Dropping it tells the accept loop to stop.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The address the proxy listens on (the node's advertised address).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The node it stands in front of.
    pub fn node(&self) -> usize {
        self.to
    }

    /// How many connections it serves now.
    pub fn active_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.limit.available_permits())
    }

    /// Stops the proxy and returns once its listener is closed and all its connection tasks
    /// have ended (their sockets closed).
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            // The accept loop only ends by this signal; a panic in it has nothing to report.
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    /// Tells the proxy to stop; it closes its listener and connections shortly after (use
    /// [`ProxyHandle::stop`] to wait for that).
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// Accepts connections until told to stop, then closes the listener and ends every
/// connection task (it owns them all in a `JoinSet`).
async fn accept_loop(
    net: Arc<Inner>,
    listener: TcpListener,
    to: usize,
    target: SocketAddr,
    limit: Arc<Semaphore>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Sent or dropped: either way, stop.
            _ = &mut stop => break,
            // Reap finished connection tasks, so that the set stays as small as the load.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(conn) = admit(&net, stream, peer, to, &limit) {
                        conns.spawn(conn.serve(target));
                    }
                }
                Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// An accepted connection about to be served.
struct Conn {
    client: TcpStream,
    /// Client to server.
    up: Side,
    /// Server to client.
    down: Side,
    _permit: OwnedSemaphorePermit,
}

/// Decides the fate of an accepted connection: `None` if it was refused (reset).
fn admit(
    net: &Inner,
    client: TcpStream,
    peer: SocketAddr,
    to: usize,
    limit: &Arc<Semaphore>,
) -> Option<Conn> {
    let (up, down) = match net.nodes.get(&peer.ip().to_canonical()) {
        Some(&from) => (Side::new(net.link(from, to)), Side::new(net.link(to, from))),
        None => (Side::unfaulted(), Side::unfaulted()),
    };
    for side in [&up, &down] {
        if let Some(link) = &side.link {
            if link.state().fault == Fault::Reset {
                link.resets.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                return None;
            }
        }
    }
    let Ok(permit) = limit.clone().try_acquire_owned() else {
        reset(&client);
        return None;
    };
    Some(Conn {
        client,
        up,
        down,
        _permit: permit,
    })
}

/// Makes the close of `stream` (when it is dropped) a TCP reset rather than a FIN.
fn reset(stream: &TcpStream) {
    // If the option cannot be set the socket just closes normally.
    let _ = stream.set_zero_linger();
}

/// Why a connection ended early.
enum Close {
    /// The proxy closes it because of this link's fault (`Reset`, or a lifted `Drop` after
    /// bytes were lost): both sockets are reset.
    Fault(Arc<Link>),
    /// A socket failed: both are closed.
    Io,
}

/// One direction of one connection: the link it carries (`None`: unknown source, never
/// faulted) and whether it lost bytes to a black hole.
struct Side {
    link: Option<Arc<Link>>,
    /// The link's `reset_epoch` when the connection was accepted.
    start_epoch: u64,
    tainted: AtomicBool,
}

impl Side {
    fn new(link: Arc<Link>) -> Side {
        let start_epoch = link.state().reset_epoch;
        Side {
            link: Some(link),
            start_epoch,
            tainted: AtomicBool::new(false),
        }
    }

    fn unfaulted() -> Side {
        Side {
            link: None,
            start_epoch: 0,
            tainted: AtomicBool::new(false),
        }
    }

    /// The current fault of this direction, or why the connection must be closed now.
    fn check(&self) -> Result<Fault, Close> {
        let Some(link) = &self.link else {
            return Ok(Fault::None);
        };
        let st = link.state();
        let reset = st.fault == Fault::Reset || st.reset_epoch != self.start_epoch;
        let healed = st.fault != Fault::Drop && self.tainted.load(Ordering::SeqCst);
        if reset || healed {
            return Err(Close::Fault(link.clone()));
        }
        Ok(st.fault)
    }

    /// Counts `n` discarded bytes (0 for a discarded end-of-stream) and marks the connection
    /// as corrupt. Then checks again: if the black hole was lifted meanwhile, the connection
    /// must go now (the watcher may have looked before it was marked).
    fn discard(&self, n: usize) -> Result<(), Close> {
        if let Some(link) = &self.link {
            link.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.tainted.store(true, Ordering::SeqCst);
        self.check().map(|_| ())
    }

    fn forwarded(&self, n: usize) {
        if let Some(link) = &self.link {
            link.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Conn {
    /// Connects to the target and pumps both directions until both ends closed, a socket
    /// failed, or a fault closes the connection.
    async fn serve(self, target: SocketAddr) {
        let Conn {
            mut client,
            up,
            down,
            _permit,
        } = self;
        let mut server =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(server)) => server,
                _ => {
                    reset(&client);
                    return;
                }
            };
        // Chunks are forwarded as they come; do not let Nagle hold them back.
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let end = {
            let (client_r, client_w) = client.split();
            let (server_r, server_w) = server.split();
            tokio::select! {
                pumped = async {
                    tokio::try_join!(pump(client_r, server_w, &up), pump(server_r, client_w, &down))
                } => pumped.map(|_| ()),
                close = watch_faults(&up, &down) => Err(close),
            }
        };
        if let Err(Close::Fault(link)) = end {
            link.resets.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            reset(&server);
        }
    }
}

/// Waits until a change of either link's fault means the connection must close (so that
/// idle connections are reset or healed too, not only those that carry bytes).
async fn watch_faults(up: &Side, down: &Side) -> Close {
    let (Some(up_link), Some(down_link)) = (&up.link, &down.link) else {
        // An unknown source: never faulted.
        return std::future::pending().await;
    };
    let mut up_rx = up_link.state.subscribe();
    let mut down_rx = down_link.state.subscribe();
    loop {
        // Checked after subscribing: a change made in between is seen here, later ones
        // wake the select. `Side::check` compares with the epoch seen at accept time, so
        // a Reset set (and lifted) since then is not missed either.
        for side in [up, down] {
            if let Err(close) = side.check() {
                return close;
            }
        }
        // The senders live in the links this connection holds, so `changed` cannot fail;
        // should it, stop watching rather than spin.
        tokio::select! {
            changed = up_rx.changed() => if changed.is_err() {
                return std::future::pending().await;
            },
            changed = down_rx.changed() => if changed.is_err() {
                return std::future::pending().await;
            },
        }
    }
}

/// A chunk read and when to deliver it; `None` data is the end-of-stream (a FIN to pass on).
type Chunk = (Instant, Option<Vec<u8>>);

/// One direction of a connection: a reader that applies the fault to each chunk it reads
/// and queues what passes (stamped with its delivery time), and a writer that delivers the
/// queue in order, each chunk at its time. Ends when the end-of-stream was passed on (or
/// black-holed), or with the reason the connection must close.
async fn pump(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, side: &Side) -> Result<(), Close> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let read = from.read(&mut buf).await;
            let fault = side.check()?;
            let n = match read {
                Ok(n) => n,
                // A black hole hides the failure too: this direction just goes silent.
                Err(_) if fault == Fault::Drop => return side.discard(0),
                Err(_) => return Err(Close::Io),
            };
            if fault == Fault::Drop {
                side.discard(n)?;
                if n == 0 {
                    // The end-of-stream is lost as well.
                    return Ok(());
                }
                continue;
            }
            let at = match fault {
                Fault::Delay(d) => Instant::now() + d,
                _ => Instant::now(),
            };
            let data = (n > 0).then(|| buf[..n].to_vec());
            // The writer only goes away after a failure it reports itself.
            tx.send((at, data)).await.map_err(|_| Close::Io)?;
            if n == 0 {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            // The fault may have changed while the chunk waited.
            let fault = side.check()?;
            match data {
                Some(data) if fault == Fault::Drop => side.discard(data.len())?,
                Some(data) => {
                    to.write_all(&data).await.map_err(|_| Close::Io)?;
                    side.forwarded(data.len());
                }
                None if fault == Fault::Drop => side.discard(0)?,
                None => {
                    // Half-close: the other direction may still carry bytes.
                    let _ = to.shutdown().await;
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Node `i`'s own loopback IP in a proxied cluster: 127.0.0.(11 + i).
pub fn loopback_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 11 + i as u8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::net::Ipv4Addr;
    use tokio::net::TcpSocket;

    /// The generous bound of every await that should complete.
    const PATIENCE: Duration = Duration::from_secs(10);
    /// How long a test waits to conclude that nothing arrives.
    const QUIET: Duration = Duration::from_millis(300);

    const N1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
    const N2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);
    const N3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 23);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 29);

    fn network() -> Network {
        Network::new(&[(1, N1.into()), (2, N2.into()), (3, N3.into())])
    }

    fn any_port() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    async fn within<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(PATIENCE, f).await.expect("timed out")
    }

    /// A backend that hands each accepted connection's socket to the test.
    async fn backend() -> (SocketAddr, mpsc::Receiver<TcpStream>) {
        let listener = TcpListener::bind(any_port()).await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                if tx.send(s).await.is_err() {
                    break;
                }
            }
        });
        (addr, rx)
    }

    /// A proxy for node `to` in front of a fresh backend.
    async fn proxied(net: &Network, to: usize) -> (ProxyHandle, mpsc::Receiver<TcpStream>) {
        let (addr, rx) = backend().await;
        let proxy = net.proxy(to, any_port(), addr).await.expect("proxy");
        (proxy, rx)
    }

    async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from((src, 0)))
            .expect("bind source IP");
        within(sock.connect(to)).await.expect("connect")
    }

    /// Connects from `src` to `to` and expects the connection to be refused: the kernel
    /// completes the handshake, the proxy resets it at once, so either `connect` already
    /// fails or the first read does.
    async fn expect_refused(src: Ipv4Addr, to: SocketAddr) {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from((src, 0)))
            .expect("bind source IP");
        if let Ok(mut s) = within(sock.connect(to)).await {
            expect_closed(&mut s).await;
        }
    }

    /// Connects from `src` through `proxy` and returns both ends.
    async fn pair(
        src: Ipv4Addr,
        proxy: &ProxyHandle,
        backend: &mut mpsc::Receiver<TcpStream>,
    ) -> (TcpStream, TcpStream) {
        let client = connect_from(src, proxy.local_addr()).await;
        let server = within(backend.recv()).await.expect("backend accepted");
        (client, server)
    }

    async fn send(s: &mut TcpStream, data: &[u8]) {
        within(s.write_all(data)).await.expect("write");
    }

    async fn expect_bytes(s: &mut TcpStream, want: &[u8]) {
        let mut buf = vec![0u8; want.len()];
        within(s.read_exact(&mut buf)).await.expect("read");
        assert_eq!(buf, want);
    }

    async fn expect_silence(s: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(QUIET, s.read(&mut buf)).await;
        assert!(got.is_err(), "expected silence, got {got:?}");
    }

    /// Reads until end-of-stream or an error (a reset); panics if that does not come.
    async fn expect_closed(s: &mut TcpStream) {
        let mut buf = [0u8; 1024];
        within(async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    async fn eventually(mut cond: impl FnMut() -> bool) {
        within(async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_pass_both_ways() {
        let net = network();
        let (proxy, mut backend) = proxied(&net, 2).await;
        let (mut client, mut server) = pair(N1, &proxy, &mut backend).await;
        // An echo server behind the proxy.
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = server.split();
            tokio::io::copy(&mut r, &mut w).await.expect("echo");
        });
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, mut w) = client.split();
        let write = async {
            w.write_all(&data).await.expect("write");
            // Half-close passes through: the echo ends, and its end-of-stream comes back.
            w.shutdown().await.expect("shutdown");
        };
        let mut back = Vec::new();
        let read = async { r.read_to_end(&mut back).await.expect("read") };
        within(async { tokio::join!(write, read) }).await;
        assert_eq!(back, data);
        within(echo).await.expect("echo task");
        let n = data.len() as u64;
        assert_eq!(net.stats(1, 2).forwarded_bytes, n);
        assert_eq!(net.stats(2, 1).forwarded_bytes, n);
        assert_eq!(net.stats(1, 2).dropped_bytes, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_discards_one_direction_only() {
        let net = network();
        let (proxy, mut backend) = proxied(&net, 2).await;
        let (mut c12, mut s12) = pair(N1, &proxy, &mut backend).await;
        let (mut c32, mut s32) = pair(N3, &proxy, &mut backend).await;
        // The fault applies to a connection that already exists.
        net.set(1, 2, Fault::Drop);
        send(&mut c12, b"lost").await;
        expect_silence(&mut s12).await;
        eventually(|| net.stats(1, 2).dropped_bytes == 4).await;
        // 2 -> 1 still passes on the same connection.
        send(&mut s12, b"back").await;
        expect_bytes(&mut c12, b"back").await;
        // Node 3's link to 2 is untouched.
        send(&mut c32, b"ok").await;
        expect_bytes(&mut s32, b"ok").await;
        assert_eq!(net.stats(3, 2).dropped_bytes, 0);
        // (Counted just after the write: the reader may be faster.)
        eventually(|| net.stats(3, 2).forwarded_bytes == 2).await;
        // New connections from 1 are black-holed too.
        let (mut c12b, mut s12b) = pair(N1, &proxy, &mut backend).await;
        send(&mut c12b, b"more").await;
        expect_silence(&mut s12b).await;
        eventually(|| net.stats(1, 2).dropped_bytes == 8).await;
        assert_eq!(net.stats(1, 2).forwarded_bytes, 0);
        eventually(|| net.stats(2, 1).forwarded_bytes == 4).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fault_applies_to_connections_opened_by_the_receiver() {
        let net = network();
        // Node 2 connects to node 1 (through 1's proxy); set(1, 2) is about 1's replies.
        let (proxy1, mut backend1) = proxied(&net, 1).await;
        let (mut c21, mut s21) = pair(N2, &proxy1, &mut backend1).await;
        net.set(1, 2, Fault::Drop);
        send(&mut c21, b"req").await;
        expect_bytes(&mut s21, b"req").await;
        send(&mut s21, b"resp").await;
        expect_silence(&mut c21).await;
        eventually(|| net.stats(1, 2).dropped_bytes == 4).await;
        eventually(|| net.stats(2, 1).forwarded_bytes == 3).await;
        assert_eq!(net.stats(2, 1).dropped_bytes, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heal_resets_connections_that_lost_bytes() {
        let net = network();
        let (proxy, mut backend) = proxied(&net, 2).await;
        let (mut lossy, mut lossy_srv) = pair(N1, &proxy, &mut backend).await;
        let (mut idle, mut idle_srv) = pair(N1, &proxy, &mut backend).await;
        net.partition(&[&[1], &[2, 3]]);
        assert_eq!(net.fault(1, 2), Fault::Drop);
        send(&mut lossy, b"lost").await;
        eventually(|| net.stats(1, 2).dropped_bytes == 4).await;
        net.heal();
        assert_eq!(net.fault(1, 2), Fault::None);
        // The corrupted connection is closed at both ends, so that its client reconnects.
        expect_closed(&mut lossy).await;
        expect_closed(&mut lossy_srv).await;
        eventually(|| net.stats(1, 2).resets == 1).await;
        // The one that lost nothing is kept and carries traffic again.
        send(&mut idle, b"still").await;
        expect_bytes(&mut idle_srv, b"still").await;
        // A new connection passes.
        let (mut fresh, mut fresh_srv) = pair(N1, &proxy, &mut backend).await;
        send(&mut fresh, b"new").await;
        expect_bytes(&mut fresh_srv, b"new").await;
        send(&mut fresh_srv, b"ack").await;
        expect_bytes(&mut fresh, b"ack").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_closes_existing_and_refuses_new_connections() {
        let net = network();
        let (proxy2, mut backend2) = proxied(&net, 2).await;
        let (proxy1, mut backend1) = proxied(&net, 1).await;
        let (mut c12, mut s12) = pair(N1, &proxy2, &mut backend2).await;
        let (mut c21, mut s21) = pair(N2, &proxy1, &mut backend1).await;
        let (mut c32, mut s32) = pair(N3, &proxy2, &mut backend2).await;
        net.set(1, 2, Fault::Reset);
        // Both connections between 1 and 2, whoever opened them, are closed.
        expect_closed(&mut c12).await;
        expect_closed(&mut s12).await;
        expect_closed(&mut c21).await;
        expect_closed(&mut s21).await;
        eventually(|| net.stats(1, 2).resets == 2).await;
        // New ones are accepted by the kernel, then reset at once.
        expect_refused(N1, proxy2.local_addr()).await;
        eventually(|| net.stats(1, 2).resets == 3).await;
        // Node 3 is not concerned.
        send(&mut c32, b"fine").await;
        expect_bytes(&mut s32, b"fine").await;
        // Lifted: connections work again.
        net.set(1, 2, Fault::None);
        let (mut c, mut s) = pair(N1, &proxy2, &mut backend2).await;
        send(&mut c, b"again").await;
        expect_bytes(&mut s, b"again").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_delays_in_order() {
        let net = network();
        let (proxy, mut backend) = proxied(&net, 2).await;
        let (mut c, mut s) = pair(N1, &proxy, &mut backend).await;
        let delay = Duration::from_millis(200);
        net.set(1, 2, Fault::Delay(delay));
        let start = std::time::Instant::now();
        for part in [&b"one,"[..], b"two,", b"three"] {
            send(&mut c, part).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        expect_bytes(&mut s, b"one,").await;
        assert!(
            start.elapsed() >= delay,
            "delivered after {:?}",
            start.elapsed()
        );
        expect_bytes(&mut s, b"two,three").await;
        // The other direction is not delayed (asserting only that it passes).
        send(&mut s, b"reply").await;
        expect_bytes(&mut c, b"reply").await;
        eventually(|| net.stats(1, 2).forwarded_bytes == 13).await;
        assert_eq!(net.stats(1, 2).dropped_bytes, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_sources_are_never_faulted() {
        let net = network();
        let (proxy, mut backend) = proxied(&net, 2).await;
        assert_eq!(net.node_of(STRANGER.into()), None);
        assert_eq!(net.node_of(N1.into()), Some(1));
        for from in [1, 3] {
            net.set(from, 2, Fault::Drop);
            net.set(2, from, Fault::Drop);
        }
        let (mut c, mut s) = pair(STRANGER, &proxy, &mut backend).await;
        send(&mut c, b"cli").await;
        expect_bytes(&mut s, b"cli").await;
        send(&mut s, b"answer").await;
        expect_bytes(&mut c, b"answer").await;
        for from in [1, 3] {
            net.set(from, 2, Fault::Reset);
            net.set(2, from, Fault::Reset);
        }
        send(&mut c, b"still").await;
        expect_bytes(&mut s, b"still").await;
        let (mut c2, mut s2) = pair(STRANGER, &proxy, &mut backend).await;
        send(&mut c2, b"new").await;
        expect_bytes(&mut s2, b"new").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_closes_listener_and_connections() {
        let net = network();
        let (proxy, mut backend) = proxied(&net, 2).await;
        let addr = proxy.local_addr();
        let (mut c, mut s) = pair(N1, &proxy, &mut backend).await;
        send(&mut c, b"hi").await;
        expect_bytes(&mut s, b"hi").await;
        assert_eq!(proxy.active_connections(), 1);
        within(proxy.stop()).await;
        expect_closed(&mut c).await;
        expect_closed(&mut s).await;
        let sock = TcpSocket::new_v4().expect("socket");
        let refused = within(sock.connect(addr)).await;
        assert!(refused.is_err(), "the listener is still open");

        // Dropping the handle stops the proxy as well.
        let (proxy, mut backend) = proxied(&net, 2).await;
        let (mut c, mut s) = pair(N1, &proxy, &mut backend).await;
        drop(proxy);
        expect_closed(&mut c).await;
        expect_closed(&mut s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_are_refused() {
        let net = network();
        let (addr, mut backend) = backend().await;
        let proxy = net
            .start_proxy(2, any_port(), addr, 2)
            .await
            .expect("proxy");
        let mut kept = Vec::new();
        for _ in 0..2 {
            let (mut c, mut s) = pair(N1, &proxy, &mut backend).await;
            send(&mut c, b"x").await;
            expect_bytes(&mut s, b"x").await;
            kept.push((c, s));
        }
        expect_refused(N1, proxy.local_addr()).await;
        // Closing one makes room again.
        drop(kept.pop());
        eventually(|| proxy.active_connections() == 1).await;
        let (mut c, mut s) = pair(N1, &proxy, &mut backend).await;
        send(&mut c, b"y").await;
        expect_bytes(&mut s, b"y").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_sets_links_among_listed_nodes() {
        let net = Network::new(&[
            (1, N1.into()),
            (2, N2.into()),
            (3, N3.into()),
            (4, STRANGER.into()),
        ]);
        net.set(1, 4, Fault::Delay(Duration::from_millis(5)));
        net.set(2, 3, Fault::Drop);
        net.partition(&[&[1], &[2, 3]]);
        for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
            assert_eq!(net.fault(a, b), Fault::Drop, "{a} -> {b}");
        }
        assert_eq!(net.fault(2, 3), Fault::None);
        assert_eq!(net.fault(3, 2), Fault::None);
        // Node 4 is in no group: its links keep their faults.
        assert_eq!(net.fault(1, 4), Fault::Delay(Duration::from_millis(5)));
        assert_eq!(net.fault(4, 1), Fault::None);
        net.partition(&[&[1, 2], &[3]]);
        assert_eq!(net.fault(1, 2), Fault::None);
        assert_eq!(net.fault(2, 3), Fault::Drop);
        net.heal();
        for a in 1..=4 {
            for b in 1..=4 {
                assert_eq!(net.fault(a, b), Fault::None, "{a} -> {b}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_loopback_addresses() {
        let net = network();
        let outside = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 0));
        let err = net
            .proxy(1, outside, any_port())
            .await
            .expect_err("non-loopback listen address");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = net
            .proxy(1, any_port(), outside)
            .await
            .expect_err("non-loopback target");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
