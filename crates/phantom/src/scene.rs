//! The anatomy plus the small objects placed into the lungs: the pulmonary vessel tree
//! and the lesions of the chosen label. Objects are painted over the anatomy's label map
//! only where the tissue they may replace is found, so a lesion never leaves the lung.

use std::f64::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::anatomy::{Anatomy, Capsule, EffusionShape};
use crate::geometry::{add, cross, dot, norm, scaled, sub, ImagePlane, Vec3};
use crate::random::{self, domain};
use crate::spec::{Label, PhantomSpec};
use crate::tissue::Tissue;

/// The geometric shape of an object, in patient mm.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    Capsule(Capsule),
    /// An ellipsoid rotated by `angle` about the z axis whose surface is displaced by up
    /// to ±`roughness` of its size with smooth noise, for irregular patches.
    Blob {
        centre: Vec3,
        axes: Vec3,
        cos: f64,
        sin: f64,
        roughness: f64,
        seed: u64,
    },
    Sphere {
        centre: Vec3,
        radius: f64,
    },
    /// The part of one lung below an oblique fissure plane through the hilum (the lower
    /// lobe), limited to a sphere: `z - hilum.z < slope * (y - hilum.y) - offset`.
    LowerLobe {
        side: f64,
        hilum: Vec3,
        slope: f64,
        offset: f64,
        centre: Vec3,
        radius: f64,
    },
}

/// A vessel or lesion painted over the anatomy.
#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub tissue: Tissue,
    pub shape: Shape,
    pub hu: f64,
    /// Peak-to-peak amplitude of the smooth texture added to `hu`.
    pub texture_hu: f64,
    pub texture_seed: u64,
    low: Vec3,
    high: Vec3,
}

impl Object {
    fn new(tissue: Tissue, shape: Shape, hu: f64, texture_hu: f64, texture_seed: u64) -> Self {
        let (low, high) = match &shape {
            Shape::Capsule(capsule) => {
                let r = capsule.radius;
                (
                    [0, 1, 2].map(|i| capsule.a[i].min(capsule.b[i]) - r),
                    [0, 1, 2].map(|i| capsule.a[i].max(capsule.b[i]) + r),
                )
            }
            Shape::Blob {
                centre,
                axes,
                roughness,
                ..
            } => {
                let reach = axes[0].max(axes[1]).max(axes[2]) * (1.0 + roughness);
                (centre.map(|c| c - reach), centre.map(|c| c + reach))
            }
            Shape::Sphere { centre, radius } | Shape::LowerLobe { centre, radius, .. } => {
                (centre.map(|c| c - radius), centre.map(|c| c + radius))
            }
        };
        Object {
            tissue,
            shape,
            hu,
            texture_hu,
            texture_seed,
            low,
            high,
        }
    }

    /// Returns whether this object may paint over a voxel of `existing` tissue. Vessels
    /// and ground glass only replace parenchyma, so vessels stay visible through ground
    /// glass. Consolidation and nodules replace every lung tissue painted before them.
    pub fn replaces(&self, existing: Tissue) -> bool {
        match self.tissue {
            Tissue::Vessel | Tissue::GroundGlass => existing == Tissue::Lung,
            Tissue::Consolidation => matches!(
                existing,
                Tissue::Lung | Tissue::Vessel | Tissue::GroundGlass
            ),
            Tissue::Nodule => existing.is_lung(),
            _ => false,
        }
    }

    pub fn contains(&self, p: Vec3) -> bool {
        match &self.shape {
            Shape::Capsule(capsule) => capsule.contains(p),
            Shape::Blob {
                centre,
                axes,
                cos,
                sin,
                roughness,
                seed,
            } => {
                let d = sub(p, *centre);
                let along = cos * d[0] + sin * d[1];
                let across = -sin * d[0] + cos * d[1];
                let q = (along / axes[0]).powi(2)
                    + (across / axes[1]).powi(2)
                    + (d[2] / axes[2]).powi(2);
                if q > (1.0 + roughness).powi(2) {
                    return false;
                }
                let cell = 0.4 * (axes[0] + axes[1] + axes[2]) / 3.0;
                let noise = random::value_noise(p, cell, *seed);
                q < (1.0 + roughness * (2.0 * noise - 1.0)).powi(2)
            }
            Shape::Sphere { centre, radius } => {
                let d = sub(p, *centre);
                dot(d, d) <= radius * radius
            }
            Shape::LowerLobe {
                side,
                hilum,
                slope,
                offset,
                centre,
                radius,
            } => {
                let d = sub(p, *centre);
                p[0] * side > 0.0
                    && p[2] - hilum[2] < slope * (p[1] - hilum[1]) - offset
                    && dot(d, d) <= radius * radius
            }
        }
    }

