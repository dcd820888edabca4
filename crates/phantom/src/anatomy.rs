//! The body as a function of patient position: which tissue is at (x, y, z) and its
//! noise-free HU value.
//!
//! Internally the anatomy is laid out in a "body frame" in mm at scale 1:
//! `u = x / scale`, `v = y / scale`, `w = (z - z_base) / scale`, so u > 0 is the
//! patient's left, v > 0 posterior, and w runs from the lowest point of the lungs (w = 0)
//! to their apex (w = lung_height, about 240). The table and the cushion are not part of
//! the body and are placed in patient millimetres.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::geometry::{dot, sub, Vec3};
use crate::random::{self, domain};
use crate::spec::{Orientation, PhantomSpec};
use crate::tissue::Tissue;

/// Patient z of the lowest lung point (body frame w = 0).
const Z_BASE_MM: f64 = -300.0;

/// A tissue class with its noise-free HU value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Sample {
    pub tissue: Tissue,
    pub hu: f64,
}

impl Sample {
    fn new(tissue: Tissue, hu: f64) -> Self {
        Sample { tissue, hu }
    }
}

/// A line segment with a radius: every point within `radius` of the segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capsule {
    pub a: Vec3,
    pub b: Vec3,
    pub radius: f64,
}

impl Capsule {
    pub fn distance_squared(&self, p: Vec3) -> f64 {
        let ab = sub(self.b, self.a);
        let ap = sub(p, self.a);
        let length_squared = dot(ab, ab);
        let t = if length_squared > 0.0 {
            (dot(ap, ab) / length_squared).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let closest = [
            self.a[0] + t * ab[0],
            self.a[1] + t * ab[1],
            self.a[2] + t * ab[2],
        ];
        let d = sub(p, closest);
        dot(d, d)
    }

    pub fn contains(&self, p: Vec3) -> bool {
        self.distance_squared(p) <= self.radius * self.radius
    }
}

/// A pleural effusion: fluid along the posterior wall of one pleural cavity, `thickness`
/// (body frame mm, measured along +v) at w = 0 and thinning linearly to nothing at `top`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EffusionShape {
    /// +1 for the patient's left, -1 for the right.
    pub side: f64,
    pub thickness: f64,
    pub top: f64,
}

/// A cushion between the back and the table, with an enclosed pocket of air.
#[derive(Clone, Copy, Debug)]
struct Cushion {
    half_width: f64,
    /// Pocket centre (x, distance from the midline toward the table) in patient mm.
    pocket_centre: [f64; 2],
    pocket_axes: [f64; 2],
}

/// Every anatomical parameter, drawn once per seed.
#[derive(Clone, Debug)]
pub(crate) struct Anatomy {
    /// Millimetres per body-frame unit.
    pub scale: f64,
    /// Patient z of body frame w = 0.
    pub z_base: f64,
    /// Height of the lungs in body-frame units.
    pub lung_height: f64,
    body_axes: [f64; 2],
    fat_inner_axes: [f64; 2],
    cavity_axes: [f64; 2],
    dome_height: [f64; 2],
    heart_centre: Vec3,
    heart_axes: Vec3,
    aorta: [Capsule; 4],
    airways: [Capsule; 3],
    lungs_touching: bool,
    pub effusion: Option<EffusionShape>,
    texture_seed: u64,
    /// +1 when the table is on the posterior side (supine), -1 when anterior (prone).
    table_side: f64,
    table_top: f64,
    cushion: Option<Cushion>,
}

/// Thickness of the chest wall muscle inside the fat layer, body frame mm.
const CHEST_WALL: f64 = 16.0;
/// The diaphragm domes are centred at u = ±DOME_OFFSET_U, v = DOME_V and fall to w = 0 at
/// DOME_RADIUS from their centre.
const DOME_OFFSET_U: f64 = 60.0;
const DOME_V: f64 = -15.0;
const DOME_RADIUS: f64 = 85.0;
/// Vertebral body centre (v) and radius; the spinal canal centre (v).
const VERTEBRA_V: f64 = 55.0;
const VERTEBRA_RADIUS: f64 = 18.0;
const CANAL_V: f64 = 82.0;
const TABLE_THICKNESS_MM: f64 = 25.0;
const TABLE_HALF_WIDTH_MM: f64 = 230.0;
/// The table's top surface rises by this × x² toward its edges (a shallow cradle).
const TABLE_CURVATURE_PER_MM: f64 = 0.0005;

