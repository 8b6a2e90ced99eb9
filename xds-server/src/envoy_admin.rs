//! Just enough HTTP/1.1 to ask Envoy's admin API whether it is ready and where it listens.
//!
//! One request per connection (`Connection: close`), read to EOF, chunked bodies decoded.
//! A full HTTP client would be a heavy dependency for two GETs on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest an admin request may take (admin is local; anything slower means "not yet").
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Admin answers are small; refuse to buffer more than this.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin request failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin request timed out")]
    Timeout,
    #[error("malformed admin response: {0}")]
    Malformed(&'static str),
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` on the admin listener at `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, AdminError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream).take(MAX_RESPONSE_BYTES as u64).read_to_end(&mut raw).await?;
        Ok::<_, AdminError>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| AdminError::Timeout)??;
    parse_response(&raw)
}

/// Parses a complete HTTP/1.1 response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, AdminError> {
    let head_end = find(raw, b"\r\n\r\n").ok_or(AdminError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| AdminError::Malformed("non-UTF-8 headers"))?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or(AdminError::Malformed("bad status line"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { decode_chunked(body)? } else { body.to_vec() };
    Ok(Response { status, body })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, AdminError> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or(AdminError::Malformed("truncated chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| AdminError::Malformed("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| AdminError::Malformed("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or(AdminError::Malformed("truncated chunk"))?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or(AdminError::Malformed("truncated chunk"))?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The bound address of listener `name` in a `/listeners?format=json` answer.
pub fn listener_address(listeners_json: &[u8], name: &str) -> Option<SocketAddr> {
    let doc: serde_json::Value = serde_json::from_slice(listeners_json).ok()?;
    let listener = doc
        .get("listener_statuses")?
        .as_array()?
        .iter()
        .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(name))?;
    let socket = listener.get("local_address")?.get("socket_address")?;
    let ip = socket.get("address")?.as_str()?.parse().ok()?;
    let port = u16::try_from(socket.get("port_value")?.as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nLIVE\n";
        assert_eq!(parse_response(plain).expect("plain"), Response { status: 200, body: b"LIVE\n".to_vec() });
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nPRE_\r\n9;x=y\r\nINITIALIZ\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).expect("chunked"),
            Response { status: 503, body: b"PRE_INITIALIZ".to_vec() }
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nab").is_err());
    }

    #[test]
    fn finds_the_listener_address() {
        let json = br#"{"listener_statuses":[
            {"name":"other","local_address":{"socket_address":{"address":"0.0.0.0","port_value":1}}},
            {"name":"meshgate","local_address":{"socket_address":{"address":"127.0.0.1","port_value":40123}}}
        ]}"#;
        assert_eq!(listener_address(json, "meshgate"), Some("127.0.0.1:40123".parse().expect("addr")));
        assert_eq!(listener_address(json, "missing"), None);
        assert_eq!(listener_address(b"not json", "meshgate"), None);
    }
}
