//! Fuzz target: the STOW-RS request parsers of the ingest service,
//! `multipart::parse_content_type` and `multipart::parse`, called as `stow.rs` calls them.
//!
//! The input's first line (up to the first LF) is the `Content-Type` header value and the
//! rest is the request body. When the header parses, the body is split with its boundary,
//! once with the service's part limit and once with a limit of 2. A panic, a hang or a
//! broken invariant is a crash.
//!
//! The target compiles `services/ingest/src/multipart.rs` itself instead of depending on
//! lungstream-ingest. The file needs only bytes, memchr and thiserror, while the crate
//! would pull librdkafka, the object store client and the HTTP server into every
//! instrumented build.

#![no_main]

#[path = "../../services/ingest/src/multipart.rs"]
#[allow(dead_code)]
mod multipart;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use multipart::{MultipartError, Part};

/// The part limit of `stow.rs` (`MAX_PARTS`).
const SERVICE_MAX_PARTS: usize = 100_000;

/// A small part limit, so inputs reach the `TooManyParts` error.
const SMALL_MAX_PARTS: usize = 2;

fuzz_target!(|data: &[u8]| check_one_input(data));

fn check_one_input(data: &[u8]) {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let content_type = String::from_utf8_lossy(header);
    let Ok(related) = multipart::parse_content_type(&content_type) else {
        return;
    };
    assert!(
        (1..=70).contains(&related.boundary.len()),
        "accepted a boundary of {} bytes",
        related.boundary.len()
    );

    let body = Bytes::copy_from_slice(body);
    let boundary = related.boundary.as_str();
    let all = multipart::parse(&body, boundary, SERVICE_MAX_PARTS);
    let limited = multipart::parse(&body, boundary, SMALL_MAX_PARTS);
    if let Ok(parts) = &all {
        check_parts(parts, boundary);
        if parts.len() <= SMALL_MAX_PARTS {
            assert_eq!(&limited, &all, "the part limit changed a body within it");
        } else {
            assert_eq!(limited, Err(MultipartError::TooManyParts(SMALL_MAX_PARTS)), "the part limit was not enforced");
        }
        if is_rfc2046_boundary(boundary) {
            check_round_trip(parts, boundary);
        }
    }
}

/// Checks that no part body contains the delimiter (a part ends at the first one) and
/// that header names are lowercased.
fn check_parts(parts: &[Part], boundary: &str) {
    let delimiter = format!("\r\n--{boundary}");
    for part in parts {
        assert!(
            memchr::memmem::find(&part.body, delimiter.as_bytes()).is_none(),
            "a part body contains the delimiter"
        );
        for (name, _) in &part.headers {
            assert_eq!(name, &name.to_ascii_lowercase(), "header names are lowercased");
        }
    }
}

/// Checks that `multipart::build` (used by `lungstream ingest`) produces a body that
/// `parse` splits back into the same part bodies.
///
/// Only for boundaries made of RFC 2046 characters: a boundary with CR or LF can overlap
/// itself in the body, and then no encoder can round-trip every part.
fn check_round_trip(parts: &[Part], boundary: &str) {
    let bodies: Vec<Bytes> = parts.iter().map(|p| p.body.clone()).collect();
    let built = Bytes::from(multipart::build(boundary, "application/dicom", &bodies));
    let reparsed = multipart::parse(&built, boundary, SERVICE_MAX_PARTS).expect("a built body does not parse");
    let reparsed_bodies: Vec<Bytes> = reparsed.into_iter().map(|p| p.body).collect();
    assert_eq!(reparsed_bodies, bodies, "the part bodies changed in a round trip");
}

/// Returns whether `boundary` uses only the characters that RFC 2046 allows (`bchars`),
/// with no space at the end.
fn is_rfc2046_boundary(boundary: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    boundary.chars().all(allowed) && !boundary.ends_with(' ')
}