    pub fn hu_at(&self, p: Vec3) -> f64 {
        if self.texture_hu == 0.0 {
            return self.hu;
        }
        self.hu + self.texture_hu * (random::value_noise(p, 5.0, self.texture_seed) - 0.5)
    }

    /// Returns an axis-aligned box around the part of the object near `plane`, or `None`
    /// when the object cannot touch the plane. Capsules are clipped to the slab within
    /// their radius of the plane, so a long oblique vessel gives a small box.
    pub fn bounds_near(&self, plane: &ImagePlane) -> Option<(Vec3, Vec3)> {
        let Shape::Capsule(capsule) = &self.shape else {
            return Some((self.low, self.high));
        };
        let normal = plane.normal();
        let offset = dot(plane.origin, normal);
        let distance_a = dot(capsule.a, normal) - offset;
        let direction = sub(capsule.b, capsule.a);
        let rate = dot(direction, normal);
        let r = capsule.radius;
        let (t0, t1) = if rate.abs() < 1e-12 {
            if distance_a.abs() > r {
                return None;
            }
            (0.0, 1.0)
        } else {
            let first = (-r - distance_a) / rate;
            let second = (r - distance_a) / rate;
            (first.min(second).max(0.0), first.max(second).min(1.0))
        };
        if t0 > t1 {
            return None;
        }
        let start = add(capsule.a, scaled(direction, t0));
        let end = add(capsule.a, scaled(direction, t1));
        let low = [0, 1, 2].map(|i| start[i].min(end[i]) - r);
        let high = [0, 1, 2].map(|i| start[i].max(end[i]) + r);
        Some((low, high))
    }
}

/// The anatomy with its vessels and lesions, drawn once per spec.
#[derive(Clone, Debug)]
pub(crate) struct Scene {
    pub anatomy: Anatomy,
    /// Painted in this order: vessels, ground glass, consolidation, nodules.
    pub objects: Vec<Object>,
}

impl Scene {
    pub fn new(spec: &PhantomSpec) -> Self {
        let mut rng = random::stream(spec.seed, domain::LESIONS, label_stream(spec.label), 0);
        let effusion = (spec.label == Label::Other).then(|| EffusionShape {
            side: if rng.gen_bool(0.5) { 1.0 } else { -1.0 },
            thickness: 24.0 * spec.lesion_scale,
            top: 110.0,
        });
        let anatomy = Anatomy::new(spec, effusion);

        let mut objects = vessel_tree(&anatomy, spec.seed);
        match spec.label {
            Label::Healthy => {}
            Label::Covid => objects.extend(covid_lesions(&anatomy, &mut rng, spec.lesion_scale)),
            Label::Other => objects.extend(other_lesions(&anatomy, &mut rng, spec.lesion_scale)),
        }
        objects.sort_by_key(|object| paint_order(object.tissue));
        Scene { anatomy, objects }
    }
}

fn label_stream(label: Label) -> u64 {
    match label {
        Label::Healthy => 0,
        Label::Covid => 1,
        Label::Other => 2,
    }
}

fn paint_order(tissue: Tissue) -> u8 {
    match tissue {
        Tissue::Vessel => 0,
        Tissue::GroundGlass => 1,
        Tissue::Consolidation => 2,
        _ => 3,
    }
}

/// Rotates `v` about the unit vector `axis` by `angle` radians (Rodrigues' formula).
fn rotate(v: Vec3, axis: Vec3, angle: f64) -> Vec3 {
    let (sin, cos) = angle.sin_cos();
    let term1 = scaled(v, cos);
    let term2 = scaled(cross(axis, v), sin);
    let term3 = scaled(axis, dot(axis, v) * (1.0 - cos));
    add(add(term1, term2), term3)
}

fn normalized(v: Vec3) -> Vec3 {
    scaled(v, 1.0 / norm(v))
}

/// Draws a unit vector perpendicular to `direction`, in a random orientation.
fn random_perpendicular(rng: &mut ChaCha8Rng, direction: Vec3) -> Vec3 {
    loop {
        let candidate = [
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
        ];
        let perpendicular = cross(direction, candidate);
        if norm(perpendicular) > 0.1 {
            return normalized(perpendicular);
        }
    }
}