impl Anatomy {
    /// Draws the anatomy of `spec.seed`, shaped by the spec's body scale, lung junction,
    /// cushion and table side. The label only adds `effusion`, so the presets of one seed
    /// share one body otherwise.
    pub fn new(spec: &PhantomSpec, effusion: Option<EffusionShape>) -> Self {
        let mut rng = random::stream(spec.seed, domain::ANATOMY, 0, 0);
        let mut jitter = |low: f64, high: f64| rng.gen_range(low..high);

        let scale = spec.body_scale * jitter(0.95, 1.05);
        let body_axes = [160.0 * jitter(0.95, 1.05), 115.0 * jitter(0.95, 1.05)];
        let fat = jitter(10.0, 15.0);
        let lung_height = 240.0 * jitter(0.96, 1.04);
        let dome_right = jitter(62.0, 74.0);
        let dome_left = dome_right - jitter(6.0, 12.0);
        let heart_centre = [
            32.0 + jitter(-4.0, 4.0),
            -22.0 + jitter(-4.0, 4.0),
            66.0 + jitter(-4.0, 4.0),
        ];
        let heart_size = jitter(0.95, 1.05);
        let gap = if spec.external_air_pocket {
            30.0
        } else {
            jitter(10.0, 20.0)
        };
        let texture_seed = rng.gen();

        let fat_inner_axes = [body_axes[0] - fat, body_axes[1] - fat];
        let cavity_axes = [
            fat_inner_axes[0] - CHEST_WALL,
            fat_inner_axes[1] - CHEST_WALL,
        ];
        let table_side = if spec.orientation == Orientation::Prone {
            -1.0
        } else {
            1.0
        };
        let table_top = scale * body_axes[1] + gap;

        let capsule = |a: Vec3, b: Vec3, radius: f64| Capsule { a, b, radius };
        let aorta = [
            capsule([24.0, 32.0, -40.0], [24.0, 32.0, 168.0], 12.0),
            capsule([24.0, 32.0, 168.0], [26.0, -8.0, 178.0], 13.0),
            capsule([26.0, -8.0, 178.0], [-4.0, -24.0, 172.0], 13.0),
            capsule([-4.0, -24.0, 172.0], [-4.0, -24.0, 100.0], 14.0),
        ];
        let airways = [
            capsule([0.0, 6.0, 150.0], [0.0, 6.0, 420.0], 8.5),
            capsule([0.0, 6.0, 150.0], [-36.0, 10.0, 130.0], 6.5),
            capsule([0.0, 6.0, 150.0], [40.0, 12.0, 122.0], 5.5),
        ];

        let cushion = spec.external_air_pocket.then(|| {
            // The pocket sits in the middle of the gap beside the midline and is 60 % of
            // the gap high, so cushion surrounds it on every side in every axial slice.
            let x = 35.0 * scale;
            let body_surface =
                scale * body_axes[1] * (1.0 - (x / (scale * body_axes[0])).powi(2)).sqrt();
            let table_surface = table_top - TABLE_CURVATURE_PER_MM * x * x;
            Cushion {
                half_width: 110.0 * scale,
                pocket_centre: [x, (body_surface + table_surface) / 2.0],
                pocket_axes: [22.0 * scale, 0.3 * (table_surface - body_surface)],
            }
        });

        Anatomy {
            scale,
            z_base: Z_BASE_MM,
            lung_height,
            body_axes,
            fat_inner_axes,
            cavity_axes,
            dome_height: [dome_right, dome_left],
            heart_centre,
            heart_axes: [64.0 * heart_size, 54.0 * heart_size, 50.0 * heart_size],
            aorta,
            airways,
            lungs_touching: spec.lungs_touching,
            effusion,
            texture_seed,
            table_side,
            table_top,
            cushion,
        }
    }

    /// Patient z range (mm) from the lowest lung point to the apex.
    pub fn lung_z_range(&self) -> (f64, f64) {
        (self.z_base, self.z_base + self.scale * self.lung_height)
    }

    /// Converts a body-frame point to patient coordinates.
    pub fn to_patient(&self, frame: Vec3) -> Vec3 {
        [
            frame[0] * self.scale,
            frame[1] * self.scale,
            self.z_base + frame[2] * self.scale,
        ]
    }

