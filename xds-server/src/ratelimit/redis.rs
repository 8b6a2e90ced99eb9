//! A minimal Redis client: just what the global counters need (RESP2 commands, `AUTH`,
//! `SELECT`, `SCRIPT LOAD`, `EVALSHA`), over a small pool of plain TCP connections.
//!
//! Why not the `redis` crate: its current releases need a newer Rust than the workspace's
//! minimum, and the rate-limit service uses five commands. Reconnecting is implicit: a
//! connection that fails (I/O error, timeout, protocol error) is dropped, and the next call
//! opens a new one. An idle connection is checked before reuse: one the server has closed
//! meanwhile (Redis restarted, or its `timeout` dropped idle clients) is discarded unused,
//! so a restarted Redis is used again on the very next request, not after one failed call
//! per stale connection, and no command is ever sent twice.
//!
//! Invariants: at most [`MAX_CONNECTIONS`] connections are open (callers beyond wait);
//! every call is bounded by the pool's timeout (connect included); replies larger than
//! [`MAX_BULK_BYTES`] are refused rather than buffered.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

use crate::registry::SecretValue;

/// Connections kept per pool (Redis serializes commands anyway; this bounds waiting).
pub const MAX_CONNECTIONS: usize = 32;
/// Largest bulk reply accepted (the scripts return a few integers).
pub const MAX_BULK_BYTES: usize = 1 << 20;
const DEFAULT_PORT: u16 = 6379;

/// Where Redis is: parsed from `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<SecretValue>,
}

/// Why a Redis URL is not usable. Messages never include a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    #[error("{url:?} does not start with redis:// (rediss:// and unix sockets are not supported)")]
    Scheme { url: String },
    #[error("{url:?} has no host")]
    NoHost { url: String },
    #[error("{url:?}: port {port:?} is not a number (1-65535)")]
    Port { url: String, port: String },
    #[error("{url:?}: database {db:?} is not a number")]
    Database { url: String, db: String },
}

impl RedisAddress {
    /// Parses a Redis URL. The password (if any) is kept as a [`SecretValue`].
    pub fn parse(url: &str) -> Result<RedisAddress, RedisUrlError> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| RedisUrlError::Scheme { url: redact_url(url) })?;
        let shown = || redact_url(url);
        // Credentials end at the last '@' (a generated password may hold '/' or '@'); the
        // path (the database) starts at the first '/' after them.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, rest),
        };
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    (!user.is_empty()).then(|| user.to_string()),
                    (!pass.is_empty()).then(|| SecretValue::new(pass.to_string())),
                ),
                None => (None, (!info.is_empty()).then(|| SecretValue::new(info.to_string()))),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, tail) = v6.split_once(']').ok_or_else(|| RedisUrlError::NoHost { url: shown() })?;
            (host, tail.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(RedisUrlError::NoHost { url: shown() });
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(RedisUrlError::Port { url: shown(), port: p.to_string() }),
            },
        };
        let db = match path.trim_end_matches('/') {
            "" => 0,
            db => db.parse::<u32>().map_err(|_| RedisUrlError::Database { url: shown(), db: db.to_string() })?,
        };
        Ok(RedisAddress { host: host.to_string(), port, db, username, password })
    }

    /// `host:port` to connect to.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The URL without its credentials, for messages: everything before the last '@' after the
/// scheme (or before the last '@' at all, when the scheme is missing or mistyped).
fn redact_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let scheme_end = url.find("://").map(|i| i + 3).filter(|end| *end <= at).unwrap_or(0);
    format!("{}[redacted]@{}", &url[..scheme_end], &url[at + 1..])
}

/// Shows `redis://host:port/db`, never the password.
impl fmt::Display for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", self.authority(), self.db)
    }
}

impl fmt::Debug for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisAddress({self})")
    }
}

