//! The phantom specification: every option that shapes the anatomy, the geometry and
//! the DICOM encoding of a generated series, with its defaults and its validation.

use serde::{Deserialize, Serialize};

use crate::error::PhantomError;

/// Diagnosis that decides which lesions the phantom contains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// No lesions.
    #[default]
    Healthy,
    /// COVID-19 pneumonia: peripheral ground-glass opacities, mostly basal and posterior,
    /// and consolidations, one of them at a lung base touching the chest wall.
    Covid,
    /// Another lung disease: central nodules, a pleural effusion and a lobar consolidation.
    Other,
}

/// How the images are oriented in patient space (_Image Orientation (Patient)_ and
/// _Patient Position_). The anatomy itself is the same in patient coordinates for every
/// option, so the ground truth does not depend on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    /// HFS, row direction (1,0,0), column direction (0,1,0): the image's left is the
    /// patient's right and the image's top is anterior.
    #[default]
    Supine,
    /// HFP, row direction (-1,0,0), column direction (0,-1,0), table on the anterior side.
    Prone,
    /// HFS, column direction (0,-1,0): the row index increases toward anterior.
    FlippedRows,
    /// HFS, row direction (-1,0,0): the column index increases toward the patient's right.
    FlippedColumns,
    /// HFS, row direction (0,1,0), column direction (1,0,0): rows and columns swapped.
    Transposed,
}

/// How _Instance Number_ relates to slice position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceOrder {
    /// Instance numbers 1, 2, … from the lowest z (most inferior) to the highest.
    #[default]
    Ascending,
    /// Instance numbers 1, 2, … from the highest z (most superior) to the lowest.
    Descending,
    /// Instance numbers are a permutation of 1..=n drawn from the seed.
    Shuffled,
}

/// How the fill value outside the reconstruction circle is declared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingConvention {
    /// The fill is written but no _Pixel Padding Value_ attribute declares it.
    None,
    /// _Pixel Padding Value_ with the VR that matches _Pixel Representation_ (SS for
    /// signed pixels, US for unsigned ones).
    #[default]
    Attribute,
    /// Signed pixels, but _Pixel Padding Value_ written with VR US holding the 16-bit
    /// two's-complement pattern of the negative stored value (63536 for -2000), as some
    /// scanners do. Requires `signed`.
    UnsignedForSigned,
}

/// Transfer syntax of the written files (all uncompressed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferSyntax {
    /// 1.2.840.10008.1.2.1
    #[default]
    ExplicitVrLittleEndian,
    /// 1.2.840.10008.1.2
    ImplicitVrLittleEndian,
    /// 1.2.840.10008.1.2.2 (retired in the standard but still found in archives)
    ExplicitVrBigEndian,
}

impl TransferSyntax {
    /// Returns the _Transfer Syntax UID_.
    pub fn uid(self) -> &'static str {
        match self {
            TransferSyntax::ExplicitVrLittleEndian => "1.2.840.10008.1.2.1",
            TransferSyntax::ImplicitVrLittleEndian => "1.2.840.10008.1.2",
            TransferSyntax::ExplicitVrBigEndian => "1.2.840.10008.1.2.2",
        }
    }
}

/// A linear map from stored pixel values to Hounsfield units:
/// `HU = stored * slope + intercept` (_Rescale Slope_, _Rescale Intercept_).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rescale {
    pub intercept: f64,
    pub slope: f64,
}

impl Rescale {
    /// Converts HU to the stored value, rounded to the nearest integer and clamped to
    /// `range` (the stored values that the pixel representation can hold).
    pub fn stored_value(&self, hu: f64, range: (i32, i32)) -> i32 {
        let stored = ((hu - self.intercept) / self.slope).round();
        stored.clamp(range.0 as f64, range.1 as f64) as i32
    }

    /// Converts a stored value to HU.
    pub fn hu(&self, stored: i32) -> f64 {
        stored as f64 * self.slope + self.intercept
    }
}

