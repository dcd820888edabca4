//! Object stores from URLs: `s3://bucket[/prefix]`, `file:///absolute/path` and
//! `memory://`.
//!
//! S3 settings come from the standard environment variables (`AWS_ENDPOINT`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ALLOW_HTTP`
//! for a plain-HTTP test server); TLS is the default. Writes that must not overwrite
//! (an instance under a known key) use conditional puts, which S3 servers check with
//! ETags.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Why a store operation failed: transient failures are worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid object store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object store error on {key}: {source}")]
    Backend {
        key: String,
        #[source]
        source: object_store::Error,
    },
}

impl StoreError {
    /// Returns whether the failure may go away by itself (network, server), as opposed
    /// to a missing object or a configuration error.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            _ => false,
        }
    }
}

/// Outcome of a create-only write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist and now contains the bytes.
    New,
    /// An object was already there; it was left as it was.
    Existed,
}

/// An object store with the few operations the services need, keys as plain strings.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

impl Store {
    /// Opens the store a URL names.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidUrl`] for an unknown scheme, a missing bucket, a relative file
    /// path or an S3 configuration the environment cannot complete.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, &std::collections::BTreeMap::new())
    }

    /// Opens the store a URL names, with S3 settings (`aws_endpoint`,
    /// `aws_access_key_id`, `aws_allow_http`, … as `object_store` names them) over those of
    /// the environment.
    ///
    /// # Errors
    ///
    /// As [`Store::open`], and an unknown option name.
    pub fn open_with(url: &str, options: &std::collections::BTreeMap<String, String>) -> Result<Store, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected s3://bucket, file:///path or memory://".into()))?;
        let inner: Arc<dyn ObjectStore> = match scheme {
            "memory" => Arc::new(InMemory::new()),
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid("a file URL needs an absolute path (file:///…)".into()));
                }
                std::fs::create_dir_all(rest).map_err(|e| invalid(format!("cannot create {rest}: {e}")))?;
                Arc::new(LocalFileSystem::new_with_prefix(rest).map_err(|e| invalid(e.to_string()))?)
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("no bucket name".into()));
                }
                // Without credentials, object_store would ask the cloud's instance metadata
                // service, which outside that cloud means a long wait and a vague error.
                let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
                let has_credentials = options.contains_key("aws_access_key_id")
                    || options.get("aws_skip_signature").is_some_and(|v| v == "true")
                    || ["AWS_ACCESS_KEY_ID", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
                        .iter()
                        .any(|name| set(name));
                if !has_credentials {
                    return Err(invalid(
                        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or aws_access_key_id in the store options), \
                         or use a Kubernetes service account (AWS_WEB_IDENTITY_TOKEN_FILE)"
                            .into(),
                    ));
                }
                let mut builder = AmazonS3Builder::from_env();
                for (key, value) in options {
                    let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(|e: object_store::Error| invalid(e.to_string()))?;
                    builder = builder.with_config(key, value);
                }
                let s3 = builder
                    .with_bucket_name(bucket)
                    .with_conditional_put(S3ConditionalPut::ETagMatch)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                let prefix = prefix.trim_matches('/');
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix))
                }
            }
            other => return Err(invalid(format!("unknown scheme {other:?}"))),
        };
        Ok(Store {
            inner,
            url: url.to_string(),
        })
    }

    /// Returns the URL the store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the underlying `object_store` handle.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Writes `bytes` under `key`, replacing what was there.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`].
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&path(key)?, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|source| backend(key, source))
    }

    /// Writes `bytes` under `key` unless an object is already there.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`].
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<Created, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.inner.put_opts(&path(key)?, PutPayload::from_bytes(bytes), options).await {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Existed),
            Err(source) => Err(backend(key, source)),
        }
    }

    /// Reads the whole object under `key`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] when there is none, [`StoreError::Backend`] otherwise.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let result = self.inner.get(&path(key)?).await;
        match result {
            Ok(object) => object.bytes().await.map_err(|source| backend(key, source)),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound { key: key.to_string() }),
            Err(source) => Err(backend(key, source)),
        }
    }

    /// Reads the object under `key`, or `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`].
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.get(key).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists the keys under `prefix` (a folder-like key prefix without trailing `/`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        use futures::TryStreamExt;
        let prefix_path = path(prefix)?;
        let objects: Vec<_> = self
            .inner
            .list(Some(&prefix_path))
            .try_collect()
            .await
            .map_err(|source| backend(prefix, source))?;
        let mut keys: Vec<String> = objects.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        Ok(keys)
    }

    /// Deletes the object under `key`; a missing object is not an error.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`].
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(backend(key, source)),
        }
    }
}

