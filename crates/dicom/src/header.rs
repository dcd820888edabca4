//! Reading one file's header (everything before _Pixel Data_) and checking that it is a
//! single-frame grey-scale CT image this build can decode.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::Serialize;

use crate::config::ReaderConfig;
use crate::error::ReadError;
use crate::file_meta::{read_meta_group, rebuild_file_meta, MetaGroup};
use crate::lengths;
use crate::patient_key::patient_key;

/// Explicit VR Big Endian, retired from the standard but still met in archives.
pub(crate) const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// SOP classes accepted as CT images: CT, Enhanced CT and Legacy Converted Enhanced CT
/// Image Storage.
const CT_SOP_CLASSES: &[&str] = &[
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
];

/// _Pixel Padding Value_ and the optional _Pixel Padding Range Limit_, as stored values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PixelPadding {
    /// Stored value that marks padding, sign-corrected for signed pixels.
    pub value: i32,
    /// Other end of the padding range, when _Pixel Padding Range Limit_ is present.
    pub range_limit: Option<i32>,
}

impl PixelPadding {
    /// Returns whether a stored value is padding.
    pub fn contains(&self, stored: i32) -> bool {
        match self.range_limit {
            None => stored == self.value,
            Some(limit) => {
                let (low, high) = if limit < self.value {
                    (limit, self.value)
                } else {
                    (self.value, limit)
                };
                (low..=high).contains(&stored)
            }
        }
    }
}

/// Attributes the reader needs from one CT image's header. It contains no patient
/// attributes: the _Patient ID_ is turned into a pseudonymous key on reading and dropped.
#[derive(Clone, Debug, Serialize)]
pub struct SliceHeader {
    /// Source of the file: a path, or an object key for bytes from a store.
    pub path: PathBuf,
    pub file_bytes: u64,
    pub transfer_syntax_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub instance_number: Option<i32>,
    pub rows: u32,
    pub columns: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    /// _Pixel Representation_ 1: two's complement samples.
    pub signed: bool,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    pub padding: Option<PixelPadding>,
    /// _Image Orientation (Patient)_: row direction cosines, then column direction cosines.
    pub orientation: [f64; 6],
    /// _Image Position (Patient)_ of the first transmitted pixel, mm.
    pub position: [f64; 3],
    /// _Pixel Spacing_: between rows, then between columns, mm.
    pub pixel_spacing: [f64; 2],
    pub slice_thickness_mm: Option<f64>,
    pub kernel: Option<String>,
    pub manufacturer: Option<String>,
    pub scanner_model: Option<String>,
    pub acquisition_date: Option<String>,
    pub acquisition_time: Option<String>,
    pub patient_position: Option<String>,
    /// HMAC-SHA256 of _Patient ID_ (hex); `None` when the file has no _Patient ID_.
    pub patient_key: Option<String>,
}