/// Everything that defines a synthetic series. The same spec, seed included, always
/// produces byte-identical files.
///
/// Missing fields take their defaults when deserialised. NOTE: `field_of_view_mm` does
/// not follow `rows` or `pixel_spacing_mm`; set it too when changing the matrix, or use
/// [`PhantomSpec::with_matrix`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhantomSpec {
    /// Seed of every random choice: anatomy variation, lesions, noise, instance order.
    pub seed: u64,
    pub label: Label,
    /// _Rows_ of the axial images. Default 512.
    pub rows: u16,
    /// _Columns_ of the axial images. Default 512.
    pub columns: u16,
    /// In-plane pixel size in mm (square pixels). Default 0.7.
    pub pixel_spacing_mm: f64,
    /// Number of slice positions, 1..=700, before `missing_slices` are removed. Default 100.
    pub slices: u32,
    /// Distance between neighbouring slice positions in mm. Default 2.5.
    pub slice_spacing_mm: f64,
    /// _Slice Thickness_ in mm; `None` writes `slice_spacing_mm`. It is metadata only:
    /// every slice samples the anatomy on its centre plane.
    pub slice_thickness_mm: Option<f64>,
    /// Patient z (mm) of the first slice position; `None` centres the slices on the lungs'
    /// z extent.
    pub z_start_mm: Option<f64>,
    /// Diameter in mm of the reconstruction circle, centred on the image; pixels outside
    /// it hold the padding value. Default 358.4 (512 × 0.7).
    pub field_of_view_mm: f64,
    /// Real _Rescale Intercept_ used to store HU. Default -1024.
    pub rescale_intercept: f64,
    /// Real _Rescale Slope_ used to store HU, > 0. Default 1.
    pub rescale_slope: f64,
    /// _Pixel Representation_ 1 (two's complement) when true. Default true.
    pub signed: bool,
    /// _Bits Stored_: 12 or 16 (_Bits Allocated_ is always 16). Default 16.
    pub bits_stored: u16,
    pub padding: PaddingConvention,
    /// Fill value in HU outside the reconstruction circle. Default -2000. The stored fill
    /// is `round((padding_hu - intercept) / slope)` clamped to the representable range,
    /// so with unsigned or 12-bit pixels it may become stored 0 (HU = intercept); the
    /// ground truth reports the HU actually written.
    pub padding_hu: f64,
    /// Odd slice positions use a second rescale, with HU unchanged (see
    /// [`PhantomSpec::rescale_for_slice`]).
    pub per_slice_rescale: bool,
    /// Writes this _Rescale Intercept_ instead of the real one, for volumes whose
    /// declared rescale does not give Hounsfield units (`Some(0.0)` with the real -1024
    /// puts air near 0 instead of -1000). With `per_slice_rescale`, each slice's written
    /// intercept is shifted by `declared - rescale_intercept`.
    pub declared_intercept: Option<f64>,
    pub orientation: Orientation,
    pub instance_order: InstanceOrder,
    /// Slice position indices (0-based, in ascending z) left out of the written series,
    /// which leaves a gap in the positions. Duplicates are ignored.
    pub missing_slices: Vec<u32>,
    /// Also writes a coronal LOCALIZER image (_Image Type_ ORIGINAL\PRIMARY\LOCALIZER,
    /// another matrix size) into the main series.
    pub localizer: bool,
    /// Also writes a second series of the same study with this _Convolution Kernel_,
    /// twice the slice spacing and thickness and a new _Series Instance UID_.
    pub second_series_kernel: Option<String>,
    /// _Convolution Kernel_. Names containing LUNG sharpen the image (more noise), and
    /// BONE or SHARP sharpen more. SOFT or SMOOTH blur it. Anything else (the default
    /// STANDARD) leaves it unfiltered.
    pub kernel: String,
    /// Standard deviation in HU of the Gaussian noise before the kernel filter. Default 12.
    pub noise_sd_hu: f64,
    /// _Modality_. Default "CT".
    pub modality: String,
    /// The lungs meet at an anterior junction line in the upper chest, with no soft
    /// tissue between them over that stretch; the ground truth splits them at x = 0.
    pub lungs_touching: bool,
    /// A cushion (-60 HU) fills the gap between the back and the table (widened to 30 mm)
    /// and encloses a pocket of air that is not connected to the image border.
    pub external_air_pocket: bool,
    pub transfer_syntax: TransferSyntax,
    /// _Manufacturer_.
    pub manufacturer: String,
    /// _Manufacturer's Model Name_.
    pub model: String,
    /// _Patient's Name_; empty derives a synthetic name from the seed.
    pub patient_name: String,
    /// _Patient ID_; empty derives a synthetic id from the seed.
    pub patient_id: String,
    /// _Patient's Birth Date_ (YYYYMMDD); empty derives a synthetic date from the seed.
    pub patient_birth_date: String,
    /// Multiplies lesion sizes and the effusion thickness. Default 1.
    pub lesion_scale: f64,
    /// Multiplies the size of the whole body, 0.3..=1.5. Default 1.
    pub body_scale: f64,
}

