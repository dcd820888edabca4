//! `multipart/related` bodies (RFC 2387 over RFC 2046), as STOW-RS sends them: a
//! boundary, then parts with their own headers and bytes. The parser takes the whole
//! body in memory (the request size is limited before) and returns the parts as slices
//! of it, without copying.

use bytes::Bytes;
use memchr::memmem;

/// Error for a body or `Content-Type` that cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("Content-Type must be multipart/related, not {0:?}")]
    NotMultipartRelated(String),
    #[error("Content-Type has no boundary parameter")]
    NoBoundary,
    #[error("the boundary must have 1 to 70 characters")]
    BadBoundary,
    #[error("the body does not contain the boundary")]
    NoFirstBoundary,
    #[error("part {0} has a header line without a colon")]
    BadHeader(usize),
    #[error("part {0} ends before its headers end")]
    UnterminatedHeaders(usize),
    #[error("the body ends without the closing boundary")]
    Unterminated,
    #[error("more than {0} parts")]
    TooManyParts(usize),
}

/// One part of a multipart body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Header names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Part {
    /// Returns the value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Returns the media type of the part without parameters, lowercased, or `None`
    /// without a `Content-Type` header.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type").map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
}

/// The parameters of a `multipart/related` content type that matter here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelatedType {
    pub boundary: String,
    /// The `type` parameter (the media type of the root part), lowercased.
    pub root_type: Option<String>,
}

/// Reads a `Content-Type` header value.
///
/// # Errors
///
/// Another media type, or a missing or invalid boundary.
pub fn parse_content_type(value: &str) -> Result<RelatedType, MultipartError> {
    let mut pieces = split_params(value).into_iter();
    let media = pieces.next().unwrap_or_default().trim().to_ascii_lowercase();
    if media != "multipart/related" {
        return Err(MultipartError::NotMultipartRelated(media));
    }
    let mut boundary = None;
    let mut root_type = None;
    for piece in pieces {
        let Some((name, raw)) = piece.split_once('=') else {
            continue;
        };
        let raw = raw.trim();
        let unquoted = raw.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(raw);
        match name.trim().to_ascii_lowercase().as_str() {
            "boundary" => boundary = Some(unquoted.to_string()),
            "type" => root_type = Some(unquoted.to_ascii_lowercase()),
            _ => {}
        }
    }
    let boundary = boundary.ok_or(MultipartError::NoBoundary)?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(MultipartError::BadBoundary);
    }
    Ok(RelatedType { boundary, root_type })
}

/// Splits at `;` outside double quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => pieces.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    pieces.push(current);
    pieces
}

