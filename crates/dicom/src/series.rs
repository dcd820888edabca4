//! From files to stacks to a volume: scanning inputs, grouping images into axial stacks,
//! choosing one stack, and assembling it into a [`CtVolume`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::path::PathBuf;

use lungstream_schemas::ReasonCode;
use rayon::prelude::*;
use serde::Serialize;

use crate::config::ReaderConfig;
use crate::error::ReadError;
use crate::geometry::{find_gaps, head_normal, median_spacing, InPlaneMapping};
use crate::header::{parse_object, read_header, trailing_native_pixel_data, SliceHeader, EXPLICIT_VR_BIG_ENDIAN};
use crate::pixels::{decode_raw_words, mark_circle_fill, SliceConverter};
use crate::volume::{BitMask, CtVolume, Dims, SeriesMeta, SliceMeta};

/// A file that is not part of any candidate stack, and why.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: ReasonCode,
    pub message: String,
}

/// A file that repeats an image already found, by _SOP Instance UID_.
#[derive(Clone, Debug, Serialize)]
pub struct DuplicateFile {
    pub path: PathBuf,
    /// The file of the same image that was kept.
    pub original: PathBuf,
}

/// Images of one series that share matrix, orientation, spacing, kernel and thickness,
/// sorted by position along the slice normal from feet to head.
#[derive(Debug)]
pub struct StackCandidate {
    pub study_uid: String,
    pub series_uid: String,
    pub kernel: Option<String>,
    pub slice_thickness_mm: Option<f64>,
    pub rows: u32,
    pub columns: u32,
    pub pixel_spacing: [f64; 2],
    pub orientation: [f64; 6],
    pub slices: Vec<SliceHeader>,
    /// Position of each slice along the head-pointing normal, mm, ascending.
    pub positions_mm: Vec<f64>,
    pub median_spacing_mm: Option<f64>,
    /// Reason this stack cannot be loaded, if it cannot.
    pub problem: Option<ReadError>,
}

impl StackCandidate {
    /// Head-feet distance covered, counting half a spacing beyond each end slice.
    pub fn coverage_mm(&self) -> f64 {
        let spacing = self.median_spacing_mm.unwrap_or(0.0);
        match (self.positions_mm.first(), self.positions_mm.last()) {
            (Some(first), Some(last)) => last - first + spacing,
            _ => 0.0,
        }
    }

    /// Returns one line for people: identifiers, size and acquisition.
    pub fn summary(&self) -> String {
        format!(
            "series {} ({} slices, {}x{}, {:.3}x{:.3} mm, spacing {}, covers {:.1} mm, kernel {})",
            self.series_uid,
            self.slices.len(),
            self.rows,
            self.columns,
            self.pixel_spacing[0],
            self.pixel_spacing[1],
            self.median_spacing_mm
                .map_or("n/a".to_string(), |s| format!("{s:.3} mm")),
            self.coverage_mm(),
            self.kernel.as_deref().unwrap_or("unknown"),
        )
    }
}

/// Result of a scan of the inputs: candidate stacks in order of preference, and the
/// files left out.
#[derive(Debug, Default)]
pub struct Inventory {
    pub files_seen: usize,
    /// Ordered by [`Inventory::scan`]'s preference rule: the first one without a problem is
    /// the one to analyse.
    pub candidates: Vec<StackCandidate>,
    pub skipped: Vec<SkippedFile>,
    /// Files whose _SOP Instance UID_ was already seen (the same image sent twice).
    pub duplicates: Vec<DuplicateFile>,
}

