//! The phantom data set that the demo weights are trained on: synthetic chest CT series
//! from five imaginary centres whose scanners differ the way real ones do, with a
//! manifest and the true infected share of every scan.
//!
//! Each centre has fixed acquisition and encoding settings ([`centres`]): rescale, pixel
//! representation, padding convention, noise, reconstruction kernel, field of view and
//! matrix, slice spacing and thickness, transfer syntax, instance order, and the
//! manufacturer and model names. Every setting is one that the reader
//! (`lungstream-dicom`) decodes to correct Hounsfield units, except for the calibration
//! offsets (-20 and +25 HU) of two centres, which the background normalisation removes.
//!
//! [`generate`] spreads the scans evenly over the centres and, within a centre, evenly
//! over the labels. Every scan gets its own phantom seed, body size and lesion size, so
//! the classes do not separate by size alone. About 5% of patients have a second scan
//! (another seed, the same label, centre and body size), so a split that ignores
//! patients would leak between its parts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use lungstream_phantom::{
    write_series, InstanceOrder, Label, PaddingConvention, PhantomError, PhantomSpec,
    TransferSyntax,
};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestEntry, ManifestError};
use crate::ScanLabel;

/// Number of scans of the demo data set.
pub const DEFAULT_SCANS: usize = 300;
/// Seed of the demo data set.
pub const DEFAULT_SEED: u64 = 20201123;
/// Name of the manifest that [`generate`] writes into the output folder.
pub const MANIFEST_FILE: &str = "manifest.csv";

/// Share of patients with a second scan.
const REPEAT_SHARE: f64 = 0.05;
/// Body scale range (uniform), as a share of the phantom's standard body.
const BODY_SCALE: (f64, f64) = (0.85, 1.15);
/// Lesion scale range (uniform) of diseased scans; healthy scans have no lesions.
const LESION_SCALE: (f64, f64) = (0.6, 1.4);
/// Upper bound of the phantom's lung height at body scale 1, mm: 240 mm times its
/// anatomy jitter (at most 1.04 × 1.05).
const MAX_LUNG_HEIGHT_MM: f64 = 262.0;
/// Length scanned beyond each end of the lungs, mm.
const SCAN_MARGIN_MM: f64 = 15.0;

/// The fixed scanner settings of one imaginary centre.
#[derive(Clone, Debug, PartialEq)]
pub struct Centre {
    /// Folder name and `centre` column of the manifest.
    pub name: String,
    /// _Manufacturer_.
    pub manufacturer: String,
    /// _Manufacturer's Model Name_.
    pub model: String,
    /// _Rows_ and _Columns_ (square images).
    pub matrix: u16,
    /// In-plane pixel size in mm; the reconstruction circle spans the whole matrix.
    pub pixel_spacing_mm: f64,
    /// Distance between slices in mm.
    pub slice_spacing_mm: f64,
    /// _Slice Thickness_ in mm.
    pub slice_thickness_mm: f64,
    /// _Convolution Kernel_: LUNG sharpens (more noise), BONE sharpens more, SOFT blurs.
    pub kernel: String,
    /// Standard deviation of the noise before the kernel filter, HU.
    pub noise_sd_hu: f64,
    /// Real _Rescale Intercept_ of the stored values.
    pub rescale_intercept: f64,
    /// Real _Rescale Slope_ of the stored values.
    pub rescale_slope: f64,
    /// Odd slices use a second rescale with the same HU (see
    /// [`PhantomSpec::rescale_for_slice`]).
    pub per_slice_rescale: bool,
    /// The written _Rescale Intercept_ minus the real one: every HU that the reader
    /// returns is off by this much, as after a scanner calibration drift.
    pub calibration_offset_hu: f64,
    /// _Pixel Representation_ 1 (two's complement) when true.
    pub signed: bool,
    /// _Bits Stored_: 12 or 16.
    pub bits_stored: u16,
    /// Declaration of the fill value outside the reconstruction circle.
    pub padding: PaddingConvention,
    /// Fill value outside the reconstruction circle, HU, before clamping to the stored
    /// range.
    pub padding_hu: f64,
    pub transfer_syntax: TransferSyntax,
    pub instance_order: InstanceOrder,
}