    /// Tissue and noise-free HU at patient position `p` (mm), without lesions and vessels.
    pub fn sample(&self, p: Vec3) -> Sample {
        let u = p[0] / self.scale;
        let v = p[1] / self.scale;
        let w = (p[2] - self.z_base) / self.scale;

        if ellipse(u, v, self.body_axes) > 1.0 {
            return self.sample_outside_body(p);
        }
        if ellipse(u, v, self.fat_inner_axes) > 1.0 {
            return Sample::new(Tissue::Fat, -100.0 + self.texture(p, 8.0, 16.0));
        }
        if let Some(sample) = self.sample_bone(p, u, v, w) {
            return sample;
        }
        if ellipse(u, v, self.cavity_axes) > 1.0 {
            return Sample::new(Tissue::SoftTissue, 45.0 + self.texture(p, 6.0, 10.0));
        }
        if w < self.diaphragm(u, v) {
            return self.sample_abdomen(p, u, v);
        }
        self.sample_thorax(p, u, v, w)
    }

    /// Returns whether patient position `p` is lung parenchyma (before vessels and lesions).
    pub fn is_lung(&self, p: Vec3) -> bool {
        self.sample(p).tissue == Tissue::Lung
    }

    fn sample_outside_body(&self, p: Vec3) -> Sample {
        let (x, toward_table) = (p[0], self.table_side * p[1]);
        let table_surface = self.table_top - TABLE_CURVATURE_PER_MM * x * x;
        if x.abs() <= TABLE_HALF_WIDTH_MM
            && toward_table >= table_surface
            && toward_table <= table_surface + TABLE_THICKNESS_MM
        {
            return Sample::new(Tissue::Table, 100.0 + self.texture(p, 10.0, 10.0));
        }
        if let Some(cushion) = &self.cushion {
            if x.abs() <= cushion.half_width && toward_table > 0.0 && toward_table < table_surface {
                let pocket = ellipse(
                    x - cushion.pocket_centre[0],
                    toward_table - cushion.pocket_centre[1],
                    cushion.pocket_axes,
                );
                if pocket <= 1.0 {
                    return Sample::new(Tissue::Air, -1000.0);
                }
                return Sample::new(Tissue::Cushion, -60.0 + self.texture(p, 6.0, 20.0));
            }
        }
        Sample::new(Tissue::Air, -1000.0)
    }

    /// Vertebrae, ribs and sternum; also the soft tissue inside the spine (discs, canal),
    /// which must not become lung.
    fn sample_bone(&self, p: Vec3, u: f64, v: f64, w: f64) -> Option<Sample> {
        let bone = |hu: f64| Some(Sample::new(Tissue::Bone, hu + self.texture(p, 4.0, 60.0)));
        let soft = |hu: f64| {
            Some(Sample::new(
                Tissue::SoftTissue,
                hu + self.texture(p, 4.0, 10.0),
            ))
        };

        let vertebra = u * u + (v - VERTEBRA_V).powi(2);
        if vertebra < VERTEBRA_RADIUS * VERTEBRA_RADIUS {
            // A 5 mm disc every 28 mm between the vertebral bodies.
            if w.rem_euclid(28.0) < 5.0 {
                return soft(80.0);
            }
            let cortex = (VERTEBRA_RADIUS - 2.5).powi(2);
            return bone(if vertebra > cortex { 850.0 } else { 260.0 });
        }
        let canal = u * u + (v - CANAL_V).powi(2);
        if canal < 8.0 * 8.0 {
            return soft(15.0);
        }
        let lamina = canal < 14.0 * 14.0 && v > CANAL_V - 4.0;
        let spinous_process = u.abs() < 4.5 && v > 88.0 && v < 108.0;
        let transverse_process = (v - 76.0).abs() < 4.0 && u.abs() < 34.0;
        if lamina || spinous_process || transverse_process {
            return bone(600.0);
        }

        let [a, b] = self.cavity_axes;
        let sternum = u.abs() < 14.0
            && v < -(b + 2.0)
            && v > -(b + 14.0)
            && w > 0.35 * self.lung_height
            && w < 0.95 * self.lung_height;
        if sternum {
            return bone(450.0);
        }

        // Ribs: bands in the chest wall ring just outside the pleural cavity. A rib's
        // posterior end lies 28 mm higher than its anterior end, as real ribs slope.
        let in_ring =
            ellipse(u, v, [a + 1.0, b + 1.0]) >= 1.0 && ellipse(u, v, [a + 10.0, b + 10.0]) <= 1.0;
        let in_rib_range = w > -70.0 && w < self.lung_height + 10.0;
        let costal_gap = (v < 0.0 && u.abs() < 30.0) || (v > 0.0 && u.abs() < 20.0);
        if in_ring && in_rib_range && !costal_gap {
            let (nu, nv) = (u / (a + 5.0), v / (b + 5.0));
            let sine = nv / (nu * nu + nv * nv).sqrt();
            let phase = (w - 28.0 * sine - 7.0) / 24.0;
            let fraction = phase - phase.floor();
            if (fraction - 0.5).abs() * 24.0 < 5.0 {
                return bone(650.0);
            }
        }
        None
    }

