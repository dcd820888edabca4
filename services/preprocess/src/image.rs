//! A minimal row-major 2-D image and the binary morphology the lung extraction needs.

/// A row-major 2-D image.
#[derive(Clone, Debug, PartialEq)]
pub struct Image<T> {
    pub rows: usize,
    pub columns: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Image<T> {
    /// Creates an image filled with `value`.
    pub fn filled(rows: usize, columns: usize, value: T) -> Self {
        Image {
            rows,
            columns,
            data: vec![value; rows * columns],
        }
    }

    /// Wraps row-major `data`.
    ///
    /// # Panics
    ///
    /// If `data` does not have `rows * columns` elements.
    pub fn from_vec(rows: usize, columns: usize, data: Vec<T>) -> Self {
        assert_eq!(data.len(), rows * columns, "image data length");
        Image { rows, columns, data }
    }

    pub fn get(&self, row: usize, column: usize) -> T {
        self.data[row * self.columns + column]
    }

    pub fn set(&mut self, row: usize, column: usize, value: T) {
        self.data[row * self.columns + column] = value;
    }
}

/// A binary image.
pub type Mask = Image<bool>;

impl Mask {
    /// Number of set pixels.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|v| **v).count()
    }
}

/// Erodes `mask` with a `size` × `size` square: a pixel stays set when every pixel of the
/// square around it is set. Pixels beyond the border count as unset, as in scipy.ndimage,
/// and the square covers the same offsets as in [`dilate_square`].
pub fn erode_square(mask: &Mask, size: usize) -> Mask {
    separable(mask, size, erode_line)
}

/// Dilates `mask` with a `size` × `size` square: a pixel is set when any pixel of the
/// square around it is set. For an even size the square covers offsets
/// `-(size/2 - 1) ..= size/2` around the pixel, as scipy.ndimage centres it, so a single
/// set pixel spreads `size/2` pixels up and left and `size/2 - 1` down and right.
///
/// The square is separable, so this runs a 1-D running maximum along rows, then along
/// columns: O(pixels) whatever the size.
pub fn dilate_square(mask: &Mask, size: usize) -> Mask {
    separable(mask, size, dilate_line)
}

/// Applies a 1-D window operation along rows, then along columns.
fn separable(mask: &Mask, size: usize, line_op: fn(&[bool], &mut [bool], usize, usize)) -> Mask {
    // scipy.ndimage centres an even square one pixel before its middle.
    let before = (size - 1) / 2;
    let after = size - 1 - before;
    let (rows, columns) = (mask.rows, mask.columns);
    let mut horizontal = vec![false; rows * columns];
    for r in 0..rows {
        let line = &mask.data[r * columns..(r + 1) * columns];
        line_op(line, &mut horizontal[r * columns..(r + 1) * columns], before, after);
    }
    // Transpose, run the same row operation, transpose back: rows stay contiguous.
    let transposed = transpose(&horizontal, rows, columns);
    let mut vertical = vec![false; rows * columns];
    for c in 0..columns {
        line_op(&transposed[c * rows..(c + 1) * rows], &mut vertical[c * rows..(c + 1) * rows], before, after);
    }
    Mask::from_vec(rows, columns, transpose(&vertical, columns, rows))
}

/// Transposes a row-major `rows` × `columns` array, in 32 × 32 tiles to stay in cache.
fn transpose(data: &[bool], rows: usize, columns: usize) -> Vec<bool> {
    const TILE: usize = 32;
    let mut out = vec![false; rows * columns];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..columns).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(columns) {
                    out[c * rows + r] = data[r * columns + c];
                }
            }
        }
    }
    out
}

/// Sets `out[i]` when all of `line[i - before ..= i + after]` are set and inside the line,
/// using a count of unset pixels in the sliding window.
fn erode_line(line: &[bool], out: &mut [bool], before: usize, after: usize) {
    let n = line.len();
    let mut unset = 0usize;
    for value in line.iter().take(after.min(n.saturating_sub(1)) + 1) {
        unset += usize::from(!*value);
    }
    for i in 0..n {
        out[i] = unset == 0 && i >= before && i + after < n;
        if i + 1 + after < n {
            unset += usize::from(!line[i + 1 + after]);
        }
        if i >= before {
            unset -= usize::from(!line[i - before]);
        }
    }
}

/// Sets `out[i]` when any of `line[i - before ..= i + after]` is set, using a count of set
/// pixels in the sliding window.
fn dilate_line(line: &[bool], out: &mut [bool], before: usize, after: usize) {
    let n = line.len();
    let mut count = 0usize;
    // Window for i = 0 covers 0 ..= after.
    for value in line.iter().take(after.min(n.saturating_sub(1)) + 1) {
        count += usize::from(*value);
    }
    for i in 0..n {
        out[i] = count > 0;
        // Slide to i + 1: add i + 1 + after, drop i - before.
        if i + 1 + after < n {
            count += usize::from(line[i + 1 + after]);
        }
        if i >= before {
            count -= usize::from(line[i - before]);
        }
    }
}

