"""Reference for the preprocessing benchmark: services/preprocess in numpy and scipy.

It does the same work as the Rust crate's preprocessing of a volume, written as a Python
developer would with numpy, scipy and scikit-learn. The steps are HU shift, outside-air background
median, normalisation and median filter, lung extraction per side, lobe crops with their
neighbouring slices, and the minimum periphery distance per coarse patch. It prints one
JSON object with the wall time of each repetition in seconds (loading the .npy files is
not timed) and counts that the Rust side can be compared against.

    python preprocess_numpy.py VOLUME.npy PADDING.npy --spacing ROW_MM COL_MM
        [--repeat N] [--slices K]

VOLUME.npy is int16 HU [slices, rows, columns] in the canonical frame (rows anterior to
posterior, columns the patient's right to left). PADDING.npy is a bool array of the same
shape that marks voxels with no measurement. --slices K keeps only the first K slices,
so the background median and the neighbours of the last slice come from those alone.

The output keys are seconds, slices, lobes (lung crops), lung_pixels per side (at full
resolution), background_median (shifted units, HU + 2000) and background_median_hu,
lobe_slices (indices of the slices with a crop) and versions.

Slices are processed one after another. Only scikit-learn's KMeans runs on several
threads (OpenMP), and the scipy.ndimage calls run on one.

The Rust crate also counts lung pixels per HU band and derives the pseudo-infection band
from the crops' histogram. This reference leaves both out.
"""

import argparse
import json
import math
import platform
import sys
import time

import numpy as np
import scipy
import sklearn
from scipy import ndimage
from sklearn.cluster import KMeans

# HU outside this range are artefacts and are clipped. Shifted values are HU - HU_MIN.
HU_MIN = -2000
HU_MAX = 3000
# Shifted values more than this above the background median are clipped (bone detail).
NORMALISED_MAX = 2048

# Lung extraction settings, the defaults of the Rust crate's LungConfig. The erosion and
# dilation squares are 3 and 8 pixels at 0.7 mm pixels, scaled to the series' pixel size.
EROSION_MM = 2.1
DILATION_MM = 5.6
MIN_OBJECT_AREA_MM2 = 2450.0
MAX_HOLE_AREA_MM2 = 1500.0
CLOSING_RADIUS_MM = 10.0

# Side of the square lobe crop, pixels.
CROP_SIZE = 256
# Pixel size the crops aim at, mm: coarser boxes are scaled up towards it.
CROP_PIXEL_MM = 0.7
# Coarse grid: 32×32 patches of 36 pixels, 8 pixels apart, each reaching 14 pixels before
# its 8-pixel grid cell and 14 after it.
COARSE_GRID = 32
COARSE_PATCH = 36
COARSE_STRIDE = 8

SIDES = ("right", "left")


def shift_hu(hu: np.ndarray) -> np.ndarray:
    """Clip HU to [HU_MIN, HU_MAX] and subtract HU_MIN, giving 0..5000."""
    return (np.clip(hu, HU_MIN, HU_MAX).astype(np.int32) - HU_MIN).astype(np.uint16)


def low_cluster(image: np.ndarray, padding: np.ndarray) -> np.ndarray | None:
    """Return the pixels of the lower of two K-means clusters of the non-padding values.

    The centres start at the smallest and the largest value. tol=0 makes Lloyd's
    iterations run until no value changes cluster, as the Rust crate's kmeans does.
    scikit-learn's default tol (1e-4 of the data's variance) can stop earlier, leaving
    the threshold several units away. Padding pixels are never in the cluster. Returns None when
    every pixel is padding. When all values are equal, every non-padding pixel is in the
    low cluster.
    """
    values = image[~padding].astype(np.float64).reshape(-1, 1)
    if values.size == 0:
        return None
    low = np.zeros(image.shape, dtype=bool)
    smallest, largest = values.min(), values.max()
    if smallest == largest:
        low[~padding] = True
        return low
    kmeans = KMeans(n_clusters=2, init=np.array([[smallest], [largest]]), n_init=1, tol=0)
    kmeans.fit(values)
    low[~padding] = kmeans.labels_ == np.argmin(kmeans.cluster_centers_[:, 0])
    return low