impl Default for PhantomSpec {
    fn default() -> Self {
        PhantomSpec {
            seed: 0,
            label: Label::Healthy,
            rows: 512,
            columns: 512,
            pixel_spacing_mm: 0.7,
            slices: 100,
            slice_spacing_mm: 2.5,
            slice_thickness_mm: None,
            z_start_mm: None,
            field_of_view_mm: 512.0 * 0.7,
            rescale_intercept: -1024.0,
            rescale_slope: 1.0,
            signed: true,
            bits_stored: 16,
            padding: PaddingConvention::Attribute,
            padding_hu: -2000.0,
            per_slice_rescale: false,
            declared_intercept: None,
            orientation: Orientation::Supine,
            instance_order: InstanceOrder::Ascending,
            missing_slices: Vec::new(),
            localizer: false,
            second_series_kernel: None,
            kernel: "STANDARD".to_string(),
            noise_sd_hu: 12.0,
            modality: "CT".to_string(),
            lungs_touching: false,
            external_air_pocket: false,
            transfer_syntax: TransferSyntax::ExplicitVrLittleEndian,
            manufacturer: "LUNGSTREAM".to_string(),
            model: "SYNTHETIC CT".to_string(),
            patient_name: String::new(),
            patient_id: String::new(),
            patient_birth_date: String::new(),
            lesion_scale: 1.0,
            body_scale: 1.0,
        }
    }
}

/// Maximum number of slice positions.
pub const MAX_SLICES: u32 = 700;

impl PhantomSpec {
    /// Returns the default spec with the given label and seed.
    pub fn preset(label: Label, seed: u64) -> Self {
        PhantomSpec {
            label,
            seed,
            ..PhantomSpec::default()
        }
    }

    /// Changes the image matrix and pixel spacing and sets the reconstruction circle to
    /// the smaller image side, e.g. `with_matrix(128, 128, 2.8)` for fast tests that keep
    /// the default 358 mm field of view.
    pub fn with_matrix(mut self, rows: u16, columns: u16, pixel_spacing_mm: f64) -> Self {
        self.rows = rows;
        self.columns = columns;
        self.pixel_spacing_mm = pixel_spacing_mm;
        self.field_of_view_mm = f64::from(rows.min(columns)) * pixel_spacing_mm;
        self
    }

    /// Checks every field and returns the first invalid one.
    pub fn validate(&self) -> Result<(), PhantomError> {
        let invalid = |field: &'static str, message: String| {
            Err(PhantomError::InvalidSpec { field, message })
        };

