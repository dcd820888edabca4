//! Sampling the scene onto image grids: tissue labels, HU, noise and the kernel filter.

use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::PhantomError;
use crate::geometry::{orientation_cosines, quantize_ds, ImagePlane, SeriesGeometry};
use crate::random::{self, domain};
use crate::scene::Scene;
use crate::spec::{PhantomSpec, Rescale};
use crate::tissue::Tissue;

/// One rendered axial slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderedSlice {
    /// Index of the slice position (0-based, ascending z) before missing slices were
    /// removed.
    pub grid_index: u32,
    /// _Image Position (Patient)_ in mm, exactly as written to the file.
    pub image_position: [f64; 3],
    /// The real rescale used to store this slice (the written intercept differs when
    /// `declared_intercept` is set).
    pub rescale: Rescale,
    /// HU per pixel, row-major in stored orientation (`hu[row * columns + column]`). The
    /// values include noise and the kernel filter and are clamped to what the stored
    /// pixel representation can hold, but they are not rounded to stored values.
    pub hu: Vec<f32>,
    /// Tissue per pixel, in the same layout as `hu`.
    pub tissue: Vec<Tissue>,
}

impl RenderedSlice {
    /// Patient z of the slice plane in mm.
    pub fn z_mm(&self) -> f64 {
        self.image_position[2]
    }
}

/// The main series rendered in memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderedSeries {
    pub geometry: SeriesGeometry,
    /// The written slices in ascending z (missing slices left out).
    pub slices: Vec<RenderedSlice>,
    /// HU written outside the reconstruction circle with the base rescale: `padding_hu`
    /// after rounding and clamping to the stored pixel range.
    pub padding_hu: f64,
}

/// Renders the main series in memory without writing files.
///
/// # Errors
///
/// [`PhantomError::InvalidSpec`] when `spec` fails [`PhantomSpec::validate`].
pub fn render(spec: &PhantomSpec) -> Result<RenderedSeries, PhantomError> {
    spec.validate()?;
    let scene = Scene::new(spec);
    let plan = SeriesPlan::new(spec.clone(), &scene, 0);
    let slices = plan
        .written
        .par_iter()
        .map(|&grid_index| plan.render_slice(grid_index))
        .collect();
    Ok(RenderedSeries {
        padding_hu: plan.padding_hu(spec.rescale_for_slice(0)),
        geometry: plan.geometry,
        slices,
    })
}

/// Image filter that imitates a reconstruction kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum KernelFilter {
    None,
    /// 3×3 binomial blur; white noise SD drops to 0.375×.
    Smooth,
    /// Unsharp mask `x + amount (x - blur(x))`; with amount 1 the noise SD grows 1.77×.
    Sharpen(f64),
}

impl KernelFilter {
    pub fn for_kernel(kernel: &str) -> Self {
        let name = kernel.to_ascii_uppercase();
        if name.contains("BONE") || name.contains("SHARP") {
            KernelFilter::Sharpen(1.5)
        } else if name.contains("LUNG") {
            KernelFilter::Sharpen(1.0)
        } else if name.contains("SOFT") || name.contains("SMOOTH") {
            KernelFilter::Smooth
        } else {
            KernelFilter::None
        }
    }
}

/// Everything needed to render any slice of one series.
pub(crate) struct SeriesPlan<'a> {
    pub spec: PhantomSpec,
    pub scene: &'a Scene,
    pub geometry: SeriesGeometry,
    /// Patient z of every slice position, missing ones included, as written.
    pub z_positions: Vec<f64>,
    /// Grid indices of the written slices, ascending.
    pub written: Vec<u32>,
    /// 0 for the main series and 1 for the second series, which keeps their noise apart.
    pub series_index: u64,
    filter: KernelFilter,
}

impl<'a> SeriesPlan<'a> {
    pub fn new(spec: PhantomSpec, scene: &'a Scene, series_index: u64) -> Self {
        let spacing = quantize_ds(spec.pixel_spacing_mm);
        let geometry = SeriesGeometry {
            rows: spec.rows,
            columns: spec.columns,
            pixel_spacing_mm: [spacing, spacing],
            image_orientation: orientation_cosines(spec.orientation),
            slice_spacing_mm: spec.slice_spacing_mm,
            slice_thickness_mm: spec.effective_slice_thickness_mm(),
            field_of_view_mm: spec.field_of_view_mm,
            image_centre_mm: image_centre(spec.seed),
        };
        let z_start = spec.z_start_mm.unwrap_or_else(|| {
            let (low, high) = scene.anatomy.lung_z_range();
            let span = f64::from(spec.slices - 1) * spec.slice_spacing_mm;
            ((low + high - span) / 2.0 * 10.0).round() / 10.0
        });
        let z_positions = (0..spec.slices)
            .map(|k| quantize_ds(z_start + f64::from(k) * spec.slice_spacing_mm))
            .collect();
        SeriesPlan {
            filter: KernelFilter::for_kernel(&spec.kernel),
            written: spec.written_slice_indices(),
            spec,
            scene,
            geometry,
            z_positions,
            series_index,
        }
    }

    pub fn padding_hu(&self, rescale: Rescale) -> f64 {
        rescale.hu(rescale.stored_value(self.spec.padding_hu, self.spec.stored_range()))
    }

    pub fn plane(&self, grid_index: u32) -> ImagePlane {
        let z = self.z_positions[grid_index as usize];
        self.geometry.plane(self.geometry.image_position(z))
    }