/// Reads and checks the header of the DICOM file at `path` without reading its pixel data.
///
/// # Errors
///
/// Every reason that makes the file unusable as one slice of an axial CT stack, except
/// the geometry of the whole stack. These are: not DICOM, truncated, not CT, localizer,
/// no pixel data, a transfer syntax or pixel format this build cannot decode,
/// multi-frame, over the size limits, missing geometry, not axial.
pub fn read_header(path: &Path, config: &ReaderConfig) -> Result<SliceHeader, ReadError> {
    let io_error = |source: std::io::Error| ReadError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let file = File::open(path).map_err(io_error)?;
    let file_bytes = file.metadata().map_err(io_error)?.len();
    if file_bytes > config.max_file_bytes {
        return Err(ReadError::TooLarge {
            subject: path.display().to_string(),
            what: "the file size in bytes",
            value: file_bytes,
            limit: config.max_file_bytes,
        });
    }
    // The headers of a CT image fit well within the first 64 KiB.
    let mut prefix = vec![0u8; file_bytes.min(64 * 1024) as usize];
    file.read_exact_at(&mut prefix, 0).map_err(io_error)?;
    let mut prefix_reader = prefix.as_slice();
    skip_preamble(&mut prefix_reader, path)?;
    let dicm_offset = prefix.len() - prefix_reader.len();
    if !check_declared_lengths(prefix_reader, file_bytes - dicm_offset as u64, path)? {
        // Headers past the prefix (or a deflated data set): check the whole file, because
        // the parser below reads up to Pixel Data wherever it is.
        let bytes = std::fs::read(path).map_err(io_error)?;
        let mut reader = bytes.as_slice();
        skip_preamble(&mut reader, path)?;
        check_declared_lengths(reader, reader.len() as u64, path)?;
    }

    let mut reader = BufReader::new(&file);
    skip_preamble(&mut reader, path)?;
    let object = match OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .read_until(tags::PIXEL_DATA)
        .from_reader(&mut reader)
    {
        Ok(object) => object,
        Err(dicom_object::ReadError::ParseMetaDataSet { .. }) => {
            // Rare: a meta group that needs rebuilding; read the whole file for that.
            let bytes = std::fs::read(path).map_err(io_error)?;
            parse_from_bytes(&bytes, path, Some(tags::PIXEL_DATA))?
        }
        Err(error) => return Err(classify_parse_error(path, &error)),
    };
    drop(reader);
    let has_pixel_data = has_complete_pixel_data(&file, file_bytes, &object, path)?;
    let header = header_from_object(&object, path, file_bytes, has_pixel_data, config)?;
    Ok(header)
}

/// Returns whether the file has a complete _Pixel Data_ element.
///
/// For uncompressed pixel data the element normally ends the file, so its header sits
/// exactly _Rows_ × _Columns_ × _Number of Frames_ samples before the end. Checking those
/// bytes avoids reading the pixels twice. Anything else (compressed data, trailing
/// elements, a short file) is settled by parsing the whole file.
///
/// # Errors
///
/// `truncated` or `invalid_dicom` when the whole file does not parse.
fn has_complete_pixel_data(
    file: &File,
    file_bytes: u64,
    object: &DefaultDicomObject,
    path: &Path,
) -> Result<bool, ReadError> {
    let transfer_syntax = object.meta().transfer_syntax().trim_end_matches('\0');
    let attrs = Attributes { object, path };
    if is_native(transfer_syntax) {
        if let (Some(rows), Some(columns), Some(bits)) = (
            attrs.int(tags::ROWS),
            attrs.int(tags::COLUMNS),
            attrs.int(tags::BITS_ALLOCATED),
        ) {
            let frames = attrs.int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
            let bits_total = (rows * columns * frames).saturating_mul(bits).max(0) as u64;
            let value_len = bits_total.div_ceil(8).next_multiple_of(2);
            let implicit = transfer_syntax == uids::IMPLICIT_VR_LITTLE_ENDIAN;
            let header_len: u64 = if implicit { 8 } else { 12 };
            if let Some(offset) = file_bytes.checked_sub(value_len + header_len) {
                let mut element_header = [0u8; 12];
                let element_header = &mut element_header[..header_len as usize];
                if file.read_exact_at(element_header, offset).is_ok()
                    && is_pixel_data_header(element_header, transfer_syntax, value_len)
                {
                    return Ok(true);
                }
            }
        }
    }
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    })?;
    let full = parse_object(&bytes, path)?;
    Ok(full.element_opt(tags::PIXEL_DATA).ok().flatten().is_some())
}

/// Returns the uncompressed pixel bytes of a whole file held in memory, when _Pixel
/// Data_ is the file's last element (as in almost every file), without parsing it.
pub(crate) fn trailing_native_pixel_data<'a>(bytes: &'a [u8], header: &SliceHeader) -> Option<&'a [u8]> {
    if !is_native(&header.transfer_syntax_uid) {
        return None;
    }
    let bits = u64::from(header.rows) * u64::from(header.columns) * u64::from(header.bits_allocated);
    let value_len = bits.div_ceil(8).next_multiple_of(2);
    let header_len: u64 = if header.transfer_syntax_uid == uids::IMPLICIT_VR_LITTLE_ENDIAN { 8 } else { 12 };
    let start = (bytes.len() as u64).checked_sub(value_len + header_len)? as usize;
    let element_header = &bytes[start..start + header_len as usize];
    is_pixel_data_header(element_header, &header.transfer_syntax_uid, value_len)
        .then(|| &bytes[start + header_len as usize..])
}