impl Inventory {
    /// Reads the header of every file under `inputs` (files, or folders walked
    /// recursively) and groups the usable images into candidate stacks.
    ///
    /// Candidates are ordered by this rule. Loadable stacks come first. Among them, the
    /// one covering the longest head-feet distance wins, because a chest CT must contain
    /// the whole lungs. Ties go to the finest slice spacing, then the most slices, then
    /// the series and kernel in lexical order, so the choice never depends on file order.
    pub fn scan(inputs: &[PathBuf], config: &ReaderConfig) -> Inventory {
        let (files, unreadable) = list_files(inputs);
        let results: Vec<(PathBuf, Result<SliceHeader, ReadError>)> = files
            .par_iter()
            .map(|path| (path.clone(), read_header(path, config)))
            .collect();

        let mut inventory = Inventory {
            files_seen: files.len(),
            skipped: unreadable,
            ..Inventory::default()
        };
        let mut seen_instances: HashMap<String, PathBuf> = HashMap::new();
        let mut stacks: BTreeMap<StackKey, Vec<SliceHeader>> = BTreeMap::new();
        for (path, result) in results {
            match result {
                Ok(header) => {
                    if let Some(original) = seen_instances.get(&header.sop_instance_uid) {
                        inventory.duplicates.push(DuplicateFile {
                            path,
                            original: original.clone(),
                        });
                        continue;
                    }
                    seen_instances.insert(header.sop_instance_uid.clone(), path);
                    stacks.entry(StackKey::of(&header)).or_default().push(header);
                }
                Err(error) => {
                    tracing::debug!(reason = %error.reason(), "Skipped a file: {error}.");
                    inventory.skipped.push(SkippedFile {
                        path,
                        reason: error.reason(),
                        message: error.to_string(),
                    });
                }
            }
        }
        log_skipped(&inventory.skipped);
        inventory.candidates = stacks
            .into_values()
            .map(|slices| build_candidate(slices, config))
            .collect();
        inventory.candidates.sort_by(|a, b| {
            a.problem
                .is_some()
                .cmp(&b.problem.is_some())
                .then(b.coverage_mm().total_cmp(&a.coverage_mm()))
                .then(
                    a.median_spacing_mm
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&b.median_spacing_mm.unwrap_or(f64::INFINITY)),
                )
                .then(b.slices.len().cmp(&a.slices.len()))
                .then(a.series_uid.cmp(&b.series_uid))
                .then(a.kernel.cmp(&b.kernel))
        });
        inventory
    }

    /// Returns the stack to analyse: the first candidate without a problem. After
    /// [`Inventory::load_selected`], that is the stack that loaded.
    pub fn selected(&self) -> Option<&StackCandidate> {
        self.candidates.iter().find(|c| c.problem.is_none())
    }

    /// Loads the candidates in order of preference until one loads. A candidate that
    /// fails to load (its pixels cannot be decoded, its values are not Hounsfield units)
    /// keeps the error as its problem, so [`Inventory::selected`] moves past it.
    ///
    /// # Errors
    ///
    /// When no candidate loads: the problem of the preferred one.
    pub fn load_selected(&mut self, config: &ReaderConfig) -> Result<CtVolume, ReadError> {
        for index in 0..self.candidates.len() {
            if self.candidates[index].problem.is_some() {
                continue;
            }
            match load_volume(&self.candidates[index], config) {
                Ok(volume) => return Ok(volume),
                Err(error) => {
                    tracing::info!(
                        series_uid = %self.candidates[index].series_uid,
                        reason = %error.reason(),
                        "A candidate stack failed to load; trying the next one: {error}"
                    );
                    self.candidates[index].problem = Some(error);
                }
            }
        }
        let first_problem = self.candidates.iter().find_map(|c| c.problem.clone());
        Err(first_problem.unwrap_or_else(|| ReadError::NoImages {
            input: "the inputs".to_string(),
            files_seen: self.files_seen,
            skipped: self.skipped.len(),
        }))
    }
}

/// Reads the preferred stack under `inputs` into a volume, returning the inventory too so
/// callers can list what was left out.
///
/// # Errors
///
/// `no_images` when no file is a usable CT image. Otherwise, when no stack loads, the
/// problem of the preferred stack.
pub fn read_volume(inputs: &[PathBuf], config: &ReaderConfig) -> Result<(CtVolume, Inventory), ReadError> {
    let mut inventory = Inventory::scan(inputs, config);
    if inventory.candidates.is_empty() {
        return Err(ReadError::NoImages {
            input: inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            files_seen: inventory.files_seen,
            skipped: inventory.skipped.len(),
        });
    }
    let volume = inventory.load_selected(config)?;
    Ok((volume, inventory))
}

