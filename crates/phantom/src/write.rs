//! Encoding rendered images as DICOM Part 10 files (CT Image Storage) and writing the
//! series, its optional localizer and second series, and `ground_truth.json`.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use dicom_core::value::{PrimitiveValue, C};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::dates::{date_after, time_of_day};
use crate::error::PhantomError;
use crate::geometry::{format_ds, quantize_ds, ImagePlane};
use crate::random::{self, domain, fnv1a64, mix64};
use crate::render::{render_image, ImageOptions, KernelFilter, SeriesPlan};
use crate::scene::Scene;
use crate::spec::{InstanceOrder, Orientation, PaddingConvention, PhantomSpec, Rescale};
use crate::truth::{count_slice, GroundTruth, SliceCounts, WrittenSeries};

/// _Implementation Class UID_ of files written by this crate.
const IMPLEMENTATION_CLASS_UID: &str = "2.25.116247397535697148860844704495208364122";
/// _Implementation Version Name_ (SH, at most 16 characters).
const IMPLEMENTATION_VERSION_NAME: &str = "LUNGSTREAM_PH_01";
/// Name of the ground truth file written beside the DICOM files.
pub const GROUND_TRUTH_FILE: &str = "ground_truth.json";

/// Writes the main series as DICOM Part 10 files into `dir` (created if missing), plus
/// the localizer and the second series when the spec requests them, and
/// `ground_truth.json`. File names are a hash of each instance's _SOP Instance UID_
/// (`<16 hex digits>.dcm`), so their order does not follow slice position. Files
/// already in `dir` are overwritten when their names match and left alone otherwise.
///
/// Returns the ground truth of the main series, counted from the label maps of the
/// written slices.
///
/// # Errors
///
/// [`PhantomError::InvalidSpec`] when the spec fails [`PhantomSpec::validate`]; the I/O
/// and DICOM encoding variants when a file cannot be written.
pub fn write_series(spec: &PhantomSpec, dir: &Path) -> Result<GroundTruth, PhantomError> {
    spec.validate()?;
    fs::create_dir_all(dir).map_err(|source| PhantomError::Io {
        path: dir.to_path_buf(),
        source,
    })?;

    let scene = Scene::new(spec);
    let study = Study::new(spec);
    let main = SeriesPlan::new(spec.clone(), &scene, 0);
    let second = spec
        .second_series_kernel
        .as_ref()
        .map(|kernel| SeriesPlan::new(second_series_spec(spec, kernel, &main), &scene, 1));

    let instances = series_instances(&main, &study);
    let localizer = spec.localizer.then(|| LocalizerInstance {
        sop_uid: random::uid(study.key, uid_kind::LOCALIZER_SOP, 0),
        instance_number: main.written.len() as i32 + 1,
    });
    let second_instances = second
        .as_ref()
        .map(|plan| series_instances(plan, &study))
        .unwrap_or_default();
    let all_uids = instances
        .iter()
        .chain(&second_instances)
        .map(|instance| instance.sop_uid.as_str())
        .chain(localizer.as_ref().map(|l| l.sop_uid.as_str()));
    check_file_names(dir, all_uids)?;

    let main_series = study.series(&main, uid_kind::MAIN_SERIES);
    let counts: Vec<(f64, SliceCounts)> = instances
        .par_iter()
        .map(|instance| write_slice(&main, &study, &main_series, instance, dir))
        .collect::<Result<_, _>>()?;
    let mut files = instances.len();

    if let Some(localizer) = &localizer {
        write_localizer(&main, &study, &main_series, localizer, dir)?;
        files += 1;
    }

    let mut series_uids = vec![main_series.uid.clone()];
    if let Some(plan) = &second {
        let series = study.series(plan, uid_kind::SECOND_SERIES);
        second_instances
            .par_iter()
            .map(|instance| write_slice(plan, &study, &series, instance, dir).map(|_| ()))
            .collect::<Result<(), _>>()?;
        files += second_instances.len();
        series_uids.push(series.uid);
    }

    let written = WrittenSeries {
        study_uid: study.study_uid.clone(),
        series_uids,
        files,
        padding_hu: main.padding_hu(spec.rescale_for_slice(0)),
        pixel_spacing_mm: main.geometry.pixel_spacing_mm[1],
    };
    let truth = GroundTruth::from_counts(spec, written, &counts);
    write_ground_truth(&truth, dir)?;
    Ok(truth)
}