/// Connected components of a mask (4-connectivity).
#[derive(Clone, Debug)]
pub struct Components {
    /// 0 for unset pixels, else the component number (1-based).
    pub labels: Image<u32>,
    /// Pixel count of each component; index 0 is unused.
    pub areas: Vec<usize>,
    /// Whether each component touches the image border; index 0 is unused.
    pub touches_border: Vec<bool>,
}

/// Labels the 4-connected components of `mask` by flood filling with an explicit stack.
pub fn label_components(mask: &Mask) -> Components {
    let (rows, columns) = (mask.rows, mask.columns);
    let mut labels = Image::filled(rows, columns, 0u32);
    let mut areas = vec![0];
    let mut touches_border = vec![false];
    let mut stack: Vec<usize> = Vec::new();
    for start in 0..rows * columns {
        if !mask.data[start] || labels.data[start] != 0 {
            continue;
        }
        let label = areas.len() as u32;
        let (mut area, mut border) = (0usize, false);
        labels.data[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            area += 1;
            let (r, c) = (i / columns, i % columns);
            border |= r == 0 || c == 0 || r + 1 == rows || c + 1 == columns;
            for_each_neighbour(i, r, c, rows, columns, |j| {
                if mask.data[j] && labels.data[j] == 0 {
                    labels.data[j] = label;
                    stack.push(j);
                }
            });
        }
        areas.push(area);
        touches_border.push(border);
    }
    Components {
        labels,
        areas,
        touches_border,
    }
}

/// Calls `visit` with the index of each 4-neighbour of pixel `i` at (`r`, `c`).
#[inline(always)]
fn for_each_neighbour(i: usize, r: usize, c: usize, rows: usize, columns: usize, mut visit: impl FnMut(usize)) {
    if r > 0 {
        visit(i - columns);
    }
    if r + 1 < rows {
        visit(i + columns);
    }
    if c > 0 {
        visit(i - 1);
    }
    if c + 1 < columns {
        visit(i + 1);
    }
}

/// Returns the pixels of `passable` reachable from the image border through passable
/// pixels (4-connectivity).
pub fn reachable_from_border(passable: &Mask) -> Mask {
    let (rows, columns) = (passable.rows, passable.columns);
    let mut reached = Mask::filled(rows, columns, false);
    let mut stack: Vec<usize> = Vec::new();
    let border = (0..columns)
        .flat_map(|c| [c, (rows - 1) * columns + c])
        .chain((0..rows).flat_map(|r| [r * columns, r * columns + columns - 1]));
    for i in border {
        if passable.data[i] && !reached.data[i] {
            reached.data[i] = true;
            stack.push(i);
        }
    }
    while let Some(i) = stack.pop() {
        let (r, c) = (i / columns, i % columns);
        for_each_neighbour(i, r, c, rows, columns, |j| {
            if passable.data[j] && !reached.data[j] {
                reached.data[j] = true;
                stack.push(j);
            }
        });
    }
    reached
}

/// Fills the holes of `mask`: unset pixels that the border cannot reach through unset
/// pixels.
pub fn fill_holes(mask: &Mask) -> Mask {
    let outside = reachable_from_border(&Mask::from_vec(
        mask.rows,
        mask.columns,
        mask.data.iter().map(|v| !v).collect(),
    ));
    Mask::from_vec(mask.rows, mask.columns, outside.data.iter().map(|v| !v).collect())
}

/// Fills the holes of `mask` that have at most `max_area` pixels.
///
/// Only the bounding box of the set pixels, grown by one pixel, is labelled: everything
/// beyond it is unset and joins the outside.
pub fn fill_small_holes(mask: &Mask, max_area: usize) -> Mask {
    let Some((top, left, rows, columns)) = bounding_box(mask, 1) else {
        return mask.clone();
    };
    let window = Mask::from_vec(
        rows,
        columns,
        (0..rows * columns).map(|i| mask.get(top + i / columns, left + i % columns)).collect(),
    );
    let complement = Mask::from_vec(rows, columns, window.data.iter().map(|v| !v).collect());
    let components = label_components(&complement);
    let mut out = mask.clone();
    for (i, label) in components.labels.data.iter().enumerate() {
        let label = *label as usize;
        if label != 0 && !components.touches_border[label] && components.areas[label] <= max_area {
            out.set(top + i / columns, left + i % columns, true);
        }
    }
    out
}