/// Returns the five centres of the phantom data set.
///
/// The last one, `northfield`, is meant to be held out of training: it is the only
/// centre with signed 12-bit pixels and a positive calibration offset.
pub fn centres() -> Vec<Centre> {
    let centre = |name: &str, manufacturer: &str, model: &str| Centre {
        name: name.to_string(),
        manufacturer: manufacturer.to_string(),
        model: model.to_string(),
        matrix: 256,
        pixel_spacing_mm: 1.7,
        slice_spacing_mm: 8.0,
        slice_thickness_mm: 8.0,
        kernel: "STANDARD".to_string(),
        noise_sd_hu: 12.0,
        rescale_intercept: -1024.0,
        rescale_slope: 1.0,
        per_slice_rescale: false,
        calibration_offset_hu: 0.0,
        signed: true,
        bits_stored: 16,
        padding: PaddingConvention::Attribute,
        padding_hu: -2000.0,
        transfer_syntax: TransferSyntax::ExplicitVrLittleEndian,
        instance_order: InstanceOrder::Ascending,
    };
    vec![
        centre("riverside", "AURORA MEDICAL", "AURORA CT 64"),
        Centre {
            matrix: 320,
            pixel_spacing_mm: 1.4,
            slice_spacing_mm: 10.0,
            slice_thickness_mm: 10.0,
            kernel: "LUNG".to_string(),
            noise_sd_hu: 18.0,
            // Unsigned 12-bit pixels cannot store -2000 HU: the fill becomes stored 0,
            // that is -1024 HU, with no attribute to declare it.
            signed: false,
            bits_stored: 12,
            padding: PaddingConvention::None,
            transfer_syntax: TransferSyntax::ImplicitVrLittleEndian,
            instance_order: InstanceOrder::Descending,
            ..centre("hillcrest", "BOREAL IMAGING", "BOREAL SPIRAL 128")
        },
        Centre {
            matrix: 224,
            pixel_spacing_mm: 1.9,
            slice_spacing_mm: 6.0,
            slice_thickness_mm: 5.0,
            kernel: "SOFT".to_string(),
            noise_sd_hu: 30.0,
            per_slice_rescale: true,
            // Stored -2000, written as the unsigned pattern 63536.
            padding: PaddingConvention::UnsignedForSigned,
            padding_hu: -3024.0,
            instance_order: InstanceOrder::Shuffled,
            ..centre("lakeside", "CIRRUS SYSTEMS", "CIRRUS 16")
        },
        Centre {
            matrix: 192,
            pixel_spacing_mm: 2.5,
            slice_spacing_mm: 5.0,
            slice_thickness_mm: 5.0,
            kernel: "BONE".to_string(),
            noise_sd_hu: 8.0,
            rescale_intercept: 0.0,
            calibration_offset_hu: -20.0,
            padding_hu: -2048.0,
            transfer_syntax: TransferSyntax::ExplicitVrBigEndian,
            ..centre("harbour", "DELTA TOMOGRAPHY", "DELTA VISION 40")
        },
        Centre {
            matrix: 288,
            pixel_spacing_mm: 1.5,
            slice_spacing_mm: 7.0,
            slice_thickness_mm: 8.0,
            noise_sd_hu: 22.0,
            rescale_intercept: 0.0,
            calibration_offset_hu: 25.0,
            bits_stored: 12,
            transfer_syntax: TransferSyntax::ImplicitVrLittleEndian,
            instance_order: InstanceOrder::Shuffled,
            ..centre("northfield", "EMBER HEALTH", "EMBER 320")
        },
    ]
}

impl Centre {
    /// Diameter of the reconstruction circle, mm.
    pub fn field_of_view_mm(&self) -> f64 {
        f64::from(self.matrix) * self.pixel_spacing_mm
    }