/// Hilum of each lung (body frame), where the vessel trees start.
fn hilum(side: f64) -> Vec3 {
    let w = if side < 0.0 { 132.0 } else { 124.0 };
    [side * 40.0, 10.0, w]
}

/// Pulmonary vessels: from each hilum, seven trunks aimed at random points of the lung,
/// each splitting in two at every step with shorter, thinner children, until the radius
/// falls below 0.9 mm or five splits are done. A child whose midpoint leaves the lung is
/// not grown.
fn vessel_tree(anatomy: &Anatomy, seed: u64) -> Vec<Object> {
    let mut objects = Vec::new();
    for (stream, side) in [(0, -1.0), (1, 1.0)] {
        let mut rng = random::stream(seed, domain::VESSELS, stream, 0);
        let root = anatomy.to_patient(hilum(side));
        for _ in 0..7 {
            let target = anatomy.random_lung_point(&mut rng, side);
            let distance = norm(sub(target, root));
            let length = (0.4 * distance).clamp(25.0 * anatomy.scale, 70.0 * anatomy.scale);
            let trunk = Branch {
                start: root,
                direction: normalized(sub(target, root)),
                length,
                radius: 4.5 * anatomy.scale,
                depth: 0,
            };
            grow(anatomy, &mut rng, trunk, &mut objects);
        }
    }
    objects
}

struct Branch {
    start: Vec3,
    direction: Vec3,
    length: f64,
    radius: f64,
    depth: u32,
}

fn grow(anatomy: &Anatomy, rng: &mut ChaCha8Rng, branch: Branch, objects: &mut Vec<Object>) {
    let end = add(branch.start, scaled(branch.direction, branch.length));
    let capsule = Capsule {
        a: branch.start,
        b: end,
        radius: branch.radius,
    };
    objects.push(Object::new(
        Tissue::Vessel,
        Shape::Capsule(capsule),
        40.0,
        0.0,
        0,
    ));
    if branch.depth == 5 || branch.radius < 0.9 * anatomy.scale {
        return;
    }
    let axis = random_perpendicular(rng, branch.direction);
    let angle = rng.gen_range(20.0..40.0) * PI / 180.0;
    for sign in [1.0, -1.0] {
        let direction = rotate(branch.direction, axis, sign * angle);
        let length = branch.length * rng.gen_range(0.65..0.85);
        let radius = branch.radius * rng.gen_range(0.68..0.78);
        let midpoint = add(end, scaled(direction, length / 2.0));
        if anatomy.is_lung(midpoint) {
            let child = Branch {
                start: end,
                direction,
                length,
                radius,
                depth: branch.depth + 1,
            };
            grow(anatomy, rng, child, objects);
        }
    }
}

/// Finds the outermost lung point on a ray in the axial plane at height `w` (body frame) from
/// (side × 70, 10) in the direction `angle_degrees` (0 = lateral, 90 = posterior,
/// negative = anterior): the last lung point before the ray leaves the lung for good.
/// Returns the point and the ray direction, in patient coordinates.
fn peripheral_point(
    anatomy: &Anatomy,
    side: f64,
    w: f64,
    angle_degrees: f64,
) -> Option<(Vec3, Vec3)> {
    let angle = angle_degrees * PI / 180.0;
    let direction = [side * angle.cos(), angle.sin(), 0.0];
    let start = anatomy.to_patient([side * 70.0, 10.0, w]);
    let mut outermost = None;
    for step in 0..250 {
        let p = add(start, scaled(direction, f64::from(step)));
        if anatomy.is_lung(p) {
            outermost = Some(p);
        }
    }
    outermost.map(|p| (p, direction))
}

fn random_side(rng: &mut ChaCha8Rng) -> f64 {
    if rng.gen_bool(0.5) {
        1.0
    } else {
        -1.0
    }
}

/// Creates an irregular ellipsoid patch of mean size `radius` around `centre`.
fn blob(
    rng: &mut ChaCha8Rng,
    tissue: Tissue,
    centre: Vec3,
    radius: f64,
    hu: f64,
    texture_hu: f64,
) -> Object {
    let axes = [
        radius * rng.gen_range(0.8..1.2),
        radius * rng.gen_range(0.8..1.2),
        radius * rng.gen_range(0.7..1.0),
    ];
    let angle: f64 = rng.gen_range(0.0..PI);
    let shape = Shape::Blob {
        centre,
        axes,
        cos: angle.cos(),
        sin: angle.sin(),
        roughness: 0.3,
        seed: rng.gen(),
    };
    Object::new(tissue, shape, hu, texture_hu, rng.gen())
}