        for (field, value) in [("rows", self.rows), ("columns", self.columns)] {
            if !(16..=4096).contains(&value) {
                return invalid(field, format!("{value} is outside 16..=4096"));
            }
        }
        if !(1..=MAX_SLICES).contains(&self.slices) {
            return invalid(
                "slices",
                format!("{} is outside 1..={MAX_SLICES}", self.slices),
            );
        }
        let positive = [
            ("pixel_spacing_mm", self.pixel_spacing_mm),
            ("slice_spacing_mm", self.slice_spacing_mm),
            ("field_of_view_mm", self.field_of_view_mm),
            ("rescale_slope", self.rescale_slope),
            ("lesion_scale", self.lesion_scale),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return invalid(field, format!("{value} must be a finite number > 0"));
            }
        }
        if let Some(thickness) = self.slice_thickness_mm {
            if !(thickness.is_finite() && thickness > 0.0) {
                return invalid(
                    "slice_thickness_mm",
                    format!("{thickness} must be a finite number > 0"),
                );
            }
        }
        let finite = [
            ("rescale_intercept", Some(self.rescale_intercept)),
            ("padding_hu", Some(self.padding_hu)),
            ("z_start_mm", self.z_start_mm),
            ("declared_intercept", self.declared_intercept),
        ];
        for (field, value) in finite {
            if let Some(value) = value {
                if !value.is_finite() {
                    return invalid(field, format!("{value} must be finite"));
                }
            }
        }
        if !(self.noise_sd_hu.is_finite() && self.noise_sd_hu >= 0.0) {
            return invalid(
                "noise_sd_hu",
                format!("{} must be a finite number >= 0", self.noise_sd_hu),
            );
        }
        if !(0.3..=1.5).contains(&self.body_scale) {
            return invalid(
                "body_scale",
                format!("{} is outside 0.3..=1.5", self.body_scale),
            );
        }
        if self.bits_stored != 12 && self.bits_stored != 16 {
            return invalid(
                "bits_stored",
                format!("{} must be 12 or 16", self.bits_stored),
            );
        }
        if self.padding == PaddingConvention::UnsignedForSigned && !self.signed {
            return invalid(
                "padding",
                "unsigned_for_signed needs signed pixels; set signed = true or use attribute"
                    .to_string(),
            );
        }
        if let Some(&index) = self.missing_slices.iter().find(|&&i| i >= self.slices) {
            return invalid(
                "missing_slices",
                format!("index {index} is not below slices = {}", self.slices),
            );
        }
        if self.written_slice_indices().is_empty() {
            return invalid("missing_slices", "every slice is missing".to_string());
        }

        validate_code_string("modality", &self.modality)?;
        validate_text("kernel", &self.kernel, 16)?;
        if let Some(kernel) = &self.second_series_kernel {
            validate_text("second_series_kernel", kernel, 16)?;
        }
        validate_text("manufacturer", &self.manufacturer, 64)?;
        validate_text("model", &self.model, 64)?;
        validate_text("patient_name", &self.patient_name, 64)?;
        validate_text("patient_id", &self.patient_id, 64)?;
        if !self.patient_birth_date.is_empty() && !is_valid_date(&self.patient_birth_date) {
            return invalid(
                "patient_birth_date",
                format!(
                    "{:?} is not a date in the form YYYYMMDD",
                    self.patient_birth_date
                ),
            );
        }
        Ok(())
    }

    /// Returns the indices of the slice positions that are written, in ascending z.
    pub fn written_slice_indices(&self) -> Vec<u32> {
        (0..self.slices)
            .filter(|index| !self.missing_slices.contains(index))
            .collect()
    }

    /// Returns the _Slice Thickness_ written to the files.
    pub fn effective_slice_thickness_mm(&self) -> f64 {
        self.slice_thickness_mm.unwrap_or(self.slice_spacing_mm)
    }

    /// Returns the smallest and largest stored value that `bits_stored` and `signed` allow.
    pub fn stored_range(&self) -> (i32, i32) {
        let bits = u32::from(self.bits_stored);
        if self.signed {
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        } else {
            (0, (1 << bits) - 1)
        }
    }

    /// Returns the real rescale of slice position `grid_index`.
    ///
    /// Without `per_slice_rescale` every slice uses `rescale_intercept` and
    /// `rescale_slope`. With it, odd positions use a second rescale chosen so that the
    /// HU range needed by the anatomy (-1024…+3000) stays representable:
    /// * 16-bit signed: intercept + 24, slope / 2 (-1024/1 becomes -1000/0.5);
    /// * 16-bit unsigned: same intercept, slope / 2, so stored 0 keeps its HU;
    /// * 12-bit: intercept - 24 × slope, same slope (halving the slope would leave only
    ///   2048 HU of range).
    pub fn rescale_for_slice(&self, grid_index: u32) -> Rescale {
        let base = Rescale {
            intercept: self.rescale_intercept,
            slope: self.rescale_slope,
        };
        if !self.per_slice_rescale || grid_index % 2 == 0 {
            return base;
        }
        match (self.bits_stored, self.signed) {
            (16, true) => Rescale {
                intercept: base.intercept + 24.0,
                slope: base.slope / 2.0,
            },
            (16, false) => Rescale {
                intercept: base.intercept,
                slope: base.slope / 2.0,
            },
            _ => Rescale {
                intercept: base.intercept - 24.0 * base.slope,
                slope: base.slope,
            },
        }
    }

    /// Returns the _Rescale Intercept_ written to the file of slice position `grid_index`.
    pub fn declared_intercept_for_slice(&self, grid_index: u32) -> f64 {
        let real = self.rescale_for_slice(grid_index).intercept;
        match self.declared_intercept {
            Some(declared) => real + (declared - self.rescale_intercept),
            None => real,
        }
    }
}