/// Returns whether `bytes` encode the header of a _Pixel Data_ element of `value_len`
/// bytes in the given native transfer syntax.
fn is_pixel_data_header(bytes: &[u8], transfer_syntax: &str, value_len: u64) -> bool {
    let Ok(value_len) = u32::try_from(value_len) else {
        return false;
    };
    match transfer_syntax {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => {
            bytes[0..4] == [0xE0, 0x7F, 0x10, 0x00] && bytes[4..8] == value_len.to_le_bytes()
        }
        uids::EXPLICIT_VR_LITTLE_ENDIAN => {
            bytes[0..4] == [0xE0, 0x7F, 0x10, 0x00]
                && (&bytes[4..6] == b"OW" || &bytes[4..6] == b"OB")
                && bytes[8..12] == value_len.to_le_bytes()
        }
        _ => {
            bytes[0..4] == [0x7F, 0xE0, 0x00, 0x10]
                && (&bytes[4..6] == b"OW" || &bytes[4..6] == b"OB")
                && bytes[8..12] == value_len.to_be_bytes()
        }
    }
}

/// Rejects a file whose element headers declare more bytes than it has, before dicom-object
/// would allocate buffers of the declared sizes (see [`crate::lengths`]), and a deflated
/// data set that inflates to more than [`lengths::MAX_INFLATED_BYTES`].
///
/// `bytes` starts at the `DICM` prefix and may be only the start of the file. `total`
/// counts the bytes from the prefix to the end of the file. Returns whether every element
/// up to _Pixel Data_ was checked. For a prefix, that is false when the prefix ends
/// before _Pixel Data_, and always for a deflated data set. The caller must then check
/// the whole file.
fn check_declared_lengths(bytes: &[u8], total: u64, path: &Path) -> Result<bool, ReadError> {
    let whole_file = bytes.len() as u64 >= total;
    let (offset, transfer_syntax) = match read_meta_group(bytes, total) {
        MetaGroup::Read {
            data_set_offset,
            transfer_syntax,
        } => (data_set_offset, transfer_syntax),
        MetaGroup::Overrun(overrun) => return Err(overrun_error(path, &overrun)),
        MetaGroup::Incomplete if !whole_file => return Ok(false),
        // dicom-object rejects the group; parse_from_bytes then parses the data set after
        // the group that rebuild_file_meta finds, so that one is checked.
        MetaGroup::Rejected | MetaGroup::Incomplete => match lengths::read_file_meta(bytes) {
            Some(found) => found,
            // dicom-object reports a broken meta group better.
            None => return Ok(true),
        },
    };
    let Some(encoding) = lengths::Encoding::of_transfer_syntax(&transfer_syntax) else {
        // Deflated: the element headers can only be walked after inflating.
        if !whole_file {
            return Ok(false);
        }
        let inflated = lengths::inflate(&bytes[offset..]).map_err(|()| ReadError::TooLarge {
            subject: path.display().to_string(),
            what: "the inflated data set in bytes (inflating stopped there)",
            value: lengths::MAX_INFLATED_BYTES + 1,
            limit: lengths::MAX_INFLATED_BYTES,
        })?;
        let walk = lengths::walk_lengths(&inflated, inflated.len() as u64, lengths::Encoding::ExplicitLittle);
        return match walk.overrun {
            None => Ok(true),
            Some(overrun) => Err(overrun_error(path, &overrun)),
        };
    };
    let walk = lengths::walk_lengths(&bytes[offset..], total - offset as u64, encoding);
    match walk.overrun {
        None => Ok(whole_file || walk.reached_pixel_data),
        Some(overrun) => Err(overrun_error(path, &overrun)),
    }
}

fn overrun_error(path: &Path, overrun: &lengths::LengthOverrun) -> ReadError {
    ReadError::Truncated {
        path: path.to_path_buf(),
        detail: format!(
            "element ({:04X},{:04X}) declares {} bytes but only {} remain in the file",
            overrun.group, overrun.element, overrun.declared, overrun.available
        ),
    }
}