/// Returns the bounding box of the set pixels, grown by `margin` and clipped to the image,
/// as (first row, first column, rows, columns). Returns `None` for an empty mask.
pub fn bounding_box(mask: &Mask, margin: usize) -> Option<(usize, usize, usize, usize)> {
    let (mut top, mut bottom, mut left, mut right) = (usize::MAX, 0, usize::MAX, 0);
    for (i, set) in mask.data.iter().enumerate() {
        if *set {
            let (r, c) = (i / mask.columns, i % mask.columns);
            top = top.min(r);
            bottom = bottom.max(r);
            left = left.min(c);
            right = right.max(c);
        }
    }
    if top == usize::MAX {
        return None;
    }
    let (top, left) = (top.saturating_sub(margin), left.saturating_sub(margin));
    let bottom = (bottom + margin).min(mask.rows - 1);
    let right = (right + margin).min(mask.columns - 1);
    Some((top, left, bottom - top + 1, right - left + 1))
}

/// Closes `mask` with a disk of `radius` pixels (dilation, then erosion), filling gaps
/// and bays narrower than the disk. Pixels beyond the image border count as unset.
///
/// Both steps threshold an exact Euclidean distance transform, computed only over the
/// mask's bounding box grown by the radius, so the cost does not grow with the radius.
pub fn close_disk(mask: &Mask, radius: usize) -> Mask {
    let mut out = mask.clone();
    if radius == 0 {
        return out;
    }
    let Some((top, left, rows, columns)) = bounding_box(mask, radius + 1) else {
        return out;
    };
    let window: Vec<bool> = (0..rows * columns)
        .map(|i| mask.get(top + i / columns, left + i % columns))
        .collect();
    let limit = (radius * radius) as f64;
    let to_mask = squared_distance_to_set(&window, rows, columns);
    let dilated: Vec<bool> = to_mask.iter().map(|d| *d <= limit).collect();
    let outside_dilated: Vec<bool> = dilated.iter().map(|v| !v).collect();
    // Beyond the window is outside the dilation: the window's edge is unset unless the
    // image border cuts the margin, where beyond-border pixels count as unset too.
    let to_outside = squared_distance_to_set_with_border(&outside_dilated, rows, columns);
    for r in 0..rows {
        for c in 0..columns {
            if to_outside[r * columns + c] > limit {
                out.set(top + r, left + c, true);
            }
        }
    }
    out
}

/// Squared Euclidean distance from every pixel to the nearest set pixel (infinite when
/// none is set), by Felzenszwalb and Huttenlocher's two-pass lower-envelope algorithm.
fn squared_distance_to_set(set: &[bool], rows: usize, columns: usize) -> Vec<f64> {
    let mut grid: Vec<f64> = set.iter().map(|s| if *s { 0.0 } else { f64::INFINITY }).collect();
    let mut line = Vec::new();
    for r in 0..rows {
        line.clear();
        line.extend_from_slice(&grid[r * columns..(r + 1) * columns]);
        let transformed = distance_1d(&line);
        grid[r * columns..(r + 1) * columns].copy_from_slice(&transformed);
    }
    for c in 0..columns {
        line.clear();
        line.extend((0..rows).map(|r| grid[r * columns + c]));
        let transformed = distance_1d(&line);
        for (r, value) in transformed.into_iter().enumerate() {
            grid[r * columns + c] = value;
        }
    }
    grid
}

/// As [`squared_distance_to_set`], with every pixel beyond the border counted as set.
fn squared_distance_to_set_with_border(set: &[bool], rows: usize, columns: usize) -> Vec<f64> {
    let (outer_rows, outer_columns) = (rows + 2, columns + 2);
    let mut framed = vec![true; outer_rows * outer_columns];
    for r in 0..rows {
        for c in 0..columns {
            framed[(r + 1) * outer_columns + c + 1] = set[r * columns + c];
        }
    }
    let distances = squared_distance_to_set(&framed, outer_rows, outer_columns);
    (0..rows * columns)
        .map(|i| distances[(i / columns + 1) * outer_columns + i % columns + 1])
        .collect()
}