/// Fails before anything is written when two instances would get the same file name.
fn check_file_names<'a>(
    dir: &Path,
    sop_uids: impl Iterator<Item = &'a str>,
) -> Result<(), PhantomError> {
    let mut names = HashSet::new();
    for uid in sop_uids {
        let path = dir.join(file_name(uid));
        if !names.insert(path.clone()) {
            return Err(PhantomError::FileNameCollision { path });
        }
    }
    Ok(())
}

fn write_ground_truth(truth: &GroundTruth, dir: &Path) -> Result<(), PhantomError> {
    let path = dir.join(GROUND_TRUTH_FILE);
    let json = serde_json::to_vec_pretty(truth).map_err(|source| PhantomError::Json {
        path: path.clone(),
        source,
    })?;
    fs::write(&path, json).map_err(|source| PhantomError::Io { path, source })
}

/// `<16 hex digits of the FNV-1a hash of the SOP Instance UID>.dcm`.
fn file_name(sop_uid: &str) -> String {
    format!("{:016x}.dcm", fnv1a64(sop_uid.as_bytes()))
}

/// Derives the spec of the second series: the same anatomy, z start and options, but
/// `kernel`, twice the slice spacing and thickness, half the slices (rounded up) and no
/// missing slices.
fn second_series_spec(spec: &PhantomSpec, kernel: &str, main: &SeriesPlan) -> PhantomSpec {
    PhantomSpec {
        kernel: kernel.to_string(),
        slices: spec.slices.div_ceil(2),
        slice_spacing_mm: spec.slice_spacing_mm * 2.0,
        slice_thickness_mm: Some(spec.effective_slice_thickness_mm() * 2.0),
        z_start_mm: Some(main.z_positions[0]),
        missing_slices: Vec::new(),
        localizer: false,
        second_series_kernel: None,
        ..spec.clone()
    }
}

/// Second argument of [`random::uid`], one per kind of UID.
mod uid_kind {
    pub const STUDY: u64 = 0;
    pub const FRAME_OF_REFERENCE: u64 = 1;
    pub const MAIN_SERIES: u64 = 2;
    pub const SECOND_SERIES: u64 = 3;
    pub const MAIN_SOP: u64 = 4;
    pub const SECOND_SOP: u64 = 5;
    pub const LOCALIZER_SOP: u64 = 6;
}

/// Attributes shared by every file of the study.
struct Study {
    /// Fingerprint of the whole spec: two specs that differ in any field get different
    /// UIDs, even with the same seed.
    key: u64,
    study_uid: String,
    frame_of_reference_uid: String,
    date: String,
    study_time: String,
    series_time: String,
    acquisition_time: String,
    accession_number: String,
    patient_name: String,
    patient_id: String,
    patient_birth_date: String,
    patient_sex: &'static str,
}