/// Reads and checks the header of a whole DICOM file held in memory (an upload), as
/// [`read_header`] does for a file. `name` stands for the file in errors. Returns the
/// header and the _SOP Class UID_ of the file meta group.
///
/// # Errors
///
/// As [`read_header`].
pub fn read_header_bytes(bytes: &[u8], name: &Path, config: &ReaderConfig) -> Result<(SliceHeader, String), ReadError> {
    let file_bytes = bytes.len() as u64;
    if file_bytes > config.max_file_bytes {
        return Err(ReadError::TooLarge {
            subject: name.display().to_string(),
            what: "the file size in bytes",
            value: file_bytes,
            limit: config.max_file_bytes,
        });
    }
    let object = parse_object(bytes, name)?;
    let has_pixel_data = object.element(tags::PIXEL_DATA).is_ok();
    let header = header_from_object(&object, name, file_bytes, has_pixel_data, config)?;
    let sop_class_uid = object.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    Ok((header, sop_class_uid))
}

/// Parses a whole DICOM Part 10 file held in memory (from a file or an object store).
pub fn parse_object(bytes: &[u8], path: &Path) -> Result<DefaultDicomObject, ReadError> {
    parse_from_bytes(bytes, path, None)
}

/// Parses `bytes` (a whole file, or its start), up to `stop` when given. When the file
/// meta group is rejected, tries again once with the group rebuilt from its essential
/// elements.
fn parse_from_bytes(
    bytes: &[u8],
    path: &Path,
    stop: Option<dicom_core::Tag>,
) -> Result<DefaultDicomObject, ReadError> {
    let mut reader = bytes;
    skip_preamble(&mut reader, path)?;
    check_declared_lengths(reader, reader.len() as u64, path)?;
    let parse = |source: &[u8]| {
        let options = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
        match stop {
            Some(tag) => options.read_until(tag).from_reader(source),
            None => options.from_reader(source),
        }
    };
    match parse(reader) {
        Ok(object) => Ok(object),
        Err(error @ dicom_object::ReadError::ParseMetaDataSet { .. }) => {
            let Some(rebuilt) = rebuild_file_meta(reader) else {
                return Err(classify_parse_error(path, &error));
            };
            tracing::debug!(path = %path.display(), "Rebuilt an invalid file meta group: {error}.");
            parse(&rebuilt).map_err(|e| classify_parse_error(path, &e))
        }
        Err(error) => Err(classify_parse_error(path, &error)),
    }
}