def connected_to_border(mask: np.ndarray) -> np.ndarray:
    """Return the pixels of mask that are 4-connected to the image border through mask."""
    labels, _ = ndimage.label(mask)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    border_labels = np.unique(border)
    return np.isin(labels, border_labels[border_labels != 0])


def background_mask(shifted: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """Find the outside air of one slice: low-cluster pixels connected to the border.

    Padding counts as passable for the connection, because the fill outside the
    reconstruction circle separates the air inside it from the border, but padding is
    never background itself.
    """
    low = low_cluster(shifted, padding)
    if low is None:
        return np.zeros(shifted.shape, dtype=bool)
    return connected_to_border(low | padding) & ~padding


def background_median(shifted: np.ndarray, padding: np.ndarray) -> int:
    """Return the lower median of the background values of all slices (shifted units).

    Raises SystemExit when no slice has outside air, because then the volume is not in
    Hounsfield units or contains no air around the body.
    """
    values = [shifted[k][background_mask(shifted[k], padding[k])] for k in range(len(shifted))]
    values = np.concatenate(values)
    if values.size == 0:
        raise SystemExit("no air outside the body on any slice, so the background median cannot be measured")
    middle = (values.size - 1) // 2
    return int(np.partition(values, middle)[middle])


def normalise_slice(shifted: np.ndarray, padding: np.ndarray, median: int) -> np.ndarray:
    """Subtract the background median, clip to 0..NORMALISED_MAX, zero the padding, and
    apply a 3×3 median filter.

    The integer n represents the normalised value n / NORMALISED_MAX.
    """
    normalised = np.clip(shifted.astype(np.int32) - median, 0, NORMALISED_MAX).astype(np.uint16)
    normalised[padding] = 0
    return ndimage.median_filter(normalised, size=3, mode="nearest")


def fill_small_holes(mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Fill the holes of mask (4-connected unset regions off the border) of at most
    max_pixels pixels."""
    labels, _ = ndimage.label(~mask)
    areas = np.bincount(labels.ravel())
    touches_border = np.zeros(areas.size, dtype=bool)
    touches_border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    small = (areas <= max_pixels) & ~touches_border
    small[0] = False
    return mask | small[labels]


def disk(radius: int) -> np.ndarray:
    """Return a disk structuring element: offsets (dy, dx) with dy² + dx² ≤ radius²."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def close_with_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Close mask with a disk of radius pixels (binary_closing, so pixels beyond the image
    border count as unset).

    The closing runs on the mask's bounding box grown by radius + 1, as the Rust crate's
    close_disk does. The result is the same as on the whole image: the dilation reaches
    at most radius pixels beyond the box, so the window's edge stays unset wherever the
    image border does not cut it.
    """
    if radius == 0 or not mask.any():
        return mask.copy()
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    margin = radius + 1
    window = (
        slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
        slice(max(columns[0] - margin, 0), columns[-1] + margin + 1),
    )
    closed = np.zeros(mask.shape, dtype=bool)
    closed[window] = ndimage.binary_closing(mask[window], structure=disk(radius))
    return closed


def extract_lungs(normalised: np.ndarray, padding: np.ndarray, pixel_area_mm2: float) -> dict[str, np.ndarray]:
    """Find the lungs on one normalised slice and return a full-slice mask per side.

    Foreground is the low K-means cluster. Candidate lungs are the 4-connected objects of
    the foreground opened by an erosion and a dilation (3×3 and 8×8 at 0.7 mm pixels), as
    selected by select_lung_objects. Each side's mask is its object's foreground pixels, completed by
    complete_lung_mask. A side without a lung is missing from the result.
    """
    foreground = low_cluster(normalised, padding)
    if foreground is None:
        return {}
    outside = connected_to_border(foreground | padding)
    # Everything the outside air does not reach: the body with the lungs inside it, and
    # any table or cushion. The table is centred like the body, so the midline is the
    # mean column of all of it.
    inside = ~outside
    if not inside.any():
        return {}

    pixel_side = math.sqrt(pixel_area_mm2)
    erosion = max(1, round(EROSION_MM / pixel_side))
    dilation = max(1, round(DILATION_MM / pixel_side))
    eroded = ndimage.binary_erosion(foreground, structure=np.ones((erosion, erosion)), border_value=0)
    # scipy centres an even square so that a set pixel spreads one more pixel up and left
    # than down and right. The Rust crate's dilate_square does the same.
    opened = ndimage.binary_dilation(eroded, structure=np.ones((dilation, dilation)))
    labels, _ = ndimage.label(opened)
    min_pixels = math.ceil(MIN_OBJECT_AREA_MM2 / pixel_area_mm2)
    candidates = lung_candidates(labels, outside, inside, min_pixels)
    # The midline is the mean column of `inside` over the candidates' rows, which leaves
    # out the table below the patient.
    if candidates:
        rows = np.nonzero(np.isin(labels, candidates).any(axis=1))[0]
        band = inside[rows.min() : rows.max() + 1]
    else:
        band = inside
    columns = np.nonzero(band)[1]
    midline = columns.mean() if columns.size else normalised.shape[1] / 2
    chosen = select_lung_objects(labels, candidates, midline, min_pixels)

    # Lower columns are the patient's right in the canonical frame.
    on_right = np.arange(normalised.shape[1]) < midline
    lungs = {}
    for side, (label, merged) in chosen.items():
        lung = (labels == label) & foreground
        if merged:
            lung &= on_right if side == "right" else ~on_right
        lungs[side] = complete_lung_mask(lung, inside, padding, pixel_area_mm2)
    return lungs


def lung_candidates(labels: np.ndarray, outside: np.ndarray, inside: np.ndarray, min_pixels: int) -> list[int]:
    """Return the labels of objects that may be lungs.

    Objects are dropped when they have fewer than min_pixels pixels, touch the image
    border, or lie more than half in the outside air, or less than half inside.
    """
    count = labels.max() + 1
    area = np.bincount(labels.ravel(), minlength=count)
    outside_pixels = np.bincount(labels[outside], minlength=count)
    inside_pixels = np.bincount(labels[inside], minlength=count)
    touches_border = np.zeros(count, dtype=bool)
    touches_border[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    return [
        label
        for label in range(1, count)
        if area[label] >= min_pixels
        and not touches_border[label]
        and 2 * outside_pixels[label] <= area[label]
        and 2 * inside_pixels[label] >= area[label]
    ]


def select_lung_objects(
    labels: np.ndarray, candidates: list[int], midline: float, min_pixels: int
) -> dict[str, tuple[int, bool]]:
    """Pick each side's lung among the candidate objects: {side: (label, merged)}.

    An object with at least min_pixels on both sides of the midline is two merged lungs,
    so it competes on each side with that side's part. Any other object competes on the
    side where most of it lies (the right on a tie). Each side keeps its largest
    competitor, and an earlier label wins a tie.
    """
    count = labels.max() + 1
    on_right = np.arange(labels.shape[1]) < midline
    area = np.bincount(labels.ravel(), minlength=count)
    right_area = np.bincount(labels[:, on_right].ravel(), minlength=count)
    left_area = area - right_area

    best = {"right": (0, 0, False), "left": (0, 0, False)}  # side: (area, label, merged)
    for label in candidates:
        if right_area[label] >= min_pixels and left_area[label] >= min_pixels:
            candidates = [("right", right_area[label], True), ("left", left_area[label], True)]
        else:
            side = "left" if left_area[label] > right_area[label] else "right"
            candidates = [(side, area[label], False)]
        for side, side_area, merged in candidates:
            if side_area > best[side][0]:
                best[side] = (side_area, label, merged)
    return {side: (label, merged) for side, (side_area, label, merged) in best.items() if side_area > 0}


def complete_lung_mask(
    lung: np.ndarray, inside: np.ndarray, padding: np.ndarray, pixel_area_mm2: float
) -> np.ndarray:
    """Fill the lung's small holes, close its narrow bays, and fill small holes again.

    Holes up to MAX_HOLE_AREA_MM2 are vessels, nodules and lesions inside the lung, while
    larger ones are the diaphragm's dome. The closing with a disk of CLOSING_RADIUS_MM
    adds dense lung against the chest wall. Added pixels are kept only where `inside`
    (not reached by the outside air) and not padding.
    """
    max_hole_pixels = math.floor(MAX_HOLE_AREA_MM2 / pixel_area_mm2)
    closing_radius = round(CLOSING_RADIUS_MM / math.sqrt(pixel_area_mm2))
    filled = fill_small_holes(lung, max_hole_pixels)
    closed = close_with_disk(filled, closing_radius)
    with_bays = filled | (closed & inside & ~padding)
    return fill_small_holes(with_bays, max_hole_pixels)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """Return the bounding box of the set pixels of a non-empty mask."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def crop_to_square(image: np.ndarray, box: tuple[slice, slice], order: int, pixel_mm: float) -> np.ndarray:
    """Paste image[box] into the centre of a black CROP_SIZE × CROP_SIZE image.

    The box is first scaled by min(CROP_SIZE / max(rows, columns), max(1, pixel_mm /
    CROP_PIXEL_MM)) when that is not 1, with spline order `order` (1 for values, 0 for
    masks). grid_mode maps pixel centres onto
    pixel centres and mode="nearest" repeats the edge, as the Rust crate samples.

    NOTE: scaled crops are close to the Rust ones but not equal. zoom rounds each output
    size half to even and samples each axis with its own input/output size ratio, while
    the Rust crate rounds half away from zero and uses one scale for both axes. Unscaled
    crops are equal.
    """
    part = image[box]
    scale = min(CROP_SIZE / max(part.shape), max(1.0, pixel_mm / CROP_PIXEL_MM))
    if scale != 1.0:
        part = ndimage.zoom(part, scale, order=order, mode="nearest", grid_mode=True)
    out = np.zeros((CROP_SIZE, CROP_SIZE), dtype=image.dtype)
    top = (CROP_SIZE - part.shape[0]) // 2
    left = (CROP_SIZE - part.shape[1]) // 2
    out[top : top + part.shape[0], left : left + part.shape[1]] = part
    return out


def patch_min_distance(mask: np.ndarray) -> np.ndarray:
    """Return, per coarse patch, the minimum Manhattan distance of its lung pixels to the
    nearest non-lung pixel (0 for a patch without lung).

    Pixels beyond the crop count as non-lung, so the mask is padded by one unset pixel
    before the distance transform.
    """
    distance = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1]
    no_lung = np.iinfo(distance.dtype).max
    lung_distance = np.where(mask, distance, no_lung)
    # A 36-wide minimum filter at pixel p covers p - 18 .. p + 17, so the patch of cell i
    # (pixels 8i - 14 .. 8i + 21) is centred at p = 8i + 4. Beyond the crop is no lung.
    minimum = ndimage.minimum_filter(lung_distance, size=COARSE_PATCH, mode="constant", cval=no_lung)
    centres = COARSE_STRIDE * np.arange(COARSE_GRID) + COARSE_PATCH // 2 - (COARSE_PATCH - COARSE_STRIDE) // 2
    patches = minimum[np.ix_(centres, centres)]
    patches[patches == no_lung] = 0
    return patches