/// Decodes every slice of a stack (in parallel) into a volume in the canonical frame.
///
/// # Errors
///
/// The candidate's own problem, a decoding error of any slice, or `not_hounsfield` when
/// the values cannot be Hounsfield units.
pub fn load_volume(candidate: &StackCandidate, config: &ReaderConfig) -> Result<CtVolume, ReadError> {
    if let Some(problem) = &candidate.problem {
        return Err(problem.clone());
    }
    let first = &candidate.slices[0];
    let (rows, columns) = (first.rows as usize, first.columns as usize);
    let mapping = InPlaneMapping::from_orientation(&candidate.orientation);
    let (out_rows, out_columns) = mapping.canonical_shape(rows, columns);
    let dims = Dims {
        slices: candidate.slices.len(),
        rows: out_rows,
        columns: out_columns,
    };
    if dims.voxels() as u64 > config.max_voxels {
        return Err(ReadError::TooLarge {
            subject: format!("series {}", candidate.series_uid),
            what: "the number of voxels",
            value: dims.voxels() as u64,
            limit: config.max_voxels,
        });
    }

    // Slices of a series nearly always share their rescale, so each distinct table is
    // built once.
    let mut converters: HashMap<ConverterKey, Arc<SliceConverter>> = HashMap::new();
    let slice_converters: Vec<Arc<SliceConverter>> = candidate
        .slices
        .iter()
        .map(|header| {
            let converter = converters
                .entry(ConverterKey::of(header))
                .or_insert_with(|| Arc::new(SliceConverter::new(header)));
            Arc::clone(converter)
        })
        .collect();

    let mut hu = vec![0i16; dims.voxels()];
    let slices: Vec<Result<LoadedSlice, ReadError>> = hu
        .par_chunks_mut(dims.slice_len())
        .zip(candidate.slices.par_iter().zip(slice_converters.par_iter()))
        .map(|(out, (header, converter))| load_slice(header, converter, &mapping, out))
        .collect();
    let slices = slices.into_iter().collect::<Result<Vec<_>, _>>()?;
    check_hounsfield(&slices, &candidate.series_uid)?;
    let masks: Vec<BitMask> = slices.into_iter().map(|s| s.padding).collect();
    let padding = BitMask::concat(&masks);

    let spacing = mapping.canonical_spacing(candidate.pixel_spacing);
    let (row_direction, column_direction) = mapping.canonical_directions(&candidate.orientation);
    let mut transfer_syntaxes: Vec<String> = candidate
        .slices
        .iter()
        .map(|s| s.transfer_syntax_uid.clone())
        .collect();
    transfer_syntaxes.sort();
    transfer_syntaxes.dedup();

    Ok(CtVolume {
        dims,
        hu,
        padding,
        spacing_mm: [
            candidate.median_spacing_mm.unwrap_or(first.slice_thickness_mm.unwrap_or(1.0)),
            spacing[0],
            spacing[1],
        ],
        slice_positions_mm: candidate.positions_mm.clone(),
        origin_mm: mapping.canonical_origin(
            first.position,
            &candidate.orientation,
            rows,
            columns,
            candidate.pixel_spacing,
        ),
        directions: [row_direction, column_direction, head_normal(&candidate.orientation)],
        source_orientation: candidate.orientation,
        mapping,
        meta: SeriesMeta {
            study_uid: candidate.study_uid.clone(),
            series_uid: candidate.series_uid.clone(),
            frame_of_reference_uid: first.frame_of_reference_uid.clone(),
            manufacturer: first.manufacturer.clone(),
            scanner_model: first.scanner_model.clone(),
            kernel: candidate.kernel.clone(),
            slice_thickness_mm: candidate.slice_thickness_mm,
            acquisition_date: first.acquisition_date.clone(),
            acquisition_time: first.acquisition_time.clone(),
            patient_position: first.patient_position.clone(),
            patient_key: first.patient_key.clone(),
            transfer_syntaxes,
        },
        slices: candidate
            .slices
            .iter()
            .map(|s| SliceMeta {
                sop_instance_uid: s.sop_instance_uid.clone(),
                instance_number: s.instance_number,
                position: s.position,
                rescale_slope: s.rescale_slope,
                rescale_intercept: s.rescale_intercept,
            })
            .collect(),
    })
}