/// Checks a parsed object's header. `has_pixel_data` is whether the file has a
/// complete _Pixel Data_ element, because the object may have been read only up to it.
pub fn header_from_object(
    object: &DefaultDicomObject,
    path: &Path,
    file_bytes: u64,
    has_pixel_data: bool,
    config: &ReaderConfig,
) -> Result<SliceHeader, ReadError> {
    let path_buf = path.to_path_buf();
    let attrs = Attributes { object, path };

    let sop_class_uid = object.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    let modality = attrs.string(tags::MODALITY).unwrap_or_default();
    if modality != "CT" || !CT_SOP_CLASSES.contains(&sop_class_uid.as_str()) {
        return Err(ReadError::NotCt {
            path: path_buf,
            modality,
            sop_class_uid,
        });
    }

    let image_type = attrs.strings(tags::IMAGE_TYPE);
    if image_type.iter().any(|t| t.eq_ignore_ascii_case("LOCALIZER")) {
        return Err(ReadError::Localizer {
            path: path_buf,
            image_type: image_type.join("\\"),
        });
    }
    if !has_pixel_data {
        return Err(ReadError::NoPixelData { path: path_buf });
    }

    let transfer_syntax_uid = object.meta().transfer_syntax().trim_end_matches('\0').to_string();
    match TransferSyntaxRegistry.get(&transfer_syntax_uid) {
        Some(ts) if ts.can_decode_all() => {}
        Some(ts) => {
            return Err(ReadError::UnsupportedTransferSyntax {
                path: path_buf,
                uid: transfer_syntax_uid,
                name: ts.name().to_string(),
            })
        }
        None => {
            return Err(ReadError::UnsupportedTransferSyntax {
                path: path_buf,
                uid: transfer_syntax_uid,
                name: "unknown".to_string(),
            })
        }
    }

    // jpeg-decoder, dicom-rs's JPEG codec, reads 8-bit samples only; CT is 12-bit.
    if transfer_syntax_uid == uids::JPEG_EXTENDED12_BIT && attrs.int(tags::BITS_STORED).unwrap_or(8) > 8 {
        return Err(ReadError::UnsupportedTransferSyntax {
            path: path_buf,
            uid: transfer_syntax_uid,
            name: "JPEG Extended (Process 2 & 4) with 12-bit samples".to_string(),
        });
    }

    let frames = attrs.int(tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if frames > 1 {
        return Err(ReadError::UnsupportedMultiframe {
            path: path_buf,
            frames: frames as u32,
        });
    }
    check_pixel_format(&attrs)?;

    let rows = attrs.required_u32(tags::ROWS, "Rows")?;
    let columns = attrs.required_u32(tags::COLUMNS, "Columns")?;
    for (value, what) in [(rows, "Rows"), (columns, "Columns")] {
        if value == 0 {
            return Err(attrs.invalid("Rows/Columns", value.to_string()));
        }
        if value > config.max_matrix {
            return Err(ReadError::TooLarge {
                subject: path.display().to_string(),
                what: if what == "Rows" { "Rows" } else { "Columns" },
                value: u64::from(value),
                limit: u64::from(config.max_matrix),
            });
        }
    }
    let bits_allocated = attrs.required_u32(tags::BITS_ALLOCATED, "Bits Allocated")? as u16;
    let bits_stored = attrs.required_u32(tags::BITS_STORED, "Bits Stored")? as u16;
    let high_bit = attrs
        .int(tags::HIGH_BIT)
        .map(|v| v as u16)
        .unwrap_or(bits_stored.saturating_sub(1));
    if bits_stored == 0 || bits_stored > bits_allocated || high_bit >= bits_allocated || high_bit + 1 < bits_stored {
        return Err(attrs.invalid(
            "Bits Stored/High Bit",
            format!("Bits Allocated {bits_allocated}, Bits Stored {bits_stored}, High Bit {high_bit}"),
        ));
    }
    let signed = attrs.int(tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;

    let rescale_slope = attrs.float(tags::RESCALE_SLOPE).unwrap_or(1.0);
    let rescale_intercept = attrs.float(tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    if !rescale_slope.is_finite() || rescale_slope == 0.0 || !rescale_intercept.is_finite() {
        return Err(attrs.invalid(
            "Rescale Slope/Intercept",
            format!("{rescale_slope}/{rescale_intercept}"),
        ));
    }

    let orientation = attrs.required_floats::<6>(tags::IMAGE_ORIENTATION_PATIENT, "Image Orientation (Patient)")?;
    let position = attrs.required_floats::<3>(tags::IMAGE_POSITION_PATIENT, "Image Position (Patient)")?;
    let pixel_spacing = attrs.required_floats::<2>(tags::PIXEL_SPACING, "Pixel Spacing")?;
    if pixel_spacing.iter().any(|s| *s <= 0.0) {
        return Err(attrs.invalid("Pixel Spacing", format!("{pixel_spacing:?}")));
    }
    crate::geometry::check_axial(&orientation, config.max_axial_tilt_deg, path)?;

    let padding = attrs.int(tags::PIXEL_PADDING_VALUE).map(|value| PixelPadding {
        value: sign_correct(value, signed),
        range_limit: attrs
            .int(tags::PIXEL_PADDING_RANGE_LIMIT)
            .map(|limit| sign_correct(limit, signed)),
    });
    let patient_key = attrs
        .string(tags::PATIENT_ID)
        .map(|id| patient_key(&config.patient_key_secret, &id));

    Ok(SliceHeader {
        path: path_buf,
        file_bytes,
        transfer_syntax_uid,
        sop_instance_uid: attrs.required_string(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        study_uid: attrs.required_string(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        series_uid: attrs.required_string(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        frame_of_reference_uid: attrs.string(tags::FRAME_OF_REFERENCE_UID),
        instance_number: attrs.int(tags::INSTANCE_NUMBER).map(|v| v as i32),
        rows,
        columns,
        bits_allocated,
        bits_stored,
        high_bit,
        signed,
        rescale_slope,
        rescale_intercept,
        padding,
        orientation,
        position,
        pixel_spacing,
        slice_thickness_mm: attrs.float(tags::SLICE_THICKNESS),
        kernel: attrs.strings(tags::CONVOLUTION_KERNEL).first().cloned(),
        manufacturer: attrs.string(tags::MANUFACTURER),
        scanner_model: attrs.string(tags::MANUFACTURER_MODEL_NAME),
        acquisition_date: attrs.string(tags::ACQUISITION_DATE),
        acquisition_time: attrs.string(tags::ACQUISITION_TIME),
        patient_position: attrs.string(tags::PATIENT_POSITION),
        patient_key,
    })
}

/// Rejects colour, palette, 1-bit and 32-bit images: CT is one 8- or 16-bit grey sample.
fn check_pixel_format(attrs: &Attributes<'_>) -> Result<(), ReadError> {
    let samples = attrs.int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = attrs.string(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let bits_allocated = attrs.int(tags::BITS_ALLOCATED).unwrap_or(0);
    let monochrome = photometric == "MONOCHROME1" || photometric == "MONOCHROME2";
    if samples != 1 || !monochrome || !(bits_allocated == 8 || bits_allocated == 16) {
        return Err(ReadError::UnsupportedPixelFormat {
            path: attrs.path.to_path_buf(),
            detail: format!(
                "Samples per Pixel {samples}, Photometric Interpretation {photometric:?}, \
                 Bits Allocated {bits_allocated}; CT needs one 8- or 16-bit grey sample"
            ),
        });
    }
    Ok(())
}

/// Interprets a padding value written as unsigned (VR US, e.g. 63536) for signed pixels as
/// the negative 16-bit value it stands for (-2000).
fn sign_correct(value: i64, signed: bool) -> i32 {
    if signed && value > i64::from(i16::MAX) && value <= i64::from(u16::MAX) {
        (value - 65536) as i32
    } else {
        value.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    }
}

/// Returns whether pixel data in this transfer syntax is stored uncompressed.
pub(crate) fn is_native(transfer_syntax_uid: &str) -> bool {
    [
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    ]
    .contains(&transfer_syntax_uid)
}

/// Positions `reader` at the `DICM` prefix: after the 128-byte preamble when there is one,
/// or at the start for files written without it.
fn skip_preamble<R: BufRead>(reader: &mut R, path: &Path) -> Result<(), ReadError> {
    let head = reader.fill_buf().map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source: source.into(),
    })?;
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        reader.consume(128);
        Ok(())
    } else if head.starts_with(b"DICM") {
        Ok(())
    } else {
        Err(ReadError::InvalidDicom {
            path: path.to_path_buf(),
            detail: "no DICM prefix at byte 0 or 128 (not a DICOM Part 10 file)".to_string(),
        })
    }
}

/// Names of retired JPEG transfer syntaxes that dicom-rs does not register, for messages.
fn retired_transfer_syntax_name(uid: &str) -> Option<&'static str> {
    match uid {
        "1.2.840.10008.1.2.4.52" => Some("JPEG Extended, processes 3 and 5 (retired)"),
        "1.2.840.10008.1.2.4.53" => Some("JPEG Spectral Selection, processes 6 and 8 (retired)"),
        "1.2.840.10008.1.2.4.54" => Some("JPEG Spectral Selection, processes 7 and 9 (retired)"),
        "1.2.840.10008.1.2.4.55" => Some("JPEG Full Progression, processes 10 and 12 (retired)"),
        "1.2.840.10008.1.2.4.56" => Some("JPEG Full Progression, processes 11 and 13 (retired)"),
        _ => None,
    }
}

/// Maps a dicom-object parse error to `unsupported_transfer_syntax`, to `truncated` when
/// the input ended early, else to `invalid_dicom`.
fn classify_parse_error(path: &Path, error: &dicom_object::ReadError) -> ReadError {
    use dicom_object::ReadError as ObjectError;
    match error {
        ObjectError::ReadUnrecognizedTransferSyntax { uid, .. } => {
            let uid = uid.trim_end_matches('\0');
            return ReadError::UnsupportedTransferSyntax {
                path: path.to_path_buf(),
                uid: uid.to_string(),
                name: retired_transfer_syntax_name(uid).unwrap_or("unknown").to_string(),
            };
        }
        ObjectError::ReadUnsupportedTransferSyntax { uid, name, .. }
        | ObjectError::ReadUnsupportedTransferSyntaxWithSuggestion { uid, name, .. } => {
            return ReadError::UnsupportedTransferSyntax {
                path: path.to_path_buf(),
                uid: uid.to_string(),
                name: name.to_string(),
            }
        }
        _ => {}
    }
    let mut detail = error.to_string();
    let mut truncated = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            truncated |= io.kind() == io::ErrorKind::UnexpectedEof;
        }
        let text = e.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = e.source();
    }
    let lower = detail.to_ascii_lowercase();
    truncated |= lower.contains("unexpected end") || lower.contains("end of file");
    if truncated {
        ReadError::Truncated {
            path: path.to_path_buf(),
            detail,
        }
    } else {
        ReadError::InvalidDicom {
            path: path.to_path_buf(),
            detail,
        }
    }
}

/// Typed access to a parsed object's attributes, with errors that name the file.
struct Attributes<'a> {
    object: &'a DefaultDicomObject,
    path: &'a Path,
}