impl Study {
    fn new(spec: &PhantomSpec) -> Self {
        let json = serde_json::to_vec(spec).expect("a PhantomSpec always serialises");
        let key = fnv1a64(&json);
        let seed = spec.seed;
        let hashed = |salt: u64| mix64(seed ^ mix64(salt));

        let start_seconds = 8 * 3600 + hashed(1) % 36_000;
        let or_derived = |value: &str, derived: String| {
            if value.is_empty() {
                derived
            } else {
                value.to_string()
            }
        };
        let birth = hashed(2);
        let derived_birth_date = format!(
            "{:04}{:02}{:02}",
            1935 + birth % 60,
            1 + (birth >> 8) % 12,
            1 + (birth >> 16) % 28
        );
        Study {
            key,
            study_uid: random::uid(key, uid_kind::STUDY, 0),
            frame_of_reference_uid: random::uid(key, uid_kind::FRAME_OF_REFERENCE, 0),
            date: date_after(2020, 3, 1, hashed(3) % 700),
            study_time: time_of_day(start_seconds),
            series_time: time_of_day(start_seconds + 60),
            acquisition_time: time_of_day(start_seconds + 90),
            accession_number: format!("A{:09}", key % 1_000_000_000),
            patient_name: or_derived(&spec.patient_name, format!("PHANTOM^S{seed}")),
            patient_id: or_derived(&spec.patient_id, format!("LSP{seed}")),
            patient_birth_date: or_derived(&spec.patient_birth_date, derived_birth_date),
            patient_sex: if hashed(4) % 2 == 0 { "F" } else { "M" },
        }
    }

    fn series(&self, plan: &SeriesPlan, kind: u64) -> Series {
        let thickness = plan.geometry.slice_thickness_mm;
        Series {
            uid: random::uid(self.key, kind, 0),
            number: if kind == uid_kind::MAIN_SERIES { 2 } else { 3 },
            description: format!("CHEST {}MM {}", format_ds(thickness), plan.spec.kernel),
        }
    }
}

struct Series {
    uid: String,
    number: i32,
    description: String,
}

/// One slice to write: its position index, instance number and SOP Instance UID.
struct SliceInstance {
    grid_index: u32,
    instance_number: i32,
    sop_uid: String,
}

struct LocalizerInstance {
    sop_uid: String,
    instance_number: i32,
}

fn series_instances(plan: &SeriesPlan, study: &Study) -> Vec<SliceInstance> {
    let count = plan.written.len();
    let mut numbers: Vec<i32> = (1..=count as i32).collect();
    match plan.spec.instance_order {
        InstanceOrder::Ascending => {}
        InstanceOrder::Descending => numbers.reverse(),
        InstanceOrder::Shuffled => {
            let mut rng =
                random::stream(plan.spec.seed, domain::INSTANCE_ORDER, plan.series_index, 0);
            numbers.shuffle(&mut rng);
        }
    }
    let sop_kind = if plan.series_index == 0 {
        uid_kind::MAIN_SOP
    } else {
        uid_kind::SECOND_SOP
    };
    plan.written
        .iter()
        .zip(numbers)
        .map(|(&grid_index, instance_number)| SliceInstance {
            grid_index,
            instance_number,
            sop_uid: random::uid(study.key, sop_kind, u64::from(grid_index)),
        })
        .collect()
}

/// Renders, counts and writes one axial slice; returns its z and counts.
fn write_slice(
    plan: &SeriesPlan,
    study: &Study,
    series: &Series,
    instance: &SliceInstance,
    dir: &Path,
) -> Result<(f64, SliceCounts), PhantomError> {
    let slice = plan.render_slice(instance.grid_index);
    let plane = plan.plane(instance.grid_index);
    let counts = count_slice(&plane, &slice.tissue);
    let spec = &plan.spec;

    let stored_padding = slice
        .rescale
        .stored_value(spec.padding_hu, spec.stored_range());
    let image = Image {
        sop_uid: &instance.sop_uid,
        instance_number: instance.instance_number,
        image_type: "AXIAL",
        plane: &plane,
        slice_location: Some(slice.z_mm()),
        slice_thickness: Some(plan.geometry.slice_thickness_mm),
        reconstruction_diameter: Some(plan.geometry.field_of_view_mm),
        rescale: slice.rescale,
        written_intercept: spec.declared_intercept_for_slice(instance.grid_index),
        padding: Some(stored_padding),
        hu: &slice.hu,
    };
    let path = dir.join(file_name(&instance.sop_uid));
    write_image(spec, study, series, &image, &path)?;
    Ok((slice.z_mm(), counts))
}