/// One instance decoded on its own: Hounsfield units in the canonical in-plane layout
/// of [`load_volume`], so it matches the slice of the volume it belongs to.
#[derive(Clone, Debug)]
pub struct SliceImage {
    pub sop_instance_uid: String,
    pub rows: usize,
    pub columns: usize,
    pub hu: Vec<i16>,
}

/// Reads and decodes a single instance (a worst slice to draw, say) without its series.
///
/// # Errors
///
/// Every header check of [`read_header`], and decoding errors.
pub fn read_slice(path: &std::path::Path, config: &ReaderConfig) -> Result<SliceImage, ReadError> {
    let header = read_header(path, config)?;
    let mapping = InPlaneMapping::from_orientation(&header.orientation);
    let (rows, columns) = mapping.canonical_shape(header.rows as usize, header.columns as usize);
    let mut hu = vec![0i16; rows * columns];
    load_slice(&header, &SliceConverter::new(&header), &mapping, &mut hu)?;
    Ok(SliceImage {
        sop_instance_uid: header.sop_instance_uid,
        rows,
        columns,
        hu,
    })
}

/// What decides a slice's conversion table.
#[derive(PartialEq, Eq, Hash)]
struct ConverterKey {
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    slope_bits: u64,
    intercept_bits: u64,
    padding: Option<(i32, Option<i32>)>,
}

impl ConverterKey {
    fn of(header: &SliceHeader) -> Self {
        ConverterKey {
            bits_allocated: header.bits_allocated,
            bits_stored: header.bits_stored,
            high_bit: header.high_bit,
            signed: header.signed,
            slope_bits: header.rescale_slope.to_bits(),
            intercept_bits: header.rescale_intercept.to_bits(),
            padding: header.padding.map(|p| (p.value, p.range_limit)),
        }
    }
}

/// One decoded slice's padding mask and the counts behind the Hounsfield check.
struct LoadedSlice {
    padding: BitMask,
    measured: u64,
    air: u64,
    min_hu: i16,
}