    /// Builds the spec of one scan at this centre. The slices cover the lungs of any
    /// phantom of `body_scale` with [`SCAN_MARGIN_MM`] to spare at each end.
    fn spec(&self, label: ScanLabel, seed: u64, body_scale: f64, lesion_scale: f64) -> PhantomSpec {
        let covered_mm = MAX_LUNG_HEIGHT_MM * body_scale + 2.0 * SCAN_MARGIN_MM;
        let slices = (covered_mm / self.slice_spacing_mm).ceil() as u32 + 1;
        let declared_intercept = (self.calibration_offset_hu != 0.0)
            .then_some(self.rescale_intercept + self.calibration_offset_hu);
        PhantomSpec {
            seed,
            label: phantom_label(label),
            slices,
            slice_spacing_mm: self.slice_spacing_mm,
            slice_thickness_mm: Some(self.slice_thickness_mm),
            rescale_intercept: self.rescale_intercept,
            rescale_slope: self.rescale_slope,
            per_slice_rescale: self.per_slice_rescale,
            declared_intercept,
            signed: self.signed,
            bits_stored: self.bits_stored,
            padding: self.padding,
            padding_hu: self.padding_hu,
            kernel: self.kernel.clone(),
            noise_sd_hu: self.noise_sd_hu,
            transfer_syntax: self.transfer_syntax,
            instance_order: self.instance_order,
            manufacturer: self.manufacturer.clone(),
            model: self.model.clone(),
            body_scale,
            lesion_scale,
            ..PhantomSpec::default().with_matrix(self.matrix, self.matrix, self.pixel_spacing_mm)
        }
    }
}

fn phantom_label(label: ScanLabel) -> Label {
    match label {
        ScanLabel::Healthy => Label::Healthy,
        ScanLabel::Covid => Label::Covid,
        ScanLabel::Other => Label::Other,
    }
}

/// Size, seed and parallelism of a phantom data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetOptions {
    /// Number of scans, at least 1.
    pub scans: usize,
    /// Seed of every choice: the same options give the same files.
    pub seed: u64,
    /// Worker threads; 0 uses one per core.
    pub threads: usize,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            scans: DEFAULT_SCANS,
            seed: DEFAULT_SEED,
            threads: 0,
        }
    }
}

/// Failure to generate the phantom data set.
#[derive(Debug, thiserror::Error)]
pub enum PhantomSetError {
    #[error("invalid data set options: {0}")]
    InvalidOptions(String),

    #[error("failed to prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to write phantom series {}: {source}", series.display())]
    Phantom {
        series: PathBuf,
        #[source]
        source: PhantomError,
    },