impl Attributes<'_> {
    fn element(&self, tag: dicom_core::Tag) -> Option<&InMemElement> {
        self.object.element_opt(tag).ok().flatten()
    }

    fn string(&self, tag: dicom_core::Tag) -> Option<String> {
        let value = self.element(tag)?.to_str().ok()?;
        let trimmed = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        (!trimmed.is_empty()).then(|| trimmed.to_string())
    }

    fn strings(&self, tag: dicom_core::Tag) -> Vec<String> {
        self.element(tag)
            .and_then(|e| e.to_multi_str().ok().map(|v| v.to_vec()))
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string())
            .collect()
    }

    fn int(&self, tag: dicom_core::Tag) -> Option<i64> {
        self.element(tag)?.to_int::<i64>().ok()
    }

    fn float(&self, tag: dicom_core::Tag) -> Option<f64> {
        self.element(tag)?.to_float64().ok().filter(|v| v.is_finite())
    }

    fn invalid(&self, attribute: &'static str, value: String) -> ReadError {
        ReadError::InvalidAttribute {
            path: self.path.to_path_buf(),
            attribute,
            value,
        }
    }

    fn missing(&self, attribute: &'static str) -> ReadError {
        ReadError::MissingAttribute {
            path: self.path.to_path_buf(),
            attribute,
        }
    }

    fn required_string(&self, tag: dicom_core::Tag, name: &'static str) -> Result<String, ReadError> {
        self.string(tag).ok_or_else(|| self.missing(name))
    }

    fn required_u32(&self, tag: dicom_core::Tag, name: &'static str) -> Result<u32, ReadError> {
        let element = self.element(tag).ok_or_else(|| self.missing(name))?;
        let value = element
            .to_int::<i64>()
            .map_err(|_| self.invalid(name, format!("{:?}", element.to_str().unwrap_or_default())))?;
        u32::try_from(value).map_err(|_| self.invalid(name, value.to_string()))
    }

    fn required_floats<const N: usize>(
        &self,
        tag: dicom_core::Tag,
        name: &'static str,
    ) -> Result<[f64; N], ReadError> {
        let element = self.element(tag).ok_or_else(|| self.missing(name))?;
        let values = element
            .to_multi_float64()
            .map_err(|_| self.invalid(name, element.to_str().unwrap_or_default().into_owned()))?;
        let array: [f64; N] = values
            .as_slice()
            .try_into()
            .map_err(|_| self.invalid(name, format!("{values:?}")))?;
        if array.iter().any(|v| !v.is_finite()) {
            return Err(self.invalid(name, format!("{array:?}")));
        }
        Ok(array)
    }
}