/// Decodes one slice into `out` (canonical layout).
///
/// Uncompressed pixel data at the end of the file is read in place; anything else goes
/// through dicom-pixeldata's codecs.
fn load_slice(
    header: &SliceHeader,
    converter: &SliceConverter,
    mapping: &InPlaneMapping,
    out: &mut [i16],
) -> Result<LoadedSlice, ReadError> {
    let bytes = std::fs::read(&header.path).map_err(|source| ReadError::Io {
        path: header.path.clone(),
        source: source.into(),
    })?;
    let (rows, columns) = (header.rows as usize, header.columns as usize);
    let identity = *mapping == InPlaneMapping::default();
    let mut stored_layout = if identity { Vec::new() } else { vec![0i16; rows * columns] };
    let hu: &mut [i16] = if identity { out } else { &mut stored_layout };
    let mut padding = vec![false; rows * columns];

    match trailing_native_pixel_data(&bytes, header) {
        Some(pixels) if header.bits_allocated == 8 => {
            converter.convert(pixels.iter().map(|b| u16::from(*b)), hu, &mut padding);
        }
        Some(pixels) => {
            let big_endian = header.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN;
            converter.convert_bytes16(pixels, big_endian, hu, &mut padding);
        }
        None => {
            let object = parse_object(&bytes, &header.path)?;
            let raw = decode_raw_words(&object, &header.path)?;
            if raw.rows != rows || raw.columns != columns || raw.frames != 1 {
                return Err(ReadError::DecodeFailed {
                    path: header.path.clone(),
                    detail: format!(
                        "decoded {} frame(s) of {}x{}, the header says 1 of {rows}x{columns}",
                        raw.frames, raw.rows, raw.columns
                    ),
                });
            }
            converter.convert(raw.words.into_iter(), hu, &mut padding);
        }
    }
    drop(bytes);
    mark_circle_fill(hu, rows, columns, &mut padding);
    let padding = if identity {
        padding
    } else {
        mapping.remap(&stored_layout, rows, columns, out, |v| v);
        let mut canonical = vec![false; rows * columns];
        mapping.remap(&padding, rows, columns, &mut canonical, |v| v);
        canonical
    };

    // Branch-free, so the loop vectorises: it runs over every voxel of the series.
    // A slice has far fewer than 2^32 pixels (the matrix limit is below 65536²).
    let (mut measured, mut air, mut min_hu) = (0u32, 0u32, i16::MAX);
    for (value, is_padding) in out.iter().zip(&padding) {
        let keep = !is_padding;
        let is_air = (-1100..=-900).contains(value);
        measured += u32::from(keep);
        air += u32::from(keep & is_air);
        min_hu = min_hu.min(if keep { *value } else { i16::MAX });
    }
    Ok(LoadedSlice {
        padding: BitMask::from_bools(&padding),
        measured: u64::from(measured),
        air: u64::from(air),
        min_hu,
    })
}

/// Air (−1000 HU) surrounds every body and fills the lungs, so a real CT volume always
/// has some: at least 0.1% of its measured voxels in −1100…−900 HU.
fn check_hounsfield(slices: &[LoadedSlice], series_uid: &str) -> Result<(), ReadError> {
    let measured: u64 = slices.iter().map(|s| s.measured).sum();
    let air: u64 = slices.iter().map(|s| s.air).sum();
    let min_hu = slices.iter().map(|s| s.min_hu).min().unwrap_or(0);
    if measured == 0 || air * 1000 < measured {
        return Err(ReadError::NotHounsfield {
            series_uid: series_uid.to_string(),
            air_fraction_percent: if measured == 0 { 0.0 } else { 100.0 * air as f64 / measured as f64 },
            min_hu: i32::from(min_hu),
        });
    }
    Ok(())
}

/// Sorts a stack's slices along the normal and checks its geometry and size.
fn build_candidate(mut slices: Vec<SliceHeader>, config: &ReaderConfig) -> StackCandidate {
    let first = &slices[0];
    let orientation = first.orientation;
    let normal = head_normal(&orientation);
    let position_of = |s: &SliceHeader| s.position.iter().zip(normal).map(|(p, n)| p * n).sum::<f64>();
    slices.sort_by(|a, b| position_of(a).total_cmp(&position_of(b)));
    let positions_mm: Vec<f64> = slices.iter().map(position_of).collect();
    let median_spacing_mm = median_spacing(&positions_mm);
    let first = &slices[0];
    let series_uid = first.series_uid.clone();

    let problem = check_stack(&slices, &positions_mm, median_spacing_mm, config);
    StackCandidate {
        study_uid: first.study_uid.clone(),
        series_uid,
        kernel: first.kernel.clone(),
        slice_thickness_mm: first.slice_thickness_mm,
        rows: first.rows,
        columns: first.columns,
        pixel_spacing: first.pixel_spacing,
        orientation,
        positions_mm,
        median_spacing_mm,
        problem,
        slices,
    }
}