def make_lobe(normalised: np.ndarray, k: int, side: str, mask: np.ndarray, pixel_mm: float) -> dict:
    """Crop one lung of slice k: the previous, this and the next slice (clamped at the
    ends) with this slice's box, the cropped mask, and its coarse patch distances."""
    box = bounding_box(mask)
    neighbours = [max(k - 1, 0), k, min(k + 1, len(normalised) - 1)]
    channels = np.stack([crop_to_square(normalised[j], box, order=1, pixel_mm=pixel_mm) for j in neighbours])
    crop_mask = crop_to_square(mask.astype(np.uint8), box, order=0, pixel_mm=pixel_mm).astype(bool)
    return {
        "slice": k,
        "side": side,
        "channels": channels,
        "mask": crop_mask,
        "lung_pixels": int(mask.sum()),
        "patch_distance": patch_min_distance(crop_mask),
    }


def preprocess(volume: np.ndarray, padding: np.ndarray, spacing_mm: tuple[float, float]) -> tuple[int, list[dict]]:
    """Run every step over a volume and return the background median (shifted units) and
    the lobes in slice order, right before left."""
    pixel_area_mm2 = spacing_mm[0] * spacing_mm[1]
    shifted = shift_hu(volume)
    median = background_median(shifted, padding)
    normalised = np.stack([normalise_slice(shifted[k], padding[k], median) for k in range(len(volume))])

    lobes = []
    for k in range(len(volume)):
        lungs = extract_lungs(normalised[k], padding[k], pixel_area_mm2)
        for side in SIDES:
            if side in lungs and lungs[side].any():
                lobes.append(make_lobe(normalised, k, side, lungs[side], float(np.sqrt(pixel_area_mm2))))
    return median, lobes