/// Splits `body` into its parts. At most `max_parts` parts are read.
///
/// # Errors
///
/// A body without the boundary, a part whose headers do not end or are malformed, a
/// missing closing boundary, or too many parts.
pub fn parse(body: &Bytes, boundary: &str, max_parts: usize) -> Result<Vec<Part>, MultipartError> {
    let dash_boundary = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let delimiter_finder = memmem::Finder::new(delimiter.as_bytes());
    let data = body.as_ref();

    // The first boundary may open the body or follow a preamble.
    let mut position = if data.starts_with(dash_boundary.as_bytes()) {
        dash_boundary.len()
    } else {
        delimiter_finder.find(data).ok_or(MultipartError::NoFirstBoundary)? + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = &data[position..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then the line break after the boundary.
        let padding = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
        let after_padding = &rest[padding..];
        if !after_padding.starts_with(b"\r\n") {
            return Err(MultipartError::Unterminated);
        }
        if parts.len() == max_parts {
            return Err(MultipartError::TooManyParts(max_parts));
        }
        let index = parts.len() + 1;
        let headers_start = position + padding + 2;
        let (headers, body_start) = if data[headers_start..].starts_with(b"\r\n") {
            (Vec::new(), headers_start + 2)
        } else {
            let end = memmem::find(&data[headers_start..], b"\r\n\r\n").ok_or(MultipartError::UnterminatedHeaders(index))?;
            (parse_headers(&data[headers_start..headers_start + end], index)?, headers_start + end + 4)
        };
        let body_end = body_start
            + delimiter_finder
                .find(&data[body_start..])
                .ok_or(MultipartError::Unterminated)?;
        parts.push(Part {
            headers,
            body: body.slice(body_start..body_end),
        });
        position = body_end + delimiter.len();
    }
}

fn parse_headers(block: &[u8], index: usize) -> Result<Vec<(String, String)>, MultipartError> {
    let text = String::from_utf8_lossy(block);
    text.split("\r\n")
        .map(|line| {
            let (name, value) = line.split_once(':').ok_or(MultipartError::BadHeader(index))?;
            Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect()
}

/// Builds a `multipart/related` body from parts of one media type; returns the body.
pub fn build(boundary: &str, media_type: &str, parts: &[Bytes]) -> Vec<u8> {
    let size: usize = parts.iter().map(|p| p.len() + boundary.len() + media_type.len() + 32).sum();
    let mut body = Vec::with_capacity(size + boundary.len() + 8);
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {media_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_parameters_are_read() {
        let t = parse_content_type("Multipart/Related; type=\"application/dicom\"; boundary=\"a;b\"").unwrap();
        assert_eq!(t.boundary, "a;b");
        assert_eq!(t.root_type.as_deref(), Some("application/dicom"));
        let t = parse_content_type("multipart/related;boundary=xyz").unwrap();
        assert_eq!(t.boundary, "xyz");
        assert_eq!(t.root_type, None);
        assert!(matches!(parse_content_type("application/dicom"), Err(MultipartError::NotMultipartRelated(_))));
        assert_eq!(parse_content_type("multipart/related; type=x"), Err(MultipartError::NoBoundary));
        assert_eq!(parse_content_type("multipart/related; boundary=\"\""), Err(MultipartError::BadBoundary));
    }

    #[test]
    fn built_bodies_parse_back() {
        let parts = vec![Bytes::from_static(b"first\r\n--not the boundary"), Bytes::new(), Bytes::from(vec![0u8, 13, 10, 45, 45])];
        let body = Bytes::from(build("b0undary", "application/dicom", &parts));
        let parsed = parse(&body, "b0undary", 10).unwrap();
        assert_eq!(parsed.len(), 3);
        for (p, expected) in parsed.iter().zip(&parts) {
            assert_eq!(&p.body, expected);
            assert_eq!(p.media_type().as_deref(), Some("application/dicom"));
        }
    }

    #[test]
    fn preamble_padding_and_bare_parts_accepted() {
        let body = Bytes::from_static(b"ignored preamble\r\n--x  \r\n\r\nbare\r\n--x\r\nContent-Type: a/b; q=1\r\nX-Other:  v \r\n\r\nok\r\n--x--");
        let parts = parse(&body, "x", 10).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, Bytes::from_static(b"bare"));
        assert!(parts[0].headers.is_empty());
        assert_eq!(parts[1].media_type().as_deref(), Some("a/b"));
        assert_eq!(parts[1].header("x-other"), Some("v"));
    }

    #[test]
    fn broken_bodies_name_the_problem() {
        let cases: [(&[u8], MultipartError); 5] = [
            (b"no boundary here", MultipartError::NoFirstBoundary),
            (b"--x\r\nContent-Type: a\r\n\r\nbody without end", MultipartError::Unterminated),
            (b"--x\r\nContent-Type a\r\n\r\nbody\r\n--x--", MultipartError::BadHeader(1)),
            (b"--x\r\nContent-Type: a", MultipartError::UnterminatedHeaders(1)),
            (b"--xjunk", MultipartError::Unterminated),
        ];
        for (body, expected) in cases {
            assert_eq!(parse(&Bytes::from_static(body), "x", 10), Err(expected));
        }
        let many = Bytes::from(build("x", "a/b", &vec![Bytes::from_static(b"p"); 5]));
        assert_eq!(parse(&many, "x", 4), Err(MultipartError::TooManyParts(4)));
        assert_eq!(parse(&many, "x", 5).unwrap().len(), 5);
    }
}