/// Rejects a stack with too few or too many slices, two images at one position, or gaps.
///
/// A stack with a gap is rejected rather than split into contiguous runs. The method
/// stacks neighbouring slices and needs disease on consecutive ones, and a run could
/// silently leave out the diseased part of the lungs. Gaps usually come from an
/// incomplete transfer that sending the series again fixes.
fn check_stack(
    slices: &[SliceHeader],
    positions_mm: &[f64],
    median_spacing_mm: Option<f64>,
    config: &ReaderConfig,
) -> Option<ReadError> {
    let series_uid = slices[0].series_uid.clone();
    if slices.len() < config.min_slices {
        return Some(ReadError::TooFewSlices {
            series_uid,
            found: slices.len(),
            min: config.min_slices,
        });
    }
    if slices.len() > config.max_slices {
        return Some(ReadError::TooLarge {
            subject: format!("series {series_uid}"),
            what: "the number of slices",
            value: slices.len() as u64,
            limit: config.max_slices as u64,
        });
    }
    if let Some(spacing) = median_spacing_mm.filter(|s| *s > config.max_slice_spacing_mm) {
        return Some(ReadError::TooLarge {
            subject: format!("series {series_uid}"),
            what: "the median slice spacing in mm",
            value: spacing.ceil() as u64,
            limit: config.max_slice_spacing_mm as u64,
        });
    }
    // Positions closer than 1% of the median spacing (or 1 µm) are the same position.
    let tolerance = median_spacing_mm.map_or(1e-3, |m| (m * 0.01).max(1e-3));
    for (pair, window) in slices.windows(2).zip(positions_mm.windows(2)) {
        if window[1] - window[0] < tolerance {
            return Some(ReadError::DuplicatePositions {
                series_uid,
                position_mm: window[0],
                first: pair[0].path.clone(),
                second: pair[1].path.clone(),
            });
        }
    }
    let gaps = find_gaps(positions_mm, config.max_gap_ratio);
    if !gaps.is_empty() {
        return Some(ReadError::MissingSlices {
            series_uid,
            median_spacing_mm: median_spacing_mm.unwrap_or(0.0),
            gaps,
        });
    }
    None
}

/// Images that may be stacked together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StackKey {
    series_uid: String,
    rows: u32,
    columns: u32,
    /// Direction cosines in thousandths.
    orientation: [i64; 6],
    /// Pixel spacing in µm.
    pixel_spacing: [i64; 2],
    kernel: Option<String>,
    /// Slice thickness in hundredths of a mm.
    thickness: Option<i64>,
}

impl StackKey {
    fn of(header: &SliceHeader) -> StackKey {
        StackKey {
            series_uid: header.series_uid.clone(),
            rows: header.rows,
            columns: header.columns,
            orientation: header.orientation.map(|v| (v * 1000.0).round() as i64),
            pixel_spacing: header.pixel_spacing.map(|v| (v * 1000.0).round() as i64),
            kernel: header.kernel.clone(),
            thickness: header.slice_thickness_mm.map(|v| (v * 100.0).round() as i64),
        }
    }
}

/// Logs one line per reason code with the number of files skipped for it.
fn log_skipped(skipped: &[SkippedFile]) {
    let mut counts: BTreeMap<ReasonCode, usize> = BTreeMap::new();
    for file in skipped {
        *counts.entry(file.reason).or_default() += 1;
    }
    for (reason, files) in counts {
        tracing::info!(%reason, files, "Skipped files that cannot be part of an axial CT stack.");
    }
}

/// Lists every regular file under `inputs`, in path order, walking folders recursively.
/// Folders that cannot be listed are returned as skipped entries.
fn list_files(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<SkippedFile>) {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for input in inputs {
        if input.is_file() {
            files.push(input.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(input).sort_by_file_name() {
            match entry {
                Ok(entry) if entry.file_type().is_file() => files.push(entry.into_path()),
                Ok(_) => {}
                Err(error) => {
                    let path = error.path().unwrap_or(input).to_path_buf();
                    tracing::warn!(path = %path.display(), "Cannot list a folder: {error}.");
                    unreadable.push(SkippedFile {
                        message: format!("{}: cannot list the folder: {error}", path.display()),
                        path,
                        reason: ReasonCode::Unreadable,
                    });
                }
            }
        }
    }
    (files, unreadable)
}