    /// Height (w) of the diaphragm at (u, v): two domes, the right one higher, falling to
    /// w = 0 at the edges of the cavity.
    fn diaphragm(&self, u: f64, v: f64) -> f64 {
        let dome = |centre_u: f64, height: f64| {
            let r2 = (u - centre_u).powi(2) + (v - DOME_V).powi(2);
            height * (1.0 - r2 / (DOME_RADIUS * DOME_RADIUS))
        };
        let right = dome(-DOME_OFFSET_U, self.dome_height[0]);
        let left = dome(DOME_OFFSET_U, self.dome_height[1]);
        right.max(left).max(0.0)
    }

    fn sample_abdomen(&self, p: Vec3, u: f64, v: f64) -> Sample {
        // The liver fills the right upper abdomen and reaches across the midline
        // anteriorly; stomach, spleen and bowel are lumped as soft tissue.
        if ellipse(u + 45.0, v + 10.0, [95.0, 75.0]) <= 1.0 {
            Sample::new(Tissue::Liver, 55.0 + self.texture(p, 6.0, 8.0))
        } else {
            Sample::new(Tissue::SoftTissue, 40.0 + self.texture(p, 6.0, 10.0))
        }
    }

    fn sample_thorax(&self, p: Vec3, u: f64, v: f64, w: f64) -> Sample {
        let frame = [u, v, w];
        let heart = ellipsoid(sub(frame, self.heart_centre), self.heart_axes);
        if heart <= 1.0 {
            return Sample::new(Tissue::Heart, 40.0 + self.texture(p, 6.0, 8.0));
        }
        if self.aorta.iter().any(|vessel| vessel.contains(frame)) {
            return Sample::new(Tissue::SoftTissue, 42.0 + self.texture(p, 6.0, 8.0));
        }
        if let Some(side) = self.pleural_side(u, v, w) {
            if self.in_effusion(side, u, v, w) {
                return Sample::new(Tissue::Effusion, 10.0 + self.texture(p, 6.0, 6.0));
            }
            // Dependent (posterior) lung is slightly denser, as in a supine scan.
            let gradient = 35.0 * v / self.cavity_axes[1];
            return Sample::new(Tissue::Lung, -860.0 + gradient + self.texture(p, 6.0, 60.0));
        }
        if self.airways.iter().any(|airway| airway.contains(frame)) {
            return Sample::new(Tissue::Airway, -1000.0);
        }
        Sample::new(Tissue::SoftTissue, 40.0 + self.texture(p, 6.0, 10.0))
    }

    /// Returns the side (+1 left, -1 right) of the pleural cavity that contains a point.
    /// The caller has checked that the point is inside the chest wall, above the diaphragm
    /// and outside the heart and aorta. Returns `None` in the mediastinum, beside the
    /// spine and above the apex.
    fn pleural_side(&self, u: f64, v: f64, w: f64) -> Option<f64> {
        if w > self.lung_height || u == 0.0 {
            return None;
        }
        let side = u.signum();
        if u.abs() <= self.mediastinum_half_width(v, w) {
            return None;
        }
        let beside_vertebra = u * u + (v - VERTEBRA_V).powi(2) < (VERTEBRA_RADIUS + 5.0).powi(2);
        let behind_vertebra = u.abs() < 34.0 && v > 68.0;
        if beside_vertebra || behind_vertebra {
            return None;
        }
        // Toward the apex each lung's cross-section shrinks to a point at (±48, 12).
        let shoulder = self.lung_height - 80.0;
        if w > shoulder {
            let t = (w - shoulder) / (self.lung_height - shoulder);
            let shrink = (1.0 - t * t).sqrt();
            let apex = ellipse(u - side * 48.0, v - 12.0, [95.0 * shrink, 105.0 * shrink]);
            if apex > 1.0 {
                return None;
            }
        }
        Some(side)
    }