/// Renders and writes the coronal localizer into the main series. It is a section
/// through the body at y = 10 mm, not a projection radiograph.
fn write_localizer(
    main: &SeriesPlan,
    study: &Study,
    series: &Series,
    localizer: &LocalizerInstance,
    dir: &Path,
) -> Result<(), PhantomError> {
    let spec = &main.spec;
    let plane = localizer_plane(main);
    let rescale = spec.rescale_for_slice(0);
    let range = spec.stored_range();
    let options = ImageOptions {
        padding_hu: rescale.hu(rescale.stored_value(spec.padding_hu, range)),
        noise_sd_hu: spec.noise_sd_hu,
        // Series index 2 keeps this noise apart from both axial series.
        noise_stream: [spec.seed, 2, 0],
        filter: KernelFilter::None,
        hu_range: (rescale.hu(range.0), rescale.hu(range.1)),
    };
    let (hu, _) = render_image(main.scene, &plane, &options);

    let image = Image {
        sop_uid: &localizer.sop_uid,
        instance_number: localizer.instance_number,
        image_type: "LOCALIZER",
        plane: &plane,
        slice_location: None,
        slice_thickness: None,
        reconstruction_diameter: None,
        rescale,
        written_intercept: spec.declared_intercept_for_slice(0),
        padding: None,
        hu: &hu,
    };
    let path = dir.join(file_name(&localizer.sop_uid));
    write_image(spec, study, series, &image, &path)
}

/// Builds the localizer's coronal grid (rows run from head to feet). It has half the
/// columns of the axial images over the same width, enough rows to cover the slices' z
/// range plus 30 mm at each end (never as many as the axial images), and no
/// reconstruction circle.
fn localizer_plane(main: &SeriesPlan) -> ImagePlane {
    let geometry = &main.geometry;
    let columns = (usize::from(geometry.columns) / 2).max(32);
    let width = f64::from(geometry.columns) * geometry.pixel_spacing_mm[1];
    let spacing = quantize_ds(width / columns as f64);

    let top = main.z_positions[main.z_positions.len() - 1] + 30.0;
    let bottom = main.z_positions[0] - 30.0;
    let mut rows = ((top - bottom) / spacing).ceil() as usize + 1;
    if rows == usize::from(geometry.rows) {
        rows += 1;
    }

    let left_edge = geometry.image_centre_mm[0] - (columns as f64 - 1.0) / 2.0 * spacing;
    ImagePlane {
        rows,
        columns,
        pixel_spacing: [spacing, spacing],
        row_direction: [1.0, 0.0, 0.0],
        column_direction: [0.0, 0.0, -1.0],
        origin: [quantize_ds(left_edge), 10.0, quantize_ds(top)],
        fov_radius: None,
    }
}

/// The per-image attributes of one file.
struct Image<'a> {
    sop_uid: &'a str,
    instance_number: i32,
    /// Third value of _Image Type_.
    image_type: &'static str,
    plane: &'a ImagePlane,
    slice_location: Option<f64>,
    slice_thickness: Option<f64>,
    reconstruction_diameter: Option<f64>,
    /// Real rescale, used to convert HU to stored values.
    rescale: Rescale,
    /// _Rescale Intercept_ as written (differs from the real one with
    /// `declared_intercept`).
    written_intercept: f64,
    /// Stored padding value; written per the spec's padding convention.
    padding: Option<i32>,
    hu: &'a [f32],
}