    #[error("failed to start {threads} worker threads: {source}")]
    ThreadPool {
        threads: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },

    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// One scan of the data set, before it is written.
#[derive(Clone, Debug, PartialEq)]
struct PlannedScan {
    /// Series folder relative to the output folder: `<centre>/<label>-<NNNN>`, with the
    /// scan's index in the whole data set.
    folder: PathBuf,
    centre: String,
    label: ScanLabel,
    patient_id: String,
    spec: PhantomSpec,
}

/// Writes the phantom data set into `out` (created if missing): one series folder per
/// scan, `out/<centre>/<label>-<NNNN>/`, with its DICOM files and `ground_truth.json`,
/// and `out/manifest.csv` with the true infected share of every scan. Returns the
/// manifest with resolved series paths.
///
/// Scans are written in parallel on `options.threads` threads; `progress(done, total)`
/// is called from the worker threads after each scan. The files depend only on
/// `options.scans` and `options.seed`. A series folder that already exists is deleted
/// first, so no file of an earlier set stays mixed into it. Other files in `out` are
/// left alone.
///
/// # Errors
///
/// [`PhantomSetError::InvalidOptions`] for zero scans, and the other variants when a
/// folder or file cannot be removed or written.
pub fn generate(
    out: &Path,
    options: &DatasetOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Manifest, PhantomSetError> {
    if options.scans == 0 {
        return Err(PhantomSetError::InvalidOptions(
            "the data set needs at least 1 scan".to_string(),
        ));
    }
    let scans = plan(options.scans, options.seed);
    write_scans(out, &scans, options.threads, progress)
}

/// Chooses the centre, label, patient and phantom spec of every scan.
///
/// Scan `i` goes to centre `c = i mod 5` as that centre's scan `k = i div 5`, with label
/// healthy, covid or other for `(k + c) mod 3` = 0, 1 or 2. The offset `c` keeps the
/// labels balanced over the whole set when there are few scans per centre. A scan `k`
/// chosen as a repeat belongs to the patient of the centre's scan `k - 3`, which has the
/// same label.
fn plan(scans: usize, seed: u64) -> Vec<PlannedScan> {
    let centres = centres();
    let labels = [ScanLabel::Healthy, ScanLabel::Covid, ScanLabel::Other];
    let repeats: Vec<Vec<bool>> = (0..centres.len())
        .map(|c| choose_repeats(scans_at_centre(scans, centres.len(), c), seed, c))
        .collect();

    // Per centre: the patient id and body scale of each scan planned so far.
    let mut patients: Vec<Vec<(String, f64)>> = vec![Vec::new(); centres.len()];
    let mut patient_counts = vec![0usize; centres.len()];
    let mut planned = Vec::with_capacity(scans);
    for index in 0..scans {
        let c = index % centres.len();
        let k = index / centres.len();
        let centre = &centres[c];
        let label = labels[(k + c) % 3];

        let (patient_id, body_scale) = if repeats[c][k] {
            patients[c][k - 3].clone()
        } else {
            patient_counts[c] += 1;
            let id = format!("{}-{:04}", centre.name, patient_counts[c]);
            (id, uniform(seed, "body scale", index, BODY_SCALE))
        };
        patients[c].push((patient_id.clone(), body_scale));

        let lesion_scale = if label.diseased() {
            uniform(seed, "lesion scale", index, LESION_SCALE)
        } else {
            1.0
        };
        let mut spec = centre.spec(
            label,
            draw(seed, "phantom seed", &[index as u64]),
            body_scale,
            lesion_scale,
        );
        spec.patient_name = format!("PHANTOM^{patient_id}");
        spec.patient_id = patient_id.clone();
        planned.push(PlannedScan {
            folder: Path::new(&centre.name).join(format!("{}-{index:04}", label.name())),
            centre: centre.name.clone(),
            label,
            patient_id,
            spec,
        });
    }
    planned
}

/// Number of scans that centre `c` of `centres` gets out of `scans`.
fn scans_at_centre(scans: usize, centres: usize, c: usize) -> usize {
    scans / centres + usize::from(c < scans % centres)
}

/// Marks which of a centre's `count` scans are second scans of a patient, so that about
/// [`REPEAT_SHARE`] of the centre's patients have two. Scan `k` can only repeat scan
/// `k - 3` (the same label), and neither of them may be a repeat already, so no patient
/// has three scans.
fn choose_repeats(count: usize, seed: u64, centre: usize) -> Vec<bool> {
    // With r repeats among n scans there are n - r patients: r = share × (n - r).
    let repeat_count = (count as f64 * REPEAT_SHARE / (1.0 + REPEAT_SHARE)).round() as usize;
    let mut candidates: Vec<(u64, usize)> = (3..count)
        .map(|k| (draw(seed, "repeat", &[centre as u64, k as u64]), k))
        .collect();
    candidates.sort_unstable();

    let mut repeat = vec![false; count];
    let mut chosen = 0;
    for (_, k) in candidates {
        if chosen == repeat_count {
            break;
        }
        let after_repeat = repeat[k - 3];
        let before_repeat = k + 3 < count && repeat[k + 3];
        if !after_repeat && !before_repeat {
            repeat[k] = true;
            chosen += 1;
        }
    }
    repeat
}

/// Returns a 64-bit value drawn from the data set seed for one purpose and key (such as
/// a scan index): the first 8 bytes (little-endian) of SHA-256 over the seed, the
/// purpose and the key's numbers.
fn draw(seed: u64, purpose: &str, key: &[u64]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(purpose.as_bytes());
    for number in key {
        hasher.update(number.to_le_bytes());
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// Returns a value drawn uniformly from `range` for one purpose and scan.
fn uniform(seed: u64, purpose: &str, index: usize, range: (f64, f64)) -> f64 {
    let unit = (draw(seed, purpose, &[index as u64]) >> 11) as f64 / (1u64 << 53) as f64;
    range.0 + unit * (range.1 - range.0)
}

/// Writes the planned scans and the manifest.
fn write_scans(
    out: &Path,
    scans: &[PlannedScan],
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Manifest, PhantomSetError> {
    std::fs::create_dir_all(out).map_err(|source| PhantomSetError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|source| PhantomSetError::ThreadPool { threads, source })?;

    let done = AtomicUsize::new(0);
    let entries = pool.install(|| {
        scans
            .par_iter()
            .map(|scan| {
                let entry = write_scan(out, scan)?;
                progress(done.fetch_add(1, Ordering::Relaxed) + 1, scans.len());
                Ok(entry)
            })
            .collect::<Result<Vec<_>, PhantomSetError>>()
    })?;

    let manifest = Manifest { entries };
    manifest.write(&out.join(MANIFEST_FILE))?;
    Ok(manifest)
}

fn write_scan(out: &Path, scan: &PlannedScan) -> Result<ManifestEntry, PhantomSetError> {
    let series = out.join(&scan.folder);
    match std::fs::remove_dir_all(&series) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PhantomSetError::Io {
                path: series,
                source,
            })
        }
    }
    let truth = write_series(&scan.spec, &series).map_err(|source| PhantomSetError::Phantom {
        series: series.clone(),
        source,
    })?;
    tracing::debug!(series = %series.display(), slices = truth.slices, infected_percent = truth.infected_percent, "Phantom series written.");
    Ok(ManifestEntry {
        series,
        label: scan.label,
        centre: scan.centre.clone(),
        patient_id: scan.patient_id.clone(),
        infected_percent: Some(truth.infected_percent),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use lungstream_dicom::{read_volume, ReaderConfig};
    use lungstream_phantom::{GroundTruth, GROUND_TRUTH_FILE};
    use lungstream_preprocess::lungs::Side;
    use lungstream_preprocess::{preprocess, PreprocessConfig};

    use super::*;

    #[test]
    fn centres_differ_within_limits() {
        let centres = centres();
        assert!(centres.len() >= 4);
        let names: HashSet<&str> = centres.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), centres.len(), "centre names must be unique");
        let kernels: HashSet<&str> = centres.iter().map(|c| c.kernel.as_str()).collect();
        assert!(kernels.is_superset(&HashSet::from(["STANDARD", "LUNG", "SOFT", "BONE"])));
        for centre in &centres {
            let name = &centre.name;
            assert!(
                (192..=320).contains(&centre.matrix),
                "{name}: matrix {}",
                centre.matrix
            );
            assert!((8.0..=30.0).contains(&centre.noise_sd_hu), "{name}: noise");
            assert!(
                (5.0..=10.0).contains(&centre.slice_spacing_mm),
                "{name}: spacing"
            );
            assert!(
                (5.0..=10.0).contains(&centre.slice_thickness_mm),
                "{name}: thickness"
            );
            // The widest body (scale 1.15 with jitter) is about 410 mm across.
            assert!(centre.field_of_view_mm() >= 420.0, "{name}: field of view");
            for body_scale in [BODY_SCALE.0, BODY_SCALE.1] {
                let spec = centre.spec(ScanLabel::Covid, 1, body_scale, LESION_SCALE.1);
                assert!(spec.validate().is_ok(), "{name}: {:?}", spec.validate());
            }
        }
    }

    #[test]
    fn plan_balances_centres_and_labels() {
        let scans = plan(DEFAULT_SCANS, DEFAULT_SEED);
        assert_eq!(scans.len(), DEFAULT_SCANS);
        let mut counts: BTreeMap<(&str, ScanLabel), usize> = BTreeMap::new();
        for scan in &scans {
            *counts
                .entry((scan.centre.as_str(), scan.label))
                .or_default() += 1;
        }
        assert_eq!(counts.len(), 5 * 3);
        for (key, count) in counts {
            assert_eq!(count, 20, "{key:?}");
        }
        let folders: HashSet<&PathBuf> = scans.iter().map(|s| &s.folder).collect();
        assert_eq!(folders.len(), scans.len(), "series folders must be unique");
        // Scan 5 is the second scan of the first centre.
        assert_eq!(scans[5].folder, Path::new("riverside/covid-0005"));

        // With two scans per centre the labels still spread evenly over the whole set.
        let few = plan(10, DEFAULT_SEED);
        for label in [ScanLabel::Healthy, ScanLabel::Covid, ScanLabel::Other] {
            let count = few.iter().filter(|scan| scan.label == label).count();
            assert!(
                (3..=4).contains(&count),
                "{count} {} scans of 10",
                label.name()
            );
        }
    }

    #[test]
    fn plan_gives_five_percent_second_scans() {
        let scans = plan(DEFAULT_SCANS, DEFAULT_SEED);
        let mut by_patient: HashMap<&str, Vec<&PlannedScan>> = HashMap::new();
        for scan in &scans {
            by_patient.entry(&scan.patient_id).or_default().push(scan);
        }
        let twice: Vec<&Vec<&PlannedScan>> = by_patient.values().filter(|s| s.len() == 2).collect();
        assert!(
            by_patient.values().all(|s| s.len() <= 2),
            "a patient has three scans"
        );
        let share = twice.len() as f64 / by_patient.len() as f64;
        assert!(
            (0.04..=0.06).contains(&share),
            "{} of {} patients have two scans",
            twice.len(),
            by_patient.len()
        );
        for pair in twice {
            let (first, second) = (pair[0], pair[1]);
            assert_eq!(first.label, second.label, "patient {}", first.patient_id);
            assert_eq!(first.centre, second.centre, "patient {}", first.patient_id);
            assert_eq!(first.spec.body_scale, second.spec.body_scale);
            assert_ne!(
                first.spec.seed, second.spec.seed,
                "patient {}",
                first.patient_id
            );
        }
    }

    #[test]
    fn plan_varies_size_and_seed() {
        let scans = plan(DEFAULT_SCANS, DEFAULT_SEED);
        let seeds: HashSet<u64> = scans.iter().map(|s| s.spec.seed).collect();
        assert_eq!(seeds.len(), scans.len());
        for scan in &scans {
            let spec = &scan.spec;
            assert!(
                (0.85..=1.15).contains(&spec.body_scale),
                "{}",
                scan.folder.display()
            );
            if scan.label.diseased() {
                assert!(
                    (0.6..=1.4).contains(&spec.lesion_scale),
                    "{}",
                    scan.folder.display()
                );
            } else {
                assert_eq!(spec.lesion_scale, 1.0);
            }
            assert_eq!(spec.patient_id, scan.patient_id);
            assert!(
                spec.validate().is_ok(),
                "{}: {:?}",
                scan.folder.display(),
                spec.validate()
            );
        }
        let body: Vec<f64> = scans.iter().map(|s| s.spec.body_scale).collect();
        let smallest = body.iter().copied().fold(f64::INFINITY, f64::min);
        let largest = body.iter().copied().fold(0.0, f64::max);
        assert!(
            smallest < 0.9 && largest > 1.1,
            "body scales {smallest}..{largest}"
        );
    }

    #[test]
    fn plan_depends_on_seed() {
        assert_eq!(plan(40, 3), plan(40, 3));
        let (first, second) = (plan(40, 3), plan(40, 4));
        assert!(first
            .iter()
            .zip(&second)
            .all(|(a, b)| a.spec.seed != b.spec.seed));
        // The folders and labels do not depend on the seed.
        assert!(first
            .iter()
            .zip(&second)
            .all(|(a, b)| a.folder == b.folder && a.label == b.label));
    }

    #[test]
    fn scans_cover_the_whole_lungs() {
        // The largest bodies at the widest and the narrowest slice spacing.
        let scans = plan(DEFAULT_SCANS, DEFAULT_SEED);
        for centre in ["hillcrest", "harbour"] {
            let largest = scans
                .iter()
                .filter(|scan| scan.centre == centre)
                .max_by(|a, b| a.spec.body_scale.total_cmp(&b.spec.body_scale))
                .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let truth = write_series(&largest.spec, dir.path()).unwrap();
            let name = largest.folder.display();
            assert!(!truth.lung_slices.is_empty(), "{name}: no lung");
            assert!(truth.lung_slices[0] > 0, "{name}: lung on the lowest slice");
            let last = truth.slices - 1;
            assert!(
                !truth.lung_slices.contains(&last),
                "{name}: lung on the highest slice"
            );
        }
    }

    #[test]
    fn generate_rejects_zero_scans() {
        let dir = tempfile::tempdir().unwrap();
        let options = DatasetOptions {
            scans: 0,
            ..DatasetOptions::default()
        };
        let error = generate(dir.path(), &options, &|_, _| {}).unwrap_err();
        assert!(
            matches!(error, PhantomSetError::InvalidOptions(_)),
            "{error}"
        );
    }

    /// Writes one scan per centre and label (15 scans), with the smallest or largest body
    /// and the largest lesions, over the middle 120 mm of the lungs to stay quick, then
    /// reads and preprocesses each series as `lungstream analyze` does.
    #[test]
    fn generated_series_preprocess() {
        let dir = tempfile::tempdir().unwrap();
        let mut scans = plan(15, DEFAULT_SEED);
        for (index, scan) in scans.iter_mut().enumerate() {
            let spec = &mut scan.spec;
            spec.slices = (120.0 / spec.slice_spacing_mm).ceil() as u32;
            spec.body_scale = if index % 2 == 0 {
                BODY_SCALE.1
            } else {
                BODY_SCALE.0
            };
            if scan.label.diseased() {
                spec.lesion_scale = LESION_SCALE.1;
            }
        }
        let calls = AtomicUsize::new(0);
        let manifest = write_scans(dir.path(), &scans, 2, &|done, total| {
            calls.fetch_add(1, Ordering::Relaxed);
            assert_eq!(total, 15);
            assert!((1..=total).contains(&done), "progress {done} of {total}");
        })
        .unwrap();
        assert_eq!(calls.into_inner(), 15);

        let read_back = Manifest::read(&dir.path().join(MANIFEST_FILE)).unwrap();
        assert_eq!(read_back, manifest);
        let covered: HashSet<(String, ScanLabel)> = read_back
            .entries
            .iter()
            .map(|e| (e.centre.clone(), e.label))
            .collect();
        assert_eq!(covered.len(), 15, "one scan per centre and label");

        let offsets: HashMap<String, f64> = centres()
            .into_iter()
            .map(|c| (c.name, c.calibration_offset_hu))
            .collect();
        for entry in &read_back.entries {
            let name = entry.series.display().to_string();
            let truth_text = std::fs::read_to_string(entry.series.join(GROUND_TRUTH_FILE)).unwrap();
            let truth: GroundTruth = serde_json::from_str(&truth_text).unwrap();
            assert_eq!(
                entry.infected_percent,
                Some(truth.infected_percent),
                "{name}"
            );
            if entry.label == ScanLabel::Covid {
                assert!(
                    truth.infected_percent > 0.0,
                    "{name}: COVID-19 phantom without infection"
                );
            }

            let (volume, _) = read_volume(
                std::slice::from_ref(&entry.series),
                &ReaderConfig::default(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(volume.dims.slices as u32, truth.slices, "{name}");
            let series = preprocess(&volume, &PreprocessConfig::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for side in Side::BOTH {
                let lobes = series.lobes.iter().filter(|l| l.side == side).count();
                assert!(lobes > 0, "{name}: no {} lung found", side.as_str());
            }
            let median = series.facts.background_median_hu;
            let expected = -1000.0 + offsets[&entry.centre];
            assert!(
                (median - expected).abs() <= 15.0,
                "{name}: background median {median} HU, expected {expected}"
            );
            if entry.label == ScanLabel::Healthy {
                let found = series.facts.lung_voxels.right + series.facts.lung_voxels.left;
                let error = found as f64 / truth.lung_voxels.total() as f64 - 1.0;
                assert!(
                    error.abs() <= 0.1,
                    "{name}: lung volume off by {:.1}%",
                    100.0 * error
                );
            }
        }
    }
}