    /// Half-width (u) of the mediastinum between the lungs at depth v and height w.
    fn mediastinum_half_width(&self, v: f64, w: f64) -> f64 {
        let junction =
            self.lungs_touching && w > 0.5 * self.lung_height && w < 0.85 * self.lung_height;
        let anterior = if junction { 0.0 } else { 9.0 };
        if v < -30.0 {
            anterior
        } else if v < -10.0 {
            anterior + (26.0 - anterior) * (v + 30.0) / 20.0
        } else if v <= 40.0 {
            26.0
        } else {
            20.0
        }
    }

    /// Returns whether a pleural-cavity point of `side` is effusion, which is the case
    /// within the effusion's thickness of the posterior cavity wall.
    fn in_effusion(&self, side: f64, u: f64, v: f64, w: f64) -> bool {
        let Some(effusion) = self.effusion else {
            return false;
        };
        if effusion.side != side || w >= effusion.top {
            return false;
        }
        let thickness = effusion.thickness * (1.0 - w / effusion.top);
        ellipse(u, v + thickness, self.cavity_axes) > 1.0
    }

    /// Smooth texture in ±amplitude/2 HU with lattice cells of `cell_mm`.
    fn texture(&self, p: Vec3, cell_mm: f64, amplitude: f64) -> f64 {
        amplitude * (random::value_noise(p, cell_mm, self.texture_seed) - 0.5)
    }

    /// Draws a random point of lung parenchyma on `side` (+1 left, -1 right) by rejection.
    pub fn random_lung_point(&self, rng: &mut ChaCha8Rng, side: f64) -> Vec3 {
        loop {
            let frame = [
                side * rng.gen_range(0.0..self.cavity_axes[0]),
                rng.gen_range(-self.cavity_axes[1]..self.cavity_axes[1]),
                rng.gen_range(0.0..self.lung_height),
            ];
            let p = self.to_patient(frame);
            if self.is_lung(p) {
                return p;
            }
        }
    }
}

/// (u/a)² + (v/b)²: below 1 inside the ellipse with semi-axes `axes`.
fn ellipse(u: f64, v: f64, axes: [f64; 2]) -> f64 {
    (u / axes[0]).powi(2) + (v / axes[1]).powi(2)
}

fn ellipsoid(d: Vec3, axes: Vec3) -> f64 {
    (d[0] / axes[0]).powi(2) + (d[1] / axes[1]).powi(2) + (d[2] / axes[2]).powi(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anatomy() -> Anatomy {
        Anatomy::new(&PhantomSpec::default(), None)
    }

    #[test]
    fn landmarks_have_expected_tissue() {
        let anatomy = anatomy();
        let s = anatomy.scale;
        let at = |u: f64, v: f64, w: f64| anatomy.sample(anatomy.to_patient([u, v, w])).tissue;
        // Mid-height of each lung, 80 mm lateral.
        assert_eq!(at(-80.0, 10.0, 150.0), Tissue::Lung);
        assert_eq!(at(80.0, 10.0, 150.0), Tissue::Lung);
        assert_eq!(at(0.0, 6.0, 200.0), Tissue::Airway);
        assert_eq!(at(0.0, VERTEBRA_V, 10.0 + 28.0 * 4.0), Tissue::Bone);
        assert_eq!(at(32.0, -22.0, 66.0), Tissue::Heart);
        assert_eq!(at(-60.0, 0.0, -20.0), Tissue::Liver);
        // Far outside the body, lateral to the table.
        assert_eq!(
            anatomy.sample([0.0, -170.0 * s, -100.0]).tissue,
            Tissue::Air
        );
        // Above the apex there is no lung.
        assert_ne!(at(-48.0, 12.0, anatomy.lung_height + 1.0), Tissue::Lung);
    }

    #[test]
    fn table_moves_to_anterior_side_when_prone() {
        let supine = anatomy();
        let prone = Anatomy::new(
            &PhantomSpec {
                orientation: Orientation::Prone,
                ..PhantomSpec::default()
            },
            None,
        );
        let below_back = [0.0, supine.table_top + 5.0, -100.0];
        let in_front = [0.0, -(prone.table_top + 5.0), -100.0];
        assert_eq!(supine.sample(below_back).tissue, Tissue::Table);
        assert_eq!(prone.sample(in_front).tissue, Tissue::Table);
        assert_eq!(prone.sample(below_back).tissue, Tissue::Air);
    }
}