/// A Redis reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    /// An error reply (`-ERR ...`): the command failed, the connection is fine.
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Why a call did not get a reply. The connection it used is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("cannot reach redis at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("redis at {address} did not answer within {millis} ms")]
    Timeout { address: String, millis: u128 },
    #[error("redis at {address}: {reason}")]
    Io { address: String, reason: String },
    #[error("redis at {address} sent an invalid reply: {reason}")]
    Protocol { address: String, reason: String },
    #[error("redis at {address} refused {command}: {message}")]
    Refused { address: String, command: &'static str, message: String },
}

/// One open connection.
struct Connection {
    stream: BufStream<TcpStream>,
}

enum Fault {
    Io(std::io::Error),
    Protocol(String),
}

impl From<std::io::Error> for Fault {
    fn from(e: std::io::Error) -> Self {
        Fault::Io(e)
    }
}

impl Connection {
    /// Whether an idle connection can carry the next command: the server has not closed or
    /// reset it and sent nothing unasked (which would desynchronize replies). A peek at the
    /// kernel's socket (non-blocking, as tokio's sockets are), not at tokio's readiness,
    /// which is only as fresh as the last reactor turn.
    fn is_reusable(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let socket = socket2::SockRef::from(self.stream.get_ref());
        matches!(socket.peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<Reply, Fault> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        read_reply(&mut self.stream, 0).await
    }
}

/// Replies nest at most this deep (the scripts return flat arrays).
const MAX_DEPTH: usize = 4;

async fn read_line(stream: &mut BufStream<TcpStream>) -> Result<String, Fault> {
    let mut line = Vec::new();
    let n = (&mut *stream).take(64 * 1024).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(Fault::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(Fault::Protocol("line not terminated by CRLF".to_string()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| Fault::Protocol("line is not UTF-8".to_string()))
}

fn read_reply(
    stream: &mut BufStream<TcpStream>,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, Fault>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(stream).await?;
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| Fault::Protocol("empty line".to_string()))?;
        let number = |text: &str| text.parse::<i64>().map_err(|_| Fault::Protocol(format!("{text:?} is not a number")));
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Integer(number(rest)?)),
            "$" => {
                let len = number(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > MAX_BULK_BYTES {
                    return Err(Fault::Protocol(format!("bulk reply of {len} bytes")));
                }
                let mut data = vec![0u8; len + 2];
                stream.read_exact(&mut data).await?;
                if !data.ends_with(b"\r\n") {
                    return Err(Fault::Protocol("bulk reply not terminated by CRLF".to_string()));
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = number(rest)?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                if depth >= MAX_DEPTH || len > 4096 {
                    return Err(Fault::Protocol(format!("array of {len} at depth {depth}")));
                }
                let mut items = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                for _ in 0..len {
                    items.push(read_reply(stream, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(Fault::Protocol(format!("unknown reply type {other:?}"))),
        }
    })
}

/// A bounded pool of connections to one Redis. See the module docs.
pub struct RedisPool {
    address: RedisAddress,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool").field("address", &self.address).field("timeout", &self.timeout).finish()
    }
}

impl RedisPool {
    /// A pool whose calls (connecting included) each take at most `timeout`. Connects lazily.
    pub fn new(address: RedisAddress, timeout: Duration) -> RedisPool {
        RedisPool { address, timeout, idle: Mutex::new(Vec::new()), permits: Semaphore::new(MAX_CONNECTIONS) }
    }

    pub fn address(&self) -> &RedisAddress {
        &self.address
    }

    /// The bound on each call, connecting included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one command and returns its reply (error replies included: they are answers).
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let address = self.address.to_string();
        let attempt = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| RedisError::Io { address: address.clone(), reason: "pool closed".to_string() })?;
            let pooled = self.reusable_idle().await;
            let mut connection = match pooled {
                Some(c) => c,
                None => self.open().await?,
            };
            match connection.send(args).await {
                Ok(reply) => {
                    self.idle.lock().await.push(connection);
                    Ok(reply)
                }
                Err(fault) => Err(self.fault(fault)),
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(RedisError::Timeout { address: address.clone(), millis: self.timeout.as_millis() }))
    }

    /// The most recently used idle connection that is still open; closed ones are dropped.
    async fn reusable_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().await;
        while let Some(connection) = idle.pop() {
            if connection.is_reusable() {
                return Some(connection);
            }
        }
        None
    }

    fn fault(&self, fault: Fault) -> RedisError {
        let address = self.address.to_string();
        match fault {
            Fault::Io(e) => RedisError::Io { address, reason: e.to_string() },
            Fault::Protocol(reason) => RedisError::Protocol { address, reason },
        }
    }

    async fn open(&self) -> Result<Connection, RedisError> {
        let address = self.address.to_string();
        let stream = TcpStream::connect(self.address.authority())
            .await
            .map_err(|e| RedisError::Connect { address: address.clone(), reason: e.to_string() })?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection { stream: BufStream::new(stream) };
        if let Some(password) = &self.address.password {
            let pass = password.expose().as_bytes();
            let reply = match &self.address.username {
                Some(user) => connection.send(&[b"AUTH", user.as_bytes(), pass]).await,
                None => connection.send(&[b"AUTH", pass]).await,
            };
            self.expect_ok(reply, "AUTH")?;
        }
        if self.address.db != 0 {
            let db = self.address.db.to_string();
            let reply = connection.send(&[b"SELECT", db.as_bytes()]).await;
            self.expect_ok(reply, "SELECT")?;
        }
        Ok(connection)
    }

    fn expect_ok(&self, reply: Result<Reply, Fault>, command: &'static str) -> Result<(), RedisError> {
        match reply.map_err(|f| self.fault(f))? {
            Reply::Status(_) => Ok(()),
            Reply::Error(message) => Err(RedisError::Refused { address: self.address.to_string(), command, message }),
            other => Err(RedisError::Protocol {
                address: self.address.to_string(),
                reason: format!("unexpected reply to {command}: {other:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls() {
        let a = RedisAddress::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("127.0.0.1", 6380, 2));
        assert!(a.password.is_none());
        let a = RedisAddress::parse("redis://redis").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("redis", 6379, 0));
        let a = RedisAddress::parse("redis://:s3cret@cache:7000/").unwrap();
        assert_eq!(a.password.as_ref().map(|p| p.expose()), Some("s3cret"));
        assert_eq!(a.username, None);
        let a = RedisAddress::parse("redis://app:pw@[::1]:7000/1").unwrap();
        assert_eq!((a.host.as_str(), a.authority().as_str()), ("::1", "[::1]:7000"));
        assert_eq!(a.username.as_deref(), Some("app"));
        assert_eq!(a.to_string(), "redis://[::1]:7000/1");
        assert!(!format!("{a:?}").contains("pw"));
        // Generated passwords may hold '/' or '@': the credentials end at the last '@'.
        let a = RedisAddress::parse("redis://app:s3cr/et@x@cache:6380/3").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.db), ("cache", 6380, 3));
        assert_eq!((a.username.as_deref(), a.password.as_ref().map(|p| p.expose())), (Some("app"), Some("s3cr/et@x")));
    }

    #[test]
    fn refuses_bad_urls_without_showing_the_password() {
        for (url, needle) in [
            ("http://x:1", "redis://"),
            ("redis://:pw@:1", "no host"),
            ("redis://:pw@h:99999", "99999"),
            ("redis://:pw@h:1/x", "\"x\""),
            ("redis://app:pw/pw@h:99999/0", "99999"),
            (":pw@cache:6379", "redis://"),
            ("redis:/:pw@cache:6379", "redis://"),
            ("rediss://u:pw@cache:6379", "redis://"),
        ] {
            let e = RedisAddress::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }
}