    pub fn render_slice(&self, grid_index: u32) -> RenderedSlice {
        let plane = self.plane(grid_index);
        let rescale = self.spec.rescale_for_slice(grid_index);
        let options = ImageOptions {
            padding_hu: self.padding_hu(rescale),
            noise_sd_hu: self.spec.noise_sd_hu,
            noise_stream: [self.spec.seed, self.series_index, u64::from(grid_index)],
            filter: self.filter,
            hu_range: (
                rescale.hu(self.spec.stored_range().0),
                rescale.hu(self.spec.stored_range().1),
            ),
        };
        let (hu, tissue) = render_image(self.scene, &plane, &options);
        RenderedSlice {
            grid_index,
            image_position: plane.origin,
            rescale,
            hu,
            tissue,
        }
    }
}

/// Draws the offset of the image centre from the body's midline: up to ±8 mm in x and y, in
/// 0.5 mm steps, so that the body is not exactly centred, as on a real scanner.
fn image_centre(seed: u64) -> [f64; 2] {
    let mut rng = random::stream(seed, domain::ANATOMY, 1, 0);
    let mut offset = || (rng.gen_range(-8.0..8.0_f64) * 2.0).round() / 2.0;
    [offset(), offset()]
}

pub(crate) struct ImageOptions {
    /// HU of pixels outside the reconstruction circle, already representable.
    pub padding_hu: f64,
    pub noise_sd_hu: f64,
    /// Seed, series index and image index of the noise stream.
    pub noise_stream: [u64; 3],
    pub filter: KernelFilter,
    /// HU range that the stored pixel representation can hold.
    pub hu_range: (f64, f64),
}

/// Renders one image: labels and noise-free HU from the scene, then noise, the kernel
/// filter and clamping to the representable range.
pub(crate) fn render_image(
    scene: &Scene,
    plane: &ImagePlane,
    options: &ImageOptions,
) -> (Vec<f32>, Vec<Tissue>) {
    let pixels = plane.rows * plane.columns;
    let mut hu = vec![options.padding_hu; pixels];
    let mut tissue = vec![Tissue::Outside; pixels];

    for row in 0..plane.rows {
        for column in 0..plane.columns {
            if !plane.inside_fov(row, column) {
                continue;
            }
            let index = row * plane.columns + column;
            let sample = scene.anatomy.sample(plane.position(row, column));
            hu[index] = sample.hu;
            tissue[index] = sample.tissue;
        }
    }

    paint_objects(scene, plane, &mut hu, &mut tissue);
    add_noise(&mut hu, &tissue, options);
    if options.filter != KernelFilter::None {
        hu = filter_image(&hu, &tissue, plane.rows, plane.columns, options.filter);
    }

    let (low, high) = options.hu_range;
    let hu = hu
        .iter()
        .zip(&tissue)
        .map(|(&value, &label)| {
            if label == Tissue::Outside {
                options.padding_hu as f32
            } else {
                value.clamp(low, high) as f32
            }
        })
        .collect();
    (hu, tissue)
}

fn paint_objects(scene: &Scene, plane: &ImagePlane, hu: &mut [f64], tissue: &mut [Tissue]) {
    for object in &scene.objects {
        let Some((low, high)) = object.bounds_near(plane) else {
            continue;
        };
        let Some((rows, columns)) = plane.pixel_bounds(low, high) else {
            continue;
        };
        for row in rows {
            for column in columns.clone() {
                let index = row * plane.columns + column;
                if !object.replaces(tissue[index]) {
                    continue;
                }
                let p = plane.position(row, column);
                if object.contains(p) {
                    tissue[index] = object.tissue;
                    hu[index] = object.hu_at(p);
                }
            }
        }
    }
}

/// Adds Gaussian noise to every pixel inside the reconstruction circle. One draw is
/// taken per pixel, inside or not, so the noise of a pixel depends only on its index.
fn add_noise(hu: &mut [f64], tissue: &[Tissue], options: &ImageOptions) {
    if options.noise_sd_hu == 0.0 {
        return;
    }
    let [seed, series, image] = options.noise_stream;
    let mut rng = random::stream(seed, domain::NOISE, series, image);
    for (value, &label) in hu.iter_mut().zip(tissue) {
        let draw: f64 = rng.sample(StandardNormal);
        if label != Tissue::Outside {
            *value += options.noise_sd_hu * draw;
        }
    }
}

/// Applies the 3×3 kernel filter to the pixels inside the reconstruction circle.
/// Neighbours outside the image or the circle take the centre pixel's value, so the
/// padding does not leak into the image.
fn filter_image(
    hu: &[f64],
    tissue: &[Tissue],
    rows: usize,
    columns: usize,
    filter: KernelFilter,
) -> Vec<f64> {
    const WEIGHTS: [[f64; 3]; 3] = [
        [1.0 / 16.0, 2.0 / 16.0, 1.0 / 16.0],
        [2.0 / 16.0, 4.0 / 16.0, 2.0 / 16.0],
        [1.0 / 16.0, 2.0 / 16.0, 1.0 / 16.0],
    ];
    let mut output = hu.to_vec();
    for row in 0..rows {
        for column in 0..columns {
            let index = row * columns + column;
            if tissue[index] == Tissue::Outside {
                continue;
            }
            let centre = hu[index];
            let mut blurred = 0.0;
            for (dr, weights) in WEIGHTS.iter().enumerate() {
                for (dc, weight) in weights.iter().enumerate() {
                    let r = (row + dr).checked_sub(1).filter(|&r| r < rows);
                    let c = (column + dc).checked_sub(1).filter(|&c| c < columns);
                    let value = match (r, c) {
                        (Some(r), Some(c)) if tissue[r * columns + c] != Tissue::Outside => {
                            hu[r * columns + c]
                        }
                        _ => centre,
                    };
                    blurred += weight * value;
                }
            }
            output[index] = match filter {
                KernelFilter::Smooth => blurred,
                KernelFilter::Sharpen(amount) => centre + amount * (centre - blurred),
                KernelFilter::None => centre,
            };
        }
    }
    output
}
