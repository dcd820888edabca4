//! Tenants: a request's hospital comes from its bearer token (HTTP) or its calling AE
//! title (C-STORE), never from anything in the request body.

use serde::{Deserialize, Serialize};

/// One hospital: its id (used in keys, events and reports) and its credentials.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Short id of the hospital: letters, digits, `-` and `_`.
    pub hospital: String,
    /// Bearer tokens of its HTTP clients (STOW-RS uploads, report readers).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Calling AE titles of its scanners and PACS (C-STORE).
    #[serde(default)]
    pub ae_titles: Vec<String>,
}

/// The credential table.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    tokens: Vec<(Vec<u8>, String)>,
    ae_titles: Vec<(String, String)>,
}

impl Tenants {
    /// Builds the table and checks it.
    ///
    /// # Errors
    ///
    /// A hospital id with characters other than letters, digits, `-` and `_`; an empty
    /// token; a token or AE title given to two hospitals.
    pub fn new(tenants: &[Tenant]) -> anyhow::Result<Tenants> {
        let mut table = Tenants::default();
        for tenant in tenants {
            let id = &tenant.hospital;
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                anyhow::bail!("hospital id {id:?} must be letters, digits, '-' or '_'");
            }
            for token in &tenant.tokens {
                if token.len() < 16 {
                    anyhow::bail!("a token of hospital {id} is shorter than 16 characters");
                }
                if table.tokens.iter().any(|(t, _)| t == token.as_bytes()) {
                    anyhow::bail!("a token of hospital {id} is also given to another hospital");
                }
                table.tokens.push((token.as_bytes().to_vec(), id.clone()));
            }
            for title in &tenant.ae_titles {
                let title = title.trim().to_string();
                if title.is_empty() || title.len() > 16 {
                    anyhow::bail!("AE title {title:?} of hospital {id} must have 1 to 16 characters");
                }
                if table.ae_titles.iter().any(|(t, _)| *t == title) {
                    anyhow::bail!("AE title {title} is given to two hospitals");
                }
                table.ae_titles.push((title, id.clone()));
            }
        }
        Ok(table)
    }

    /// Returns the hospital of a bearer token. Every token is compared in full, so the
    /// time taken does not reveal how much of a guess was right.
    pub fn by_token(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (known, hospital) in &self.tokens {
            if constant_time_eq(known, token.as_bytes()) {
                found = Some(hospital.as_str());
            }
        }
        found
    }

    /// Returns the hospital of a calling AE title (trailing spaces ignored).
    pub fn by_ae_title(&self, title: &str) -> Option<&str> {
        let title = title.trim();
        self.ae_titles.iter().find(|(t, _)| t == title).map(|(_, h)| h.as_str())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(hospital: &str, token: &str, ae: &str) -> Tenant {
        Tenant {
            hospital: hospital.into(),
            tokens: vec![token.into()],
            ae_titles: vec![ae.into()],
        }
    }

    #[test]
    fn credentials_map_to_their_hospital() {
        let tenants = Tenants::new(&[
            tenant("north", "north-token-0123456789", "NORTH_CT"),
            tenant("south", "south-token-0123456789", "SOUTH_PACS"),
        ])
        .unwrap();
        assert_eq!(tenants.by_token("south-token-0123456789"), Some("south"));
        assert_eq!(tenants.by_token("south-token-012345678"), None);
        assert_eq!(tenants.by_token(""), None);
        assert_eq!(tenants.by_ae_title("NORTH_CT  "), Some("north"));
        assert_eq!(tenants.by_ae_title("OTHER"), None);
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(Tenants::new(&[tenant("a/b", "token-0123456789abc", "A")]).is_err());
        assert!(Tenants::new(&[tenant("a", "short", "A")]).is_err());
        let shared = [tenant("a", "token-0123456789abc", "A"), tenant("b", "token-0123456789abc", "B")];
        assert!(Tenants::new(&shared).is_err());
        let shared_ae = [tenant("a", "token-0123456789abc", "X"), tenant("b", "token-0123456789xyz", "X")];
        assert!(Tenants::new(&shared_ae).is_err());
    }
}