/// Places the COVID-19 pattern. Five to eight peripheral ground-glass patches lie mostly
/// basal and posterior, on both sides. One consolidation sits inside a ground-glass
/// patch, and another at a lung base has its centre past the lung boundary, so it
/// touches the chest wall.
fn covid_lesions(anatomy: &Anatomy, rng: &mut ChaCha8Rng, lesion_scale: f64) -> Vec<Object> {
    let mut objects = Vec::new();
    let height = anatomy.lung_height;
    let mm = anatomy.scale * lesion_scale;

    let patches = rng.gen_range(5..=8);
    let first_side = random_side(rng);
    for index in 0..patches {
        let side = if index % 2 == 0 {
            first_side
        } else {
            -first_side
        };
        for _attempt in 0..40 {
            // More patches low (basal) and toward posterior (90°).
            let w = height * (0.08 + 0.72 * rng.gen::<f64>().powf(1.6));
            let angle = -50.0 + 150.0 * rng.gen::<f64>().sqrt();
            let Some((boundary, direction)) = peripheral_point(anatomy, side, w, angle) else {
                continue;
            };
            let radius = rng.gen_range(22.0..40.0) * mm;
            let centre = sub(boundary, scaled(direction, 0.3 * radius));
            let hu = rng.gen_range(-700.0..-350.0);
            objects.push(blob(rng, Tissue::GroundGlass, centre, radius, hu, 80.0));
            break;
        }
    }

    if let Some(Shape::Blob { centre, axes, .. }) = objects.first().map(|o| o.shape.clone()) {
        let radius = 0.45 * axes[0].min(axes[1]);
        let hu = rng.gen_range(0.0..40.0);
        objects.push(blob(rng, Tissue::Consolidation, centre, radius, hu, 20.0));
    }

    let side = random_side(rng);
    for _attempt in 0..40 {
        let w = height * rng.gen_range(0.08..0.2);
        let angle = rng.gen_range(35.0..75.0);
        let Some((boundary, direction)) = peripheral_point(anatomy, side, w, angle) else {
            continue;
        };
        let radius = rng.gen_range(15.0..22.0) * mm;
        let centre = add(boundary, scaled(direction, 0.25 * radius));
        let hu = rng.gen_range(5.0..45.0);
        objects.push(blob(rng, Tissue::Consolidation, centre, radius, hu, 20.0));
        break;
    }
    objects
}

/// Places the pattern of another disease: two to four solid nodules near the hila and a
/// lobar consolidation in the lower lobe of one lung. The effusion belongs to the anatomy.
fn other_lesions(anatomy: &Anatomy, rng: &mut ChaCha8Rng, lesion_scale: f64) -> Vec<Object> {
    let mut objects = Vec::new();
    let mm = anatomy.scale * lesion_scale;

    let nodules = rng.gen_range(2..=4);
    for _ in 0..nodules {
        let side = random_side(rng);
        let root = anatomy.to_patient(hilum(side));
        for _attempt in 0..100 {
            let direction = normalized([
                side * rng.gen_range(0.2..1.0),
                rng.gen_range(-1.0..1.0),
                rng.gen_range(-1.0..1.0),
            ]);
            let distance = rng.gen_range(18.0..40.0) * anatomy.scale;
            let centre = add(root, scaled(direction, distance));
            if anatomy.is_lung(centre) {
                let radius = rng.gen_range(5.0..10.0) * mm;
                let shape = Shape::Sphere { centre, radius };
                objects.push(Object::new(Tissue::Nodule, shape, 30.0, 16.0, rng.gen()));
                break;
            }
        }
    }

    let side = random_side(rng);
    let shape = Shape::LowerLobe {
        side,
        hilum: anatomy.to_patient(hilum(side)),
        slope: 1.1,
        offset: 10.0 * anatomy.scale,
        centre: anatomy.to_patient([side * 75.0, 40.0, 60.0]),
        radius: 65.0 * mm,
    };
    let hu = rng.gen_range(10.0..40.0);
    objects.push(Object::new(
        Tissue::Consolidation,
        shape,
        hu,
        20.0,
        rng.gen(),
    ));
    objects
}
