use std::path::PathBuf;

/// Errors of [`render`](crate::render) and [`write_series`](crate::write_series).
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    /// A field of the [`PhantomSpec`](crate::PhantomSpec) has an unusable value.
    #[error("invalid phantom spec: {field}: {message}")]
    InvalidSpec {
        field: &'static str,
        message: String,
    },

    /// Creating the output folder or writing a file failed.
    #[error("failed to write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// dicom-object could not build the file meta group of an instance.
    #[error("failed to build the DICOM file meta group for {}: {source}", path.display())]
    DicomMeta {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::WithMetaError>,
    },

    /// dicom-object could not encode or write an instance.
    #[error("failed to write DICOM file {}: {source}", path.display())]
    DicomWrite {
        path: PathBuf,
        #[source]
        source: Box<dicom_object::WriteError>,
    },

    /// Two instances would have the same file name (a 64-bit hash collision of their
    /// SOP Instance UIDs).
    #[error("file name {} is used by two instances; change the seed", path.display())]
    FileNameCollision { path: PathBuf },

    /// Serialising `ground_truth.json` failed.
    #[error("failed to serialise the ground truth to {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}
