//! Fuzz target: arbitrary bytes as one or more DICOM files, through every public entry
//! point of the reader that takes a whole file.
//!
//! The input is split at [`FILE_SEPARATOR`] into at most [`MAX_FILES`] files. Each file
//! goes through `read_header_bytes` (the in-memory path that ingest uses) and
//! `read_slice`, and the folder of all files goes through `read_volume`. The reader must
//! return a volume or a `ReadError` with a reason code. A panic that escapes it, a hang
//! (libFuzzer's `-timeout`) or an allocation past `-rss_limit_mb` is a crash.
//!
//! Panics: libfuzzer-sys installs a panic hook that aborts the process before any
//! unwinding, so the reader's own `catch_unwind` around the pixel codecs could never run.
//! [`install_panic_hook`] replaces that hook with one that only records the panic. A
//! panic that the reader catches (a codec failing on corrupt data, which the reader
//! turns into `decode_failed`) is therefore no crash. A panic that escapes the reader
//! unwinds to [`check_one_input`], which prints the recorded message and aborts, and
//! libFuzzer saves the input as a crash.

#![no_main]

use std::backtrace::Backtrace;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use lungstream_dicom::{read_header_bytes, read_slice, read_volume, ReadError, ReaderConfig};

/// Marks the start of the next file in an input. scripts/fuzz writes the same bytes
/// between the files of its multi-file seeds.
const FILE_SEPARATOR: &[u8] = b"\0LUNGSTREAM-FUZZ-NEXT-FILE\0";

/// More files add little coverage and slow every run down.
const MAX_FILES: usize = 8;

/// The last panic seen by the hook, with its location and (when `RUST_BACKTRACE` is
/// set) its backtrace.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fuzz_target!(init: install_panic_hook(), |data: &[u8]| check_one_input(data));

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let report = format!("{info}\n{}", Backtrace::capture());
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }));
}

fn check_one_input(data: &[u8]) {
    if panic::catch_unwind(AssertUnwindSafe(|| read_all(data))).is_err() {
        let report = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        eprintln!(
            "A panic escaped the DICOM reader: {}",
            report.as_deref().unwrap_or("(no message recorded)")
        );
        std::process::abort();
    }
}

fn read_all(data: &[u8]) {
    let files = split_files(data);
    let directory = scratch_directory();
    let mut paths = Vec::with_capacity(files.len());
    for (index, bytes) in files.iter().enumerate() {
        let path = directory.path().join(format!("file-{index}.dcm"));
        std::fs::write(&path, bytes).expect("cannot write a fuzz input file");
        paths.push(path);
    }

    // Per-file tools accept a single slice, so one file can reach volume assembly.
    let config = ReaderConfig {
        min_slices: 1,
        ..ReaderConfig::with_secret(b"fuzz".to_vec())
    };
    for (bytes, path) in files.iter().zip(&paths) {
        match read_header_bytes(bytes, path, &config) {
            Ok((header, _sop_class_uid)) => check_header(&header),
            Err(error) => check_error(&error),
        }
        match read_slice(path, &config) {
            Ok(image) => assert_eq!(image.hu.len(), image.rows * image.columns, "slice size"),
            Err(error) => check_error(&error),
        }
    }
    match read_volume(&[directory.path().to_path_buf()], &config) {
        Ok((volume, inventory)) => {
            assert_eq!(volume.hu.len(), volume.dims.voxels(), "HU values per voxel");
            assert_eq!(volume.padding.len(), volume.dims.voxels(), "padding bits per voxel");
            assert_eq!(volume.slices.len(), volume.dims.slices, "slice metadata per slice");
            assert!(inventory.files_seen <= files.len(), "more files seen than written");
        }
        Err(error) => check_error(&error),
    }
}

/// Splits an input into files at [`FILE_SEPARATOR`]. The last file takes the rest.
fn split_files(data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = data;
    while files.len() + 1 < MAX_FILES {
        let Some(at) = rest.windows(FILE_SEPARATOR.len()).position(|w| w == FILE_SEPARATOR) else {
            break;
        };
        files.push(&rest[..at]);
        rest = &rest[at + FILE_SEPARATOR.len()..];
    }
    files.push(rest);
    files
}

/// Creates a temporary folder for one input, in memory (/dev/shm) where the system has it.
fn scratch_directory() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let parent: PathBuf = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    tempfile::Builder::new()
        .prefix("lungstream-fuzz-")
        .tempdir_in(parent)
        .expect("cannot create a temporary folder")
}

fn check_header(header: &lungstream_dicom::SliceHeader) {
    assert!(header.rows > 0, "accepted 0 rows");
    assert!(header.columns > 0, "accepted 0 columns");
}

/// Every error must map to a reason code and format without panicking.
fn check_error(error: &ReadError) {
    let _ = error.reason();
    let _ = error.to_string();
}