/// Checks a value of VR CS: at most 16 characters of A-Z, 0-9, space and underscore.
fn validate_code_string(field: &'static str, value: &str) -> Result<(), PhantomError> {
    let allowed = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ' || c == '_';
    if value.is_empty() || value.len() > 16 || !value.chars().all(allowed) {
        return Err(PhantomError::InvalidSpec {
            field,
            message: format!(
                "{value:?} must be 1 to 16 characters of A-Z, 0-9, space or underscore"
            ),
        });
    }
    Ok(())
}

/// Checks a text value written as SH, LO or PN: printable ASCII without backslash (the
/// DICOM value separator), at most `max_len` characters.
fn validate_text(field: &'static str, value: &str, max_len: usize) -> Result<(), PhantomError> {
    let allowed = |c: char| (' '..='~').contains(&c) && c != '\\';
    if value.len() > max_len || !value.chars().all(allowed) {
        return Err(PhantomError::InvalidSpec {
            field,
            message: format!(
                "{value:?} must be at most {max_len} printable ASCII characters without '\\'"
            ),
        });
    }
    Ok(())
}

fn is_valid_date(value: &str) -> bool {
    if value.len() != 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let year: u32 = value[0..4].parse().unwrap_or(0);
    let month: u32 = value[4..6].parse().unwrap_or(0);
    let day: u32 = value[6..8].parse().unwrap_or(0);
    (1..=12).contains(&month) && day >= 1 && day <= crate::dates::days_in_month(year, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_json_takes_defaults() {
        let json = r#"{"seed": 5, "label": "covid", "orientation": "flipped_rows",
                       "padding": "unsigned_for_signed", "transfer_syntax": "explicit_vr_big_endian"}"#;
        let spec: PhantomSpec = serde_json::from_str(json).expect("valid spec JSON");
        assert_eq!(spec.seed, 5);
        assert_eq!(spec.label, Label::Covid);
        assert_eq!(spec.orientation, Orientation::FlippedRows);
        assert_eq!(spec.padding, PaddingConvention::UnsignedForSigned);
        assert_eq!(spec.transfer_syntax, TransferSyntax::ExplicitVrBigEndian);
        assert_eq!(spec.rows, 512);
        assert_eq!(spec.slices, 100);
        assert_eq!(spec.kernel, "STANDARD");
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn stored_range_per_representation() {
        let range = |bits_stored, signed| {
            PhantomSpec {
                bits_stored,
                signed,
                ..PhantomSpec::default()
            }
            .stored_range()
        };
        assert_eq!(range(16, true), (-32768, 32767));
        assert_eq!(range(16, false), (0, 65535));
        assert_eq!(range(12, true), (-2048, 2047));
        assert_eq!(range(12, false), (0, 4095));
    }

    #[test]
    fn per_slice_rescale_alternates() {
        let spec = PhantomSpec {
            per_slice_rescale: true,
            declared_intercept: Some(0.0),
            ..PhantomSpec::default()
        };
        assert_eq!(
            spec.rescale_for_slice(0),
            Rescale {
                intercept: -1024.0,
                slope: 1.0
            }
        );
        assert_eq!(
            spec.rescale_for_slice(1),
            Rescale {
                intercept: -1000.0,
                slope: 0.5
            }
        );
        // The declared intercept shifts every slice's written intercept by 0 - (-1024).
        assert_eq!(spec.declared_intercept_for_slice(0), 0.0);
        assert_eq!(spec.declared_intercept_for_slice(1), 24.0);

        let twelve_bit = PhantomSpec {
            bits_stored: 12,
            signed: false,
            ..spec
        };
        assert_eq!(
            twelve_bit.rescale_for_slice(1),
            Rescale {
                intercept: -1048.0,
                slope: 1.0
            }
        );
    }

    #[test]
    fn stored_value_rounds_and_clamps() {
        let rescale = Rescale {
            intercept: -1024.0,
            slope: 1.0,
        };
        assert_eq!(rescale.stored_value(-2000.0, (-32768, 32767)), -976);
        assert_eq!(rescale.stored_value(-2000.0, (0, 4095)), 0);
        assert_eq!(rescale.stored_value(5000.0, (0, 4095)), 4095);
        assert_eq!(rescale.stored_value(40.4, (0, 4095)), 1064);
        let half = Rescale {
            intercept: -1000.0,
            slope: 0.5,
        };
        assert_eq!(half.stored_value(-2000.0, (-32768, 32767)), -2000);
        assert_eq!(half.hu(-2000), -2000.0);
    }
}
