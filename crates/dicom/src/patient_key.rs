//! Pseudonymous patient keys.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Returns the pseudonymous key of a patient: HMAC-SHA256 of the _Patient ID_ under the
/// deployment's secret, as 64 lowercase hex digits.
///
/// The same ID and secret always give the same key, so studies of one patient can be
/// linked without the ID; without the secret the ID cannot be recovered or tested.
pub fn patient_key(secret: &[u8], patient_id: &str) -> String {
    // HMAC accepts keys of any length, including empty ones.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(patient_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_key_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            patient_key(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn patient_key_depends_on_secret() {
        assert_ne!(patient_key(b"a", "PAT-1"), patient_key(b"b", "PAT-1"));
        assert_ne!(patient_key(b"a", "PAT-1"), patient_key(b"a", "PAT-2"));
    }
}