/// One-dimensional squared distance transform of a sampled function `f` (0 at set pixels,
/// infinity elsewhere, or the result of a previous pass).
fn distance_1d(f: &[f64]) -> Vec<f64> {
    let n = f.len();
    let mut out = vec![f64::INFINITY; n];
    let finite: Vec<usize> = (0..n).filter(|q| f[*q].is_finite()).collect();
    if finite.is_empty() {
        return out;
    }
    // Parabolas of the lower envelope: their vertices and the boundaries between them.
    let mut vertices: Vec<usize> = Vec::with_capacity(finite.len());
    let mut boundaries: Vec<f64> = Vec::with_capacity(finite.len() + 1);
    for &q in &finite {
        loop {
            let Some(&p) = vertices.last() else {
                vertices.push(q);
                boundaries.push(f64::NEG_INFINITY);
                break;
            };
            let (qf, pf) = (q as f64, p as f64);
            let crossing = ((f[q] + qf * qf) - (f[p] + pf * pf)) / (2.0 * (qf - pf));
            if crossing <= *boundaries.last().unwrap() {
                vertices.pop();
                boundaries.pop();
                continue;
            }
            vertices.push(q);
            boundaries.push(crossing);
            break;
        }
    }
    let mut k = 0;
    for (x, value) in out.iter_mut().enumerate() {
        let xf = x as f64;
        while k + 1 < vertices.len() && boundaries[k + 1] < xf {
            k += 1;
        }
        let p = vertices[k];
        *value = (xf - p as f64).powi(2) + f[p];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&str]) -> Mask {
        let columns = rows[0].len();
        let data = rows.iter().flat_map(|r| r.chars().map(|c| c == '#')).collect();
        Mask::from_vec(rows.len(), columns, data)
    }

    fn render(mask: &Mask) -> Vec<String> {
        mask.data
            .chunks(mask.columns)
            .map(|row| row.iter().map(|v| if *v { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn dilate_3x3_grows_a_point() {
        let point = mask(&[".....", ".....", "..#..", ".....", "....."]);
        assert_eq!(render(&dilate_square(&point, 3)), [".....", ".###.", ".###.", ".###.", "....."]);
    }

    #[test]
    fn dilate_even_size_reaches_up_and_left() {
        // Size 4: each pixel looks at offsets -1 ..= 2, as scipy.ndimage centres even
        // structuring elements, so a point spreads one pixel further up and left.
        let point = mask(&[".....", ".....", "..#..", ".....", "....."]);
        assert_eq!(render(&dilate_square(&point, 4)), ["####.", "####.", "####.", "####.", "....."]);
    }

    #[test]
    fn erode_3x3_keeps_the_core() {
        let block = mask(&["#####", "#####", "#####", "####.", "#####"]);
        // The border counts as unset, and the hole at (3, 4) removes its neighbours.
        assert_eq!(render(&erode_square(&block, 3)), [".....", ".###.", ".##..", ".##..", "....."]);
    }

    #[test]
    fn components_and_border() {
        let image = mask(&["##...", "#....", "...##", "...##", "#...."]);
        let components = label_components(&image);
        assert_eq!(components.areas, vec![0, 3, 4, 1]);
        assert_eq!(components.touches_border, vec![false, true, true, true]);
        let inner = mask(&[".....", ".##..", ".##..", ".....", "....."]);
        assert_eq!(label_components(&inner).touches_border, vec![false, false]);
    }

    #[test]
    fn fill_holes_fills_enclosed_only() {
        let ring = mask(&["#####", "#...#", "#.#.#", "#####", "....."]);
        assert_eq!(render(&fill_holes(&ring)), ["#####", "#####", "#####", "#####", "....."]);
        let open = mask(&["##.##", "#...#", "#####"]);
        assert_eq!(render(&fill_holes(&open)), ["##.##", "#...#", "#####"]);
    }

    #[test]
    fn fill_small_holes_keeps_large_ones() {
        // A one-pixel hole and a 3×3 hole; only the first has at most 4 pixels.
        let rings = mask(&["########", "#.##...#", "####...#", "####...#", "########"]);
        assert_eq!(
            render(&fill_small_holes(&rings, 4)),
            ["########", "####...#", "####...#", "####...#", "########"]
        );
    }

    #[test]
    fn distance_transform_is_euclidean() {
        let mut set = vec![false; 5 * 5];
        set[0] = true;
        let distances = squared_distance_to_set(&set, 5, 5);
        assert_eq!(distances[4 * 5 + 3], 16.0 + 9.0);
        assert_eq!(distances[2 * 5 + 2], 8.0);
        assert_eq!(squared_distance_to_set(&[false; 4], 2, 2)[0], f64::INFINITY);
    }

    #[test]
    fn close_disk_keeps_a_wide_bay() {
        // A bay 5 pixels wide, open to the border, stays open under a radius-1 closing;
        // only its square inner corners are rounded off.
        let bay = mask(&["#########", "##.....##", "##.....##", "##.....##"]);
        assert_eq!(render(&close_disk(&bay, 1)), ["#########", "###...###", "##.....##", "##.....##"]);
    }

    #[test]
    fn close_disk_fills_a_narrow_bay() {
        let bay = mask(&["#######", "#######", "###.###", "###.###", "#######"]);
        assert_eq!(render(&close_disk(&bay, 1)), ["#######"; 5]);
    }
}
