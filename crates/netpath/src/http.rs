//! The smallest HTTP/1.0 server that answers a scraper: `GET /metrics`
//! gets 200 with the body the integrator gives, anything else 404 (400 if
//! it is not a request line at all, or larger than [`MAX_REQUEST`]).
//! Requests are read until the end of their headers; the answer always
//! closes the connection. Pure: [`parse`] looks at bytes, the socket side
//! is in `local`.

use alloc::format;
use alloc::vec::Vec;

/// Longest request (line and headers) read; longer ones get 400.
pub const MAX_REQUEST: usize = 2048;

/// What a (possibly partial) request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Not complete yet: read more.
    Incomplete,
    /// `GET /metrics` (query string ignored).
    Metrics,
    /// A well-formed request for something else.
    NotFound,
    /// Not HTTP, or too long.
    Bad,
}

/// Classifies the bytes read so far.
pub fn parse(buf: &[u8]) -> Request {
    let end = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n"));
    if end.is_none() {
        return if buf.len() >= MAX_REQUEST { Request::Bad } else { Request::Incomplete };
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let Ok(line) = core::str::from_utf8(&buf[..line_end]) else { return Request::Bad };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or(target);
    if method == "GET" && path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A whole response: status line, headers, body.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Bad Request",
    };
    let mut r = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse(b"GET /metrics HTTP/1.0\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics HTTP/1.1\nHost: a\n\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"), Request::Incomplete);
        assert_eq!(parse(b""), Request::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.0\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.0\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"GET /metricsx HTTP/1.0\r\n\r\n"), Request::NotFound);
        assert_eq!(parse(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"\xff\xfe /metrics HTTP/1.0\r\n\r\n"), Request::Bad);
        assert_eq!(parse(b"GET  /metrics HTTP/1.0\r\n\r\n"), Request::Bad);
        let mut long = b"GET /metrics HTTP/1.0\r\nX: ".to_vec();
        long.resize(MAX_REQUEST, b'a');
        assert_eq!(parse(&long), Request::Bad);
    }

    #[test]
    fn response_has_length_and_closes() {
        let r = response(200, "text/plain", b"abc");
        assert_eq!(
            r,
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
        );
        assert!(response(404, "text/plain", b"").starts_with(b"HTTP/1.0 404 Not Found\r\n"));
    }
}