fn path(key: &str) -> Result<StorePath, StoreError> {
    StorePath::parse(key).map_err(|e| StoreError::Backend {
        key: key.to_string(),
        source: e.into(),
    })
}

fn backend(key: &str, source: object_store::Error) -> StoreError {
    StoreError::Backend {
        key: key.to_string(),
        source,
    }
}

/// Turns a value into one safe key segment: DICOM UIDs (digits and dots) and tenant
/// names pass unchanged; anything else becomes `_`.
pub fn key_segment(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => cleaned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trips_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&url).unwrap();
        assert_eq!(store.put_if_absent("a/b.dcm", Bytes::from_static(b"one")).await.unwrap(), Created::New);
        assert_eq!(store.put_if_absent("a/b.dcm", Bytes::from_static(b"two")).await.unwrap(), Created::Existed);
        assert_eq!(store.get("a/b.dcm").await.unwrap(), Bytes::from_static(b"one"));
        assert!(store.get_opt("a/c.dcm").await.unwrap().is_none());
        assert!(matches!(store.get("a/c.dcm").await, Err(StoreError::NotFound { .. })));
        store.put("a/d.json", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(store.list("a").await.unwrap(), vec!["a/b.dcm".to_string(), "a/d.json".to_string()]);
        store.delete("a/d.json").await.unwrap();
        store.delete("a/d.json").await.unwrap();
        assert_eq!(store.list("a").await.unwrap().len(), 1);
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for (url, words) in [
            ("bucket", "expected"),
            ("ftp://x", "unknown scheme"),
            ("file://relative/path", "absolute"),
            ("s3://", "no bucket"),
        ] {
            let error = Store::open(url).unwrap_err().to_string();
            assert!(error.contains(words), "{url}: {error}");
        }
        assert!(Store::open("memory://").is_ok());
    }

    #[test]
    fn key_segments_cannot_escape() {
        assert_eq!(key_segment("1.2.840.113619"), "1.2.840.113619");
        assert_eq!(key_segment("../etc"), ".._etc");
        assert_eq!(key_segment(".."), "_");
        assert_eq!(key_segment("a/b c"), "a_b_c");
        assert_eq!(key_segment(""), "_");
    }
}

/// Object keys of every stage's outputs. Keys are built from ids and versions only, so a
/// replayed event rewrites the same objects.
pub mod keys {
    use super::key_segment;

    fn series_path(hospital: &str, study_uid: &str, series_uid: &str) -> String {
        format!("{}/{}/{}", key_segment(hospital), key_segment(study_uid), key_segment(series_uid))
    }

    /// Prefix of the stored instances of a series.
    pub fn series_instances_prefix(hospital: &str, study_uid: &str, series_uid: &str) -> String {
        format!("instances/{}/", series_path(hospital, study_uid, series_uid))
    }

    /// Key of a stored instance.
    pub fn instance_key(hospital: &str, study_uid: &str, series_uid: &str, sop_instance_uid: &str) -> String {
        format!("{}{}.dcm", series_instances_prefix(hospital, study_uid, series_uid), key_segment(sop_instance_uid))
    }

    /// Key of the lobe bundle of one revision of a series, written by one preprocessing
    /// version.
    pub fn bundle_key(hospital: &str, study_uid: &str, series_uid: &str, revision: u32, preprocess_version: &str) -> String {
        format!(
            "lobes/{}/r{revision}/{}/lobes.safetensors.zst",
            series_path(hospital, study_uid, series_uid),
            key_segment(preprocess_version)
        )
    }

    /// Prefix of the network outputs (maps, overlays) of one revision of a series and one
    /// model version.
    pub fn results_prefix(hospital: &str, study_uid: &str, series_uid: &str, revision: u32, model_version: &str) -> String {
        format!("results/{}/r{revision}/{}/", series_path(hospital, study_uid, series_uid), key_segment(model_version))
    }

    /// Prefix of a study's report files (JSON, HTML, overlays) for one reported series,
    /// revision and model version.
    pub fn report_prefix(hospital: &str, study_uid: &str, series_uid: &str, revision: u32, model_version: &str) -> String {
        format!("reports/{}/r{revision}/{}/", series_path(hospital, study_uid, series_uid), key_segment(model_version))
    }
}