def load_inputs(volume_path: str, padding_path: str, slices: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Load and check the volume and padding arrays, keeping the first `slices` slices."""
    volume = np.load(volume_path)
    padding = np.load(padding_path)
    if volume.dtype != np.int16 or volume.ndim != 3:
        raise SystemExit(
            f"{volume_path}: expected an int16 array [slices, rows, columns], got {volume.dtype} {volume.shape}"
        )
    if padding.dtype != np.bool_ or padding.shape != volume.shape:
        raise SystemExit(
            f"{padding_path}: expected a bool array of shape {volume.shape}, got {padding.dtype} {padding.shape}"
        )
    if slices is not None:
        if slices < 1:
            raise SystemExit(f"--slices must be at least 1, got {slices}")
        volume, padding = volume[:slices], padding[:slices]
    return np.ascontiguousarray(volume), np.ascontiguousarray(padding)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", help="int16 HU array [slices, rows, columns] (.npy)")
    parser.add_argument("padding", help="bool padding array of the same shape (.npy)")
    parser.add_argument(
        "--spacing", type=float, nargs=2, required=True, metavar=("ROW_MM", "COL_MM"), help="pixel spacing in mm"
    )
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="timed repetitions (default 3)")
    parser.add_argument("--slices", type=int, metavar="K", help="process only the first K slices (default all)")
    args = parser.parse_args()
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be at least 1, got {args.repeat}")
    if min(args.spacing) <= 0:
        raise SystemExit(f"--spacing must be positive, got {args.spacing}")

    volume, padding = load_inputs(args.volume, args.padding, args.slices)
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        median, lobes = preprocess(volume, padding, tuple(args.spacing))
        seconds.append(time.perf_counter() - start)

    lung_pixels = {side: sum(lobe["lung_pixels"] for lobe in lobes if lobe["side"] == side) for side in SIDES}
    result = {
        "seconds": seconds,
        "slices": len(volume),
        "lobes": len(lobes),
        "lung_pixels": lung_pixels,
        "background_median": median,
        "background_median_hu": median + HU_MIN,
        "lobe_slices": sorted({lobe["slice"] for lobe in lobes}),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