fn write_image(
    spec: &PhantomSpec,
    study: &Study,
    series: &Series,
    image: &Image,
    path: &Path,
) -> Result<(), PhantomError> {
    let dataset = ct_dataset(spec, study, series, image);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(spec.transfer_syntax.uid())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    let file = dataset
        .with_meta(meta)
        .map_err(|source| PhantomError::DicomMeta {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
    file.write_to_file(path)
        .map_err(|source| PhantomError::DicomWrite {
            path: PathBuf::from(path),
            source: Box::new(source),
        })
}

fn put(dataset: &mut InMemDicomObject, tag: Tag, vr: VR, value: PrimitiveValue) {
    dataset.put(DataElement::new(tag, vr, value));
}

fn text(value: &str) -> PrimitiveValue {
    PrimitiveValue::from(value)
}

fn decimals(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|&value| format_ds(value)).collect())
}

fn ct_dataset(
    spec: &PhantomSpec,
    study: &Study,
    series: &Series,
    image: &Image,
) -> InMemDicomObject {
    let mut dataset = InMemDicomObject::new_empty();
    let d = &mut dataset;
    let plane = image.plane;

    // Patient and study.
    put(d, tags::PATIENT_NAME, VR::PN, text(&study.patient_name));
    put(d, tags::PATIENT_ID, VR::LO, text(&study.patient_id));
    put(
        d,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        text(&study.patient_birth_date),
    );
    put(d, tags::PATIENT_SEX, VR::CS, text(study.patient_sex));
    put(d, tags::STUDY_INSTANCE_UID, VR::UI, text(&study.study_uid));
    put(d, tags::STUDY_DATE, VR::DA, text(&study.date));
    put(d, tags::STUDY_TIME, VR::TM, text(&study.study_time));
    put(d, tags::STUDY_ID, VR::SH, text("1"));
    put(d, tags::STUDY_DESCRIPTION, VR::LO, text("CT CHEST"));
    put(
        d,
        tags::ACCESSION_NUMBER,
        VR::SH,
        text(&study.accession_number),
    );
    put(
        d,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        PrimitiveValue::Empty,
    );

    // Series and equipment.
    put(d, tags::MODALITY, VR::CS, text(&spec.modality));
    put(d, tags::SERIES_INSTANCE_UID, VR::UI, text(&series.uid));
    put(
        d,
        tags::SERIES_NUMBER,
        VR::IS,
        text(&series.number.to_string()),
    );
    put(d, tags::SERIES_DATE, VR::DA, text(&study.date));
    put(d, tags::SERIES_TIME, VR::TM, text(&study.series_time));
    put(
        d,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        text(&series.description),
    );
    put(d, tags::BODY_PART_EXAMINED, VR::CS, text("CHEST"));
    let position = if spec.orientation == Orientation::Prone {
        "HFP"
    } else {
        "HFS"
    };
    put(d, tags::PATIENT_POSITION, VR::CS, text(position));
    put(d, tags::MANUFACTURER, VR::LO, text(&spec.manufacturer));
    put(d, tags::MANUFACTURER_MODEL_NAME, VR::LO, text(&spec.model));
    put(
        d,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        text(&study.frame_of_reference_uid),
    );
    put(
        d,
        tags::POSITION_REFERENCE_INDICATOR,
        VR::LO,
        PrimitiveValue::Empty,
    );

    // Acquisition and reconstruction.
    put(d, tags::KVP, VR::DS, text("120"));
    put(d, tags::CONVOLUTION_KERNEL, VR::SH, text(&spec.kernel));
    if let Some(thickness) = image.slice_thickness {
        put(
            d,
            tags::SLICE_THICKNESS,
            VR::DS,
            text(&format_ds(thickness)),
        );
    }
    if let Some(diameter) = image.reconstruction_diameter {
        put(
            d,
            tags::RECONSTRUCTION_DIAMETER,
            VR::DS,
            text(&format_ds(diameter)),
        );
    }
    put(d, tags::ACQUISITION_NUMBER, VR::IS, text("1"));
    put(d, tags::ACQUISITION_DATE, VR::DA, text(&study.date));
    put(
        d,
        tags::ACQUISITION_TIME,
        VR::TM,
        text(&study.acquisition_time),
    );
    put(d, tags::CONTENT_DATE, VR::DA, text(&study.date));
    put(d, tags::CONTENT_TIME, VR::TM, text(&study.acquisition_time));

    // Instance and image plane.
    put(d, tags::SOP_CLASS_UID, VR::UI, text(uids::CT_IMAGE_STORAGE));
    put(d, tags::SOP_INSTANCE_UID, VR::UI, text(image.sop_uid));
    put(
        d,
        tags::INSTANCE_NUMBER,
        VR::IS,
        text(&image.instance_number.to_string()),
    );
    let image_type = ["ORIGINAL", "PRIMARY", image.image_type].map(String::from);
    put(
        d,
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(C::from_iter(image_type)),
    );
    put(
        d,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        decimals(&plane.origin),
    );
    let orientation: Vec<f64> = plane
        .row_direction
        .iter()
        .chain(&plane.column_direction)
        .copied()
        .collect();
    put(
        d,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        decimals(&orientation),
    );
    if let Some(location) = image.slice_location {
        put(d, tags::SLICE_LOCATION, VR::DS, text(&format_ds(location)));
    }
    put(
        d,
        tags::PIXEL_SPACING,
        VR::DS,
        decimals(&plane.pixel_spacing),
    );

    // Pixel module.
    put(
        d,
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1_u16),
    );
    put(
        d,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        text("MONOCHROME2"),
    );
    put(
        d,
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(plane.rows as u16),
    );
    put(
        d,
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(plane.columns as u16),
    );
    put(
        d,
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(16_u16),
    );
    put(
        d,
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(spec.bits_stored),
    );
    put(
        d,
        tags::HIGH_BIT,
        VR::US,
        PrimitiveValue::from(spec.bits_stored - 1),
    );
    put(
        d,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(u16::from(spec.signed)),
    );
    if let Some(stored) = image.padding {
        put_padding(d, spec, stored);
    }
    put(d, tags::WINDOW_CENTER, VR::DS, text("-600"));
    put(d, tags::WINDOW_WIDTH, VR::DS, text("1500"));
    put(
        d,
        tags::RESCALE_INTERCEPT,
        VR::DS,
        text(&format_ds(image.written_intercept)),
    );
    put(
        d,
        tags::RESCALE_SLOPE,
        VR::DS,
        text(&format_ds(image.rescale.slope)),
    );
    put(d, tags::RESCALE_TYPE, VR::LO, text("HU"));
    let words = pixel_words(spec, image.rescale, image.hu);
    put(
        d,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(C::from_vec(words)),
    );
    dataset
}

/// Writes _Pixel Padding Value_ per the padding convention.
fn put_padding(dataset: &mut InMemDicomObject, spec: &PhantomSpec, stored: i32) {
    match spec.padding {
        PaddingConvention::None => {}
        PaddingConvention::Attribute if spec.signed => {
            let value = PrimitiveValue::from(stored as i16);
            put(dataset, tags::PIXEL_PADDING_VALUE, VR::SS, value);
        }
        PaddingConvention::Attribute => {
            let value = PrimitiveValue::from(stored as u16);
            put(dataset, tags::PIXEL_PADDING_VALUE, VR::US, value);
        }
        PaddingConvention::UnsignedForSigned => {
            // The 16-bit two's-complement pattern: -2000 becomes 63536.
            let value = PrimitiveValue::from(stored as i16 as u16);
            put(dataset, tags::PIXEL_PADDING_VALUE, VR::US, value);
        }
    }
}

/// Converts HU to 16-bit words of stored values, rounded and clamped to the pixel range.
/// Negative (signed) values are two's complement over all 16 bits, also for 12-bit data.
fn pixel_words(spec: &PhantomSpec, rescale: Rescale, hu: &[f32]) -> Vec<u16> {
    let range = spec.stored_range();
    hu.iter()
        .map(|&value| {
            let stored = rescale.stored_value(f64::from(value), range);
            if spec.signed {
                stored as i16 as u16
            } else {
                stored as u16
            }
        })
        .collect()
}
