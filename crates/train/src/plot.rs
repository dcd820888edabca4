//! PNG line charts with no font or plotting dependency, used for the ROC curves of an
//! evaluation and the loss curves of a training run.
//!
//! Text uses a built-in bitmap font: 5×7 pixel glyphs plus two descender rows, covering
//! A–Z, a–z, 0–9, space and `. , - + % ( ) / : = _ ?`. Any other character is drawn as `?`.
//! Text, padding and legend scale with the image size, and lines are 2 pixels wide.

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// (x, y) points in data units, joined in the given order. A point with a non-finite
    /// coordinate breaks the line, and a series of one point is drawn as a dot.
    pub points: Vec<(f64, f64)>,
    /// RGB colour of the line and its legend entry.
    pub colour: [u8; 3],
    pub dashed: bool,
}

/// A line chart with axes, grid, title and legend.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    /// Label of the y axis, drawn horizontally above the axis.
    pub y_label: String,
    /// Visible x range. `None`, or a range with a non-finite end, fits the data with a 5%
    /// margin on each side. The ends may come in either order, and a zero-width range is
    /// widened as for a flat series. Parts of lines outside the range are clipped.
    pub x_range: Option<(f64, f64)>,
    /// Visible y range, with the same rules as `x_range`.
    pub y_range: Option<(f64, f64)>,
    /// The x values count something, such as epochs: x ticks fall on whole numbers only.
    pub whole_x: bool,
    pub series: Vec<Series>,
}

const WHITE: [u8; 3] = [255, 255, 255];
const TEXT_COLOUR: [u8; 3] = [20, 20, 20];
const AXIS_COLOUR: [u8; 3] = [60, 60, 60];
const GRID_COLOUR: [u8; 3] = [228, 228, 228];
const LEGEND_BORDER_COLOUR: [u8; 3] = [180, 180, 180];

/// Half the width of a data line, in pixels.
const LINE_HALF_WIDTH: f64 = 1.0;

/// Number of tick intervals the axes aim for.
const TICK_TARGET: usize = 5;

/// Fraction of the data extent added on each side of a fitted range.
const RANGE_MARGIN: f64 = 0.05;

/// Renders the chart as an RGB PNG of `width` × `height` pixels.
///
/// Images below about 200 × 150 pixels leave little room for the plot. When the margins
/// leave no plot area at all, only the title is drawn.
///
/// # Panics
///
/// If `width` or `height` is zero.
pub fn render_png(chart: &Chart, width: u32, height: u32) -> Vec<u8> {
    assert!(width > 0, "invalid chart width 0 (height {height}): the size must be positive");
    assert!(height > 0, "invalid chart height 0 (width {width}): the size must be positive");
    let mut canvas = Canvas::new(width, height);
    let style = Style::for_size(width, height);

    let x_values = chart.series.iter().flat_map(|series| series.points.iter().map(|point| point.0));
    let y_values = chart.series.iter().flat_map(|series| series.points.iter().map(|point| point.1));
    let x_range = resolve_range(chart.x_range, x_values);
    let y_range = resolve_range(chart.y_range, y_values);
    let layout = Layout::new(chart, &style, canvas.width, canvas.height, x_range, y_range);

    draw_title(&mut canvas, chart, &style, &layout);
    if layout.right - layout.left < 2 || layout.bottom - layout.top < 2 {
        return canvas.encode_png();
    }
    draw_grid_and_axes(&mut canvas, &style, &layout);
    draw_axis_labels(&mut canvas, chart, &style, &layout);

    let mut occupied = vec![false; canvas.pixels.len() / 3];
    for series in &chart.series {
        let segments = series_segments(&series.points, &layout);
        let region = layout.plot_rect().expand(3);
        let coverage = stroke(&mut canvas, region, &segments, series.colour, series.dashed, &style);
        coverage.mark_occupied(&mut occupied, canvas.width);
    }
    draw_legend(&mut canvas, chart, &style, &layout, &occupied);
    canvas.encode_png()
}

/// Sizes that scale with the image.
struct Style {
    /// Pixels per font pixel for tick labels, axis labels and the legend.
    text_scale: i64,
    /// Pixels per font pixel for the title.
    title_scale: i64,
    /// Padding between blocks, in pixels.
    padding: i64,
    tick_length: i64,
    dash_length: f64,
    dash_gap: f64,
}

impl Style {
    fn for_size(width: u32, height: u32) -> Style {
        // One font pixel per image pixel up to about 450 pixels, two up to 750, and so on.
        let text_scale = ((i64::from(width.min(height)) + 150) / 300).max(1);
        Style {
            text_scale,
            title_scale: text_scale + 1,
            padding: 5 * text_scale,
            tick_length: 3 * text_scale,
            dash_length: 5.0 * text_scale as f64,
            dash_gap: 3.0 * text_scale as f64,
        }
    }
}

/// Replaces a missing or non-finite range by the extent of the finite values with a
/// margin, orders the ends and widens a zero-width range.
fn resolve_range(requested: Option<(f64, f64)>, values: impl Iterator<Item = f64>) -> (f64, f64) {
    if let Some((a, b)) = requested.filter(|(a, b)| a.is_finite() && b.is_finite()) {
        return widen_if_flat(a.min(b), a.max(b));
    }

    let (mut low, mut high) = (f64::INFINITY, f64::NEG_INFINITY);
    for value in values.filter(|v| v.is_finite()) {
        low = low.min(value);
        high = high.max(value);
    }
    if low > high {
        return (0.0, 1.0);
    }
    if low == high {
        return widen_if_flat(low, high);
    }
    let margin = (high - low) * RANGE_MARGIN;
    (low - margin, high + margin)
}

fn widen_if_flat(low: f64, high: f64) -> (f64, f64) {
    if low < high {
        return (low, high);
    }
    let half_width = (low.abs() * 0.1).max(0.5);
    (low - half_width, high + half_width)
}

/// Tick values on an axis and their labels.
#[derive(Debug)]
struct Ticks {
    values: Vec<f64>,
    labels: Vec<String>,
    step: f64,
}

impl Ticks {
    /// Places ticks at the multiples of a step of 1, 2 or 5 × 10^k that fall inside the
    /// range, choosing the step that gives about `target` intervals.
    fn new(range: (f64, f64), target: usize) -> Ticks {
        Ticks::spaced(range, target, false)
    }

    /// Places ticks as [`Ticks::new`] does, and with `whole` a step of at least 1, for an
    /// axis that counts.
    fn spaced((low, high): (f64, f64), target: usize, whole: bool) -> Ticks {
        let raw_step = (high - low) / target.max(1) as f64;
        // Beyond about 1e15 steps from zero, f64 cannot tell neighbouring ticks apart.
        let max_steps_from_zero = low.abs().max(high.abs()) / raw_step;
        let precise_enough = raw_step.is_finite() && raw_step > 0.0 && max_steps_from_zero < 1e15;
        if !precise_enough {
            return Ticks { values: Vec::new(), labels: Vec::new(), step: raw_step };
        }
        let exponent = raw_step.log10().floor() as i32;
        let fraction = raw_step / 10f64.powi(exponent);
        let (multiplier, exponent) = match fraction {
            f if f < 1.5 => (1, exponent),
            f if f < 3.0 => (2, exponent),
            f if f < 7.0 => (5, exponent),
            _ => (1, exponent + 1),
        };
        let (multiplier, exponent) = if whole && exponent < 0 { (1, 0) } else { (multiplier, exponent) };
        let step = multiplier as f64 * 10f64.powi(exponent);

        // A small tolerance keeps ends such as 1.0 = 5 × 0.2 despite rounding.
        let first = (low / step - 1e-9).ceil() as i64;
        let last = (high / step + 1e-9).floor() as i64;
        let scientific = low.abs().max(high.abs()) >= 1e6 || step < 1e-4;
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for index in first..=last {
            let mantissa = index * multiplier;
            values.push(mantissa as f64 * 10f64.powi(exponent));
            labels.push(if scientific { format_scientific(mantissa, exponent) } else { format_fixed(mantissa, exponent) });
        }
        Ticks { values, labels, step }
    }

    fn max_label_width(&self, scale: i64) -> i64 {
        self.labels.iter().map(|label| text_width(label, scale)).max().unwrap_or(0)
    }
}

/// Formats `mantissa` × 10^`exponent` with as many decimals as the exponent needs.
fn format_fixed(mantissa: i64, exponent: i32) -> String {
    let decimals = usize::try_from(-exponent).unwrap_or(0);
    format!("{:.*}", decimals, mantissa as f64 * 10f64.powi(exponent))
}

/// Formats `mantissa` × 10^`exponent` as `d.ddde±k` built from the integer digits, so no
/// rounding noise such as `4.000000000000001e-5` appears.
fn format_scientific(mantissa: i64, exponent: i32) -> String {
    if mantissa == 0 {
        return "0".to_string();
    }
    let (mut digits, mut exponent) = (mantissa.unsigned_abs(), exponent);
    while digits % 10 == 0 {
        digits /= 10;
        exponent += 1;
    }
    let digits = digits.to_string();
    let sign = if mantissa < 0 { "-" } else { "" };
    let exponent = exponent + digits.len() as i32 - 1;
    match digits.split_at(1) {
        (first, "") => format!("{sign}{first}e{exponent}"),
        (first, rest) => format!("{sign}{first}.{rest}e{exponent}"),
    }
}

/// Pixel rectangle, both ends inclusive.
#[derive(Clone, Copy, Debug)]
struct Rect {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Rect {
    fn expand(self, by: i64) -> Rect {
        Rect { left: self.left - by, top: self.top - by, right: self.right + by, bottom: self.bottom + by }
    }
}

/// Positions of the plot area and of the text around it.
struct Layout {
    /// Column of the y axis. The plot area spans `left..=right` and `top..=bottom`.
    left: i64,
    right: i64,
    top: i64,
    /// Row of the x axis.
    bottom: i64,
    x_range: (f64, f64),
    y_range: (f64, f64),
    x_ticks: Ticks,
    y_ticks: Ticks,
    title_top: i64,
    y_label_top: i64,
    x_label_top: i64,
}

impl Layout {
    fn new(chart: &Chart, style: &Style, width: i64, height: i64, x_range: (f64, f64), y_range: (f64, f64)) -> Layout {
        let scale = style.text_scale;

        let title_top = style.padding;
        let mut top = title_top;
        if !chart.title.is_empty() {
            top += CAP_HEIGHT * style.title_scale + 2 * style.padding;
        }
        let y_label_top = top;
        if !chart.y_label.is_empty() {
            top += LINE_HEIGHT * scale + style.padding;
        }
        // The top tick label is centred on the top edge and sticks out by half its height.
        top += CAP_HEIGHT * scale / 2 + scale;

        let x_label_top = height - style.padding - LINE_HEIGHT * scale;
        let mut bottom = if chart.x_label.is_empty() { height - style.padding } else { x_label_top - style.padding };
        bottom -= CAP_HEIGHT * scale + 2 * scale + style.tick_length;

        let y_ticks = Ticks::new(y_range, TICK_TARGET);
        let left = style.padding + y_ticks.max_label_width(scale) + 2 * scale + style.tick_length;

        // Fewer x ticks when their labels would touch. The last label is centred on the
        // right edge, so half of it must fit inside the image.
        let mut x_ticks = Ticks::spaced(x_range, TICK_TARGET, chart.whole_x);
        let mut right = width - 1 - style.padding.max(x_ticks.max_label_width(scale) / 2 + scale);
        for target in (2..TICK_TARGET).rev() {
            let spacing = (right - left) as f64 * x_ticks.step / (x_range.1 - x_range.0);
            if spacing >= (x_ticks.max_label_width(scale) + 4 * scale) as f64 {
                break;
            }
            x_ticks = Ticks::spaced(x_range, target, chart.whole_x);
            right = width - 1 - style.padding.max(x_ticks.max_label_width(scale) / 2 + scale);
        }

        Layout { left, right, top, bottom, x_range, y_range, x_ticks, y_ticks, title_top, y_label_top, x_label_top }
    }

    fn plot_rect(&self) -> Rect {
        Rect { left: self.left, top: self.top, right: self.right, bottom: self.bottom }
    }

    /// Maps a data point to continuous pixel coordinates, in which pixel (i, j) covers
    /// [i, i + 1) × [j, j + 1). The ends of the ranges fall on the centres of the axis
    /// pixels.
    fn to_pixel(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        let px = self.left as f64 + 0.5 + (x - x0) / (x1 - x0) * (self.right - self.left) as f64;
        let py = self.bottom as f64 + 0.5 - (y - y0) / (y1 - y0) * (self.bottom - self.top) as f64;
        (px, py)
    }
}

fn draw_title(canvas: &mut Canvas, chart: &Chart, style: &Style, layout: &Layout) {
    if chart.title.is_empty() {
        return;
    }
    // Centred over the plot area, or over the image when it is wider than the plot area.
    let width = text_width(&chart.title, style.title_scale);
    let plot_width = layout.right - layout.left;
    let left = if width <= plot_width { layout.left + (plot_width - width) / 2 } else { (canvas.width - width) / 2 };
    canvas.draw_text(left.max(0), layout.title_top, &chart.title, style.title_scale, TEXT_COLOUR);
}

fn draw_grid_and_axes(canvas: &mut Canvas, style: &Style, layout: &Layout) {
    let scale = style.text_scale;
    for (value, label) in layout.x_ticks.values.iter().zip(&layout.x_ticks.labels) {
        let column = layout.to_pixel((*value, layout.y_range.0)).0.floor() as i64;
        canvas.fill_rect(column, layout.top, column, layout.bottom - 1, GRID_COLOUR);
        canvas.fill_rect(column, layout.bottom + 1, column, layout.bottom + style.tick_length, AXIS_COLOUR);
        let label_left = column - text_width(label, scale) / 2;
        canvas.draw_text(label_left, layout.bottom + style.tick_length + 2 * scale, label, scale, TEXT_COLOUR);
    }
    for (value, label) in layout.y_ticks.values.iter().zip(&layout.y_ticks.labels) {
        let row = layout.to_pixel((layout.x_range.0, *value)).1.floor() as i64;
        canvas.fill_rect(layout.left + 1, row, layout.right, row, GRID_COLOUR);
        canvas.fill_rect(layout.left - style.tick_length, row, layout.left - 1, row, AXIS_COLOUR);
        let label_right = layout.left - style.tick_length - 2 * scale;
        let label_top = row - CAP_HEIGHT * scale / 2;
        canvas.draw_text(label_right - text_width(label, scale), label_top, label, scale, TEXT_COLOUR);
    }
    canvas.fill_rect(layout.left, layout.top, layout.left, layout.bottom, AXIS_COLOUR);
    canvas.fill_rect(layout.left, layout.bottom, layout.right, layout.bottom, AXIS_COLOUR);
}

fn draw_axis_labels(canvas: &mut Canvas, chart: &Chart, style: &Style, layout: &Layout) {
    let scale = style.text_scale;
    if !chart.x_label.is_empty() {
        let width = text_width(&chart.x_label, scale);
        let left = layout.left + (layout.right - layout.left - width) / 2;
        canvas.draw_text(left.max(0), layout.x_label_top, &chart.x_label, scale, TEXT_COLOUR);
    }
    if !chart.y_label.is_empty() {
        canvas.draw_text(style.padding, layout.y_label_top, &chart.y_label, scale, TEXT_COLOUR);
    }
}

/// A straight piece of a line in pixel coordinates.
#[derive(Clone, Copy, Debug)]
struct PixelSegment {
    start: (f64, f64),
    end: (f64, f64),
    /// Length of the line drawn before `start`, in pixels, which sets the dash pattern.
    dash_offset: f64,
}

/// Clips the series to the visible ranges and maps it to pixels.
fn series_segments(points: &[(f64, f64)], layout: &Layout) -> Vec<PixelSegment> {
    let finite = |(x, y): (f64, f64)| x.is_finite() && y.is_finite();
    let mut segments = Vec::new();
    if let [point] = points {
        if finite(*point) && clip_segment(*point, *point, layout.x_range, layout.y_range).is_some() {
            let pixel = layout.to_pixel(*point);
            segments.push(PixelSegment { start: pixel, end: pixel, dash_offset: 0.0 });
        }
        return segments;
    }

    let plot = layout.plot_rect();
    let clamp_to_plot = |(x, y): (f64, f64)| (x.clamp(plot.left as f64, plot.right as f64 + 1.0), y.clamp(plot.top as f64, plot.bottom as f64 + 1.0));
    let mut travelled = 0.0;
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if !finite(a) || !finite(b) {
            continue;
        }
        let (pixel_a, pixel_b) = (layout.to_pixel(a), layout.to_pixel(b));
        let length = distance(pixel_a, pixel_b);
        if let Some((t0, t1)) = clip_segment(a, b, layout.x_range, layout.y_range) {
            // Clamping only moves ends that lost precision far outside the plot.
            let start = clamp_to_plot(lerp(pixel_a, pixel_b, t0));
            let end = clamp_to_plot(lerp(pixel_a, pixel_b, t1));
            segments.push(PixelSegment { start, end, dash_offset: travelled + t0 * length });
        }
        travelled += length;
        if !travelled.is_finite() {
            travelled = 0.0;
        }
    }
    segments
}

/// Clips the segment a→b to the rectangle of the two ranges (Liang–Barsky). Returns the
/// visible part as parameters 0 ≤ t0 ≤ t1 ≤ 1 along the segment, or `None`.
fn clip_segment(a: (f64, f64), b: (f64, f64), (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> Option<(f64, f64)> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    if !dx.is_finite() || !dy.is_finite() {
        return None;
    }
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    // Each pair is (p, q) for one edge: the point a + t·(b − a) is inside that edge when
    // t·p ≤ q.
    let edges = [(-dx, a.0 - x0), (dx, x1 - a.0), (-dy, a.1 - y0), (dy, y1 - a.1)];
    for (p, q) in edges {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
            continue;
        }
        let t = q / p;
        if p < 0.0 {
            t0 = t0.max(t);
        } else {
            t1 = t1.min(t);
        }
    }
    (t0 <= t1).then_some((t0, t1))
}

fn lerp(a: (f64, f64), b: (f64, f64), t: f64) -> (f64, f64) {
    (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1))
}

fn distance(a: (f64, f64), b: (f64, f64)) -> f64 {
    (b.0 - a.0).hypot(b.1 - a.1)
}

/// Coverage of a region by one line, in [0, 1] per pixel.
struct Coverage {
    region: Rect,
    width: i64,
    values: Vec<f32>,
}

impl Coverage {
    fn new(region: Rect) -> Coverage {
        let width = (region.right - region.left + 1).max(0);
        let height = (region.bottom - region.top + 1).max(0);
        Coverage { region, width, values: vec![0.0; (width * height) as usize] }
    }

    fn mark_occupied(&self, occupied: &mut [bool], canvas_width: i64) {
        for (index, &value) in self.values.iter().enumerate() {
            if value > 0.3 {
                let x = self.region.left + index as i64 % self.width;
                let y = self.region.top + index as i64 / self.width;
                occupied[(y * canvas_width + x) as usize] = true;
            }
        }
    }
}

/// Draws segments as one anti-aliased line of width 2 × [`LINE_HALF_WIDTH`], limited to
/// `region`. Coverage is accumulated as a maximum before blending, so joins and overlaps
/// are not drawn twice. Returns the coverage.
fn stroke(canvas: &mut Canvas, region: Rect, segments: &[PixelSegment], colour: [u8; 3], dashed: bool, style: &Style) -> Coverage {
    let region = Rect { left: region.left.max(0), top: region.top.max(0), right: region.right.min(canvas.width - 1), bottom: region.bottom.min(canvas.height - 1) };
    let mut coverage = Coverage::new(region);
    let reach = LINE_HALF_WIDTH + 1.0;
    let dash_period = style.dash_length + style.dash_gap;

    for segment in segments {
        let (a, b) = (segment.start, segment.end);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let length_squared = dx * dx + dy * dy;
        let length = length_squared.sqrt();
        let columns = ((a.0.min(b.0) - reach).floor() as i64).max(region.left)..=((a.0.max(b.0) + reach).ceil() as i64).min(region.right);
        let rows = ((a.1.min(b.1) - reach).floor() as i64).max(region.top)..=((a.1.max(b.1) + reach).ceil() as i64).min(region.bottom);

        for y in rows {
            for x in columns.clone() {
                let centre = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if length_squared > 0.0 { (((centre.0 - a.0) * dx + (centre.1 - a.1) * dy) / length_squared).clamp(0.0, 1.0) } else { 0.0 };
                if dashed && (segment.dash_offset + t * length) % dash_period >= style.dash_length {
                    continue;
                }
                let nearest = lerp(a, b, t);
                let value = (LINE_HALF_WIDTH + 0.5 - distance(centre, nearest)).clamp(0.0, 1.0) as f32;
                let index = ((y - region.top) * coverage.width + (x - region.left)) as usize;
                coverage.values[index] = coverage.values[index].max(value);
            }
        }
    }

    for (index, &value) in coverage.values.iter().enumerate() {
        if value > 0.0 {
            let x = region.left + index as i64 % coverage.width;
            let y = region.top + index as i64 / coverage.width;
            canvas.blend(x, y, colour, f64::from(value));
        }
    }
    coverage
}

/// Draws the legend in the corner of the plot area that hides the fewest line pixels.
fn draw_legend(canvas: &mut Canvas, chart: &Chart, style: &Style, layout: &Layout, occupied: &[bool]) {
    if chart.series.is_empty() {
        return;
    }
    let scale = style.text_scale;
    let inner_padding = 3 * scale;
    let row_height = LINE_HEIGHT * scale + scale;
    let sample_length = 10 * scale;
    let name_width = chart.series.iter().map(|series| text_width(&series.name, scale)).max().unwrap_or(0);
    let name_gap = 5 * scale;
    let box_width = 2 * inner_padding + sample_length + name_gap + name_width;
    let box_height = 2 * inner_padding + chart.series.len() as i64 * row_height - scale;

    let inset = 4 * scale;
    let (left, right) = (layout.left + inset, layout.right - inset - box_width);
    let (top, bottom) = (layout.top + inset, layout.bottom - inset - box_height);
    let corners = [(right, top), (right, bottom), (left, top), (left, bottom)];
    let hidden_pixels = |(x, y): (i64, i64)| {
        let mut count = 0;
        for row in y.max(0)..(y + box_height).min(canvas.height) {
            for column in x.max(0)..(x + box_width).min(canvas.width) {
                count += usize::from(occupied[(row * canvas.width + column) as usize]);
            }
        }
        count
    };
    // min_by_key keeps the first of equal corners, so an empty plot puts it top right.
    let (x, y) = corners.into_iter().min_by_key(|&corner| hidden_pixels(corner)).expect("four corners");

    let frame = Rect { left: x, top: y, right: x + box_width - 1, bottom: y + box_height - 1 };
    canvas.fill_rect(frame.left, frame.top, frame.right, frame.bottom, LEGEND_BORDER_COLOUR);
    canvas.fill_rect(frame.left + 1, frame.top + 1, frame.right - 1, frame.bottom - 1, WHITE);

    for (index, series) in chart.series.iter().enumerate() {
        let row_top = y + inner_padding + index as i64 * row_height;
        let centre_y = (row_top + CAP_HEIGHT * scale / 2) as f64 + 0.5;
        let sample_left = (x + inner_padding) as f64;
        let sample = PixelSegment { start: (sample_left, centre_y), end: (sample_left + sample_length as f64, centre_y), dash_offset: 0.0 };
        stroke(canvas, frame, &[sample], series.colour, series.dashed, style);
        canvas.draw_text(x + inner_padding + sample_length + name_gap, row_top, &series.name, scale, TEXT_COLOUR);
    }
}

/// RGB image buffer.
struct Canvas {
    width: i64,
    height: i64,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Canvas {
        let (width, height) = (i64::from(width), i64::from(height));
        Canvas { width, height, pixels: vec![255; (width * height * 3) as usize] }
    }

    /// Mixes `colour` into a pixel with weight `alpha`. Pixels outside the image are
    /// ignored.
    fn blend(&mut self, x: i64, y: i64, colour: [u8; 3], alpha: f64) {
        if x < 0 || y < 0 || x >= self.width || y >= self.height {
            return;
        }
        let start = ((y * self.width + x) * 3) as usize;
        for (channel, &target) in self.pixels[start..start + 3].iter_mut().zip(&colour) {
            let old = f64::from(*channel);
            *channel = (old + (f64::from(target) - old) * alpha).round() as u8;
        }
    }

    /// Fills the rectangle with both corners inclusive, clipped to the image.
    fn fill_rect(&mut self, left: i64, top: i64, right: i64, bottom: i64, colour: [u8; 3]) {
        for y in top.max(0)..=bottom.min(self.height - 1) {
            for x in left.max(0)..=right.min(self.width - 1) {
                let start = ((y * self.width + x) * 3) as usize;
                self.pixels[start..start + 3].copy_from_slice(&colour);
            }
        }
    }

    /// Draws text with its top-left corner at (x, y), `scale` pixels per font pixel.
    fn draw_text(&mut self, x: i64, y: i64, text: &str, scale: i64, colour: [u8; 3]) {
        for (index, character) in text.chars().enumerate() {
            let glyph_left = x + index as i64 * GLYPH_ADVANCE * scale;
            for (row, bits) in glyph(character).iter().enumerate() {
                for (column, bit) in bits.bytes().enumerate() {
                    if bit == b'#' {
                        let left = glyph_left + column as i64 * scale;
                        let top = y + row as i64 * scale;
                        self.fill_rect(left, top, left + scale - 1, top + scale - 1, colour);
                    }
                }
            }
        }
    }

    fn encode_png(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        // Writing into a Vec has no I/O errors. png 0.17 rejects a zero width or height,
        // which render_png rules out, and a buffer of the wrong length, which Canvas::new
        // rules out.
        let mut writer = encoder.write_header().expect("PNG header of a valid size is written");
        writer.write_image_data(&self.pixels).expect("PNG data of a valid size is written");
        writer.finish().expect("PNG stream is finished");
        bytes
    }
}

/// Height of a capital letter or digit, in font pixels.
const CAP_HEIGHT: i64 = 7;
/// Height of a text line including the descender of g, j, p, q and y, in font pixels.
const LINE_HEIGHT: i64 = 9;
/// Horizontal distance between glyph origins: 5 columns of glyph and 1 of space.
const GLYPH_ADVANCE: i64 = 6;

/// Width of `text` in pixels at `scale`, without the space after the last glyph.
fn text_width(text: &str, scale: i64) -> i64 {
    let count = text.chars().count() as i64;
    if count == 0 {
        0
    } else {
        (count * GLYPH_ADVANCE - 1) * scale
    }
}

/// Bitmap of a character: rows of 5 columns, `#` for ink, top row first. Rows 0–6 hold
/// capitals and digits, rows 7–8 descenders.
fn glyph(character: char) -> &'static [&'static str] {
    match character {
        ' ' => &[],
        'A' => &[".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'B' => &["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."],
        'C' => &[".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."],
        'D' => &["####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."],
        'E' => &["#####", "#....", "#....", "####.", "#....", "#....", "#####"],
        'F' => &["#####", "#....", "#....", "####.", "#....", "#....", "#...."],
        'G' => &[".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"],
        'H' => &["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"],
        'I' => &[".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
        'J' => &["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."],
        'K' => &["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"],
        'L' => &["#....", "#....", "#....", "#....", "#....", "#....", "#####"],
        'M' => &["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"],
        'N' => &["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"],
        'O' => &[".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'P' => &["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."],
        'Q' => &[".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"],
        'R' => &["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"],
        'S' => &[".####", "#....", "#....", ".###.", "....#", "....#", "####."],
        'T' => &["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."],
        'U' => &["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."],
        'V' => &["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
        'W' => &["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."],
        'X' => &["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"],
        'Y' => &["#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."],
        'Z' => &["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"],
        'a' => &[".....", ".....", ".###.", "....#", ".####", "#...#", ".####"],
        'b' => &["#....", "#....", "####.", "#...#", "#...#", "#...#", "####."],
        'c' => &[".....", ".....", ".####", "#....", "#....", "#....", ".####"],
        'd' => &["....#", "....#", ".####", "#...#", "#...#", "#...#", ".####"],
        'e' => &[".....", ".....", ".###.", "#...#", "#####", "#....", ".###."],
        'f' => &["..##.", ".#...", "####.", ".#...", ".#...", ".#...", ".#..."],
        'g' => &[".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", ".###."],
        'h' => &["#....", "#....", "####.", "#...#", "#...#", "#...#", "#...#"],
        'i' => &["..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."],
        'j' => &["...#.", ".....", "..##.", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."],
        'k' => &["#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."],
        'l' => &[".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
        'm' => &[".....", ".....", "##.#.", "#.#.#", "#.#.#", "#.#.#", "#.#.#"],
        'n' => &[".....", ".....", "####.", "#...#", "#...#", "#...#", "#...#"],
        'o' => &[".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."],
        'p' => &[".....", ".....", "####.", "#...#", "#...#", "#...#", "####.", "#....", "#...."],
        'q' => &[".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", "....#"],
        'r' => &[".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."],
        's' => &[".....", ".....", ".####", "#....", ".###.", "....#", "####."],
        't' => &[".#...", ".#...", "####.", ".#...", ".#...", ".#..#", "..##."],
        'u' => &[".....", ".....", "#...#", "#...#", "#...#", "#...#", ".####"],
        'v' => &[".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
        'w' => &[".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."],
        'x' => &[".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
        'y' => &[".....", ".....", "#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###."],
        'z' => &[".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"],
        '0' => &[".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
        '1' => &["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
        '2' => &[".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
        '3' => &["####.", "....#", "....#", ".###.", "....#", "....#", "####."],
        '4' => &["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
        '5' => &["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
        '6' => &["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
        '7' => &["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
        '8' => &[".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
        '9' => &[".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
        '.' => &[".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
        ',' => &[".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."],
        '-' => &[".....", ".....", ".....", ".###.", ".....", ".....", "....."],
        '+' => &[".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."],
        '%' => &["##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"],
        '(' => &["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."],
        ')' => &[".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."],
        '/' => &[".....", "....#", "...#.", "..#..", ".#...", "#....", "....."],
        ':' => &[".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."],
        '=' => &[".....", ".....", "#####", ".....", "#####", ".....", "....."],
        '_' => &[".....", ".....", ".....", ".....", ".....", ".....", "#####"],
        _ => &[".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: [u8; 3] = [214, 39, 40];
    const BLUE: [u8; 3] = [31, 119, 180];

    /// Decoded RGB image.
    struct Image {
        width: u32,
        height: u32,
        pixels: Vec<u8>,
    }

    impl Image {
        fn pixel(&self, x: i64, y: i64) -> [u8; 3] {
            let start = ((y * i64::from(self.width) + x) * 3) as usize;
            [self.pixels[start], self.pixels[start + 1], self.pixels[start + 2]]
        }

        fn count(&self, colour: [u8; 3]) -> usize {
            self.pixels.chunks_exact(3).filter(|pixel| *pixel == colour).count()
        }

        /// Rows that contain at least one pixel of `colour`.
        fn rows_with(&self, colour: [u8; 3]) -> Vec<i64> {
            (0..i64::from(self.height)).filter(|&y| (0..i64::from(self.width)).any(|x| self.pixel(x, y) == colour)).collect()
        }
    }

    fn decode(bytes: &[u8]) -> Image {
        let decoder = png::Decoder::new(bytes);
        let mut reader = decoder.read_info().expect("PNG header decodes");
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).expect("PNG data decodes");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        pixels.truncate(info.buffer_size());
        Image { width: info.width, height: info.height, pixels }
    }

    fn unit_chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "Test chart".into(),
            x_label: "x value".into(),
            y_label: "y value".into(),
            x_range: Some((0.0, 1.0)),
            y_range: Some((0.0, 1.0)),
            whole_x: false,
            series,
        }
    }

    fn line(name: &str, points: Vec<(f64, f64)>, colour: [u8; 3], dashed: bool) -> Series {
        Series { name: name.into(), points, colour, dashed }
    }

    /// Computes the layout that `render_png` uses for this chart and size.
    fn layout_of(chart: &Chart, width: u32, height: u32) -> Layout {
        let style = Style::for_size(width, height);
        let x_range = resolve_range(chart.x_range, chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
        let y_range = resolve_range(chart.y_range, chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        Layout::new(chart, &style, i64::from(width), i64::from(height), x_range, y_range)
    }

    fn pixel_at(layout: &Layout, point: (f64, f64)) -> (i64, i64) {
        let (x, y) = layout.to_pixel(point);
        (x.floor() as i64, y.floor() as i64)
    }

    #[test]
    fn png_decodes_to_requested_size() {
        let chart = unit_chart(vec![line("diagonal", vec![(0.0, 0.0), (1.0, 1.0)], RED, false)]);
        let image = decode(&render_png(&chart, 640, 480));
        assert_eq!(image.width, 640);
        assert_eq!(image.height, 480);
        assert_eq!(image.pixels.len(), 640 * 480 * 3);
    }

    #[test]
    fn line_pixel_has_series_colour() {
        let chart = unit_chart(vec![line("level", vec![(0.0, 0.5), (1.0, 0.5)], RED, false), line("rising", vec![(0.0, 0.0), (1.0, 1.0)], BLUE, false)]);
        let image = decode(&render_png(&chart, 640, 480));
        let layout = layout_of(&chart, 640, 480);
        let (x, y) = pixel_at(&layout, (0.25, 0.5));
        assert_eq!(image.pixel(x, y), RED);
        // A pixel centre can lie up to 0.7 pixels off a diagonal line, where the edge is
        // anti-aliased, so one of the neighbours carries the full colour.
        let (x, y) = pixel_at(&layout, (0.75, 0.75));
        let neighbours: Vec<[u8; 3]> = (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dx, dy))).map(|(dx, dy)| image.pixel(x + dx, y + dy)).collect();
        assert!(neighbours.contains(&BLUE), "{neighbours:?}");
    }

    #[test]
    fn line_is_two_pixels_wide() {
        let chart = unit_chart(vec![line("level", vec![(0.0, 0.5), (1.0, 0.5)], RED, false)]);
        let image = decode(&render_png(&chart, 640, 480));
        let layout = layout_of(&chart, 640, 480);
        let (x, _) = pixel_at(&layout, (0.3, 0.5));
        let rows = (layout.top..layout.bottom).filter(|&y| image.pixel(x, y) != WHITE && image.pixel(x, y) != GRID_COLOUR).count();
        assert!((2..=3).contains(&rows), "{rows} rows touched by the line");
    }

    #[test]
    fn dashed_line_has_gaps() {
        let chart = unit_chart(vec![line("level", vec![(0.0, 0.5), (1.0, 0.5)], RED, true)]);
        let image = decode(&render_png(&chart, 640, 480));
        let layout = layout_of(&chart, 640, 480);
        let (_, y) = pixel_at(&layout, (0.0, 0.5));
        let (start, _) = pixel_at(&layout, (0.1, 0.5));
        let (end, _) = pixel_at(&layout, (0.5, 0.5));
        let inked = (start..end).filter(|&x| image.pixel(x, y) == RED).count();
        let total = (end - start) as usize;
        assert!(inked > total / 2, "{inked} of {total} pixels inked");
        assert!(inked < total * 3 / 4, "{inked} of {total} pixels inked");
    }

    #[test]
    fn blank_chart_has_no_series_colour() {
        let image = decode(&render_png(&unit_chart(Vec::new()), 640, 480));
        assert_eq!(image.count(RED), 0);
        let coloured = image.pixels.chunks_exact(3).filter(|p| p[0] != p[1] || p[1] != p[2]).count();
        assert_eq!(coloured, 0);
    }

    #[test]
    fn empty_chart_still_draws_axes() {
        let chart = Chart { x_range: None, y_range: None, ..unit_chart(Vec::new()) };
        let image = decode(&render_png(&chart, 400, 300));
        let layout = layout_of(&chart, 400, 300);
        assert_eq!(image.pixel(layout.left, (layout.top + layout.bottom) / 2), AXIS_COLOUR);
        assert_eq!(image.pixel((layout.left + layout.right) / 2, layout.bottom), AXIS_COLOUR);
        assert_eq!(layout.x_ticks.labels.first().map(String::as_str), Some("0.0"));
    }

    #[test]
    fn flat_series_is_drawn() {
        let chart = Chart { x_range: None, y_range: None, ..unit_chart(vec![line("constant", vec![(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)], RED, false)]) };
        let image = decode(&render_png(&chart, 400, 300));
        let layout = layout_of(&chart, 400, 300);
        assert!(layout.y_range.0 < 3.0, "{:?}", layout.y_range);
        assert!(layout.y_range.1 > 3.0, "{:?}", layout.y_range);
        let (x, y) = pixel_at(&layout, (2.0, 3.0));
        assert_eq!(image.pixel(x, y), RED);
    }

    #[test]
    fn single_point_series_is_a_dot() {
        let chart = unit_chart(vec![line("one", vec![(0.5, 0.5)], RED, false)]);
        let image = decode(&render_png(&chart, 400, 300));
        let layout = layout_of(&chart, 400, 300);
        let (x, y) = pixel_at(&layout, (0.5, 0.5));
        assert_eq!(image.pixel(x, y), RED);
    }

    #[test]
    fn points_outside_range_are_clipped() {
        let chart = unit_chart(vec![line("steep", vec![(0.0, 0.5), (1.0, 50.0)], RED, false), line("below", vec![(0.0, -2.0), (1.0, -3.0)], BLUE, false)]);
        let image = decode(&render_png(&chart, 640, 480));
        let layout = layout_of(&chart, 640, 480);
        let rows = image.rows_with(RED);
        assert!(!rows.is_empty());
        assert!(rows[0] >= layout.top - 2, "line reaches row {} above the plot top {}", rows[0], layout.top);
        // The series below the range leaves only its legend sample, which lies inside the
        // plot area.
        let blue_rows = image.rows_with(BLUE);
        assert!(blue_rows.iter().all(|&y| y > layout.top), "{blue_rows:?}");
        assert!(blue_rows.iter().all(|&y| y < layout.bottom), "{blue_rows:?}");
    }

    #[test]
    fn extreme_and_nan_points_do_not_panic() {
        let points = vec![(0.0, 1e308), (0.5, f64::NAN), (1.0, -1e308), (f64::INFINITY, 0.0), (0.2, 0.2)];
        let chart = Chart { x_range: None, y_range: None, ..unit_chart(vec![line("wild", points, RED, true)]) };
        let image = decode(&render_png(&chart, 300, 200));
        assert_eq!(image.width, 300);
    }

    #[test]
    fn tiny_image_does_not_panic() {
        let chart = unit_chart(vec![line("diagonal", vec![(0.0, 0.0), (1.0, 1.0)], RED, false)]);
        for (width, height) in [(1, 1), (20, 10), (60, 40)] {
            let image = decode(&render_png(&chart, width, height));
            assert_eq!((image.width, image.height), (width, height));
        }
    }

    #[test]
    fn legend_avoids_the_lines() {
        // A line along the top edge occupies the top corners, so the legend goes to a
        // bottom corner.
        let chart = unit_chart(vec![line("top", vec![(0.0, 0.97), (1.0, 0.97)], RED, false)]);
        let image = decode(&render_png(&chart, 640, 480));
        let layout = layout_of(&chart, 640, 480);
        let legend_rows = image.rows_with(LEGEND_BORDER_COLOUR);
        assert!(!legend_rows.is_empty());
        let middle = (layout.top + layout.bottom) / 2;
        assert!(legend_rows[0] > middle, "legend starts at row {}, plot middle is {middle}", legend_rows[0]);
    }

    #[test]
    fn x_ticks_thin_out_when_crowded() {
        let chart = Chart { x_range: Some((100_000.0, 600_000.0)), ..unit_chart(Vec::new()) };
        let layout = layout_of(&chart, 220, 200);
        let scale = Style::for_size(220, 200).text_scale;
        let label_width = layout.x_ticks.max_label_width(scale) as f64;
        assert!(layout.x_ticks.values.len() >= 2, "{:?}", layout.x_ticks.labels);
        assert!(layout.x_ticks.values.len() < 6, "{:?}", layout.x_ticks.labels);
        for pair in layout.x_ticks.values.windows(2) {
            let spacing = layout.to_pixel((pair[1], 0.0)).0 - layout.to_pixel((pair[0], 0.0)).0;
            assert!(spacing > label_width, "ticks {pair:?} are {spacing} pixels apart, labels {label_width} wide");
        }
    }

    #[test]
    fn ticks_unit_range() {
        let ticks = Ticks::new((0.0, 1.0), 5);
        let expected = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(ticks.values.len(), expected.len());
        for (value, expected) in ticks.values.iter().zip(expected) {
            assert!((value - expected).abs() < 1e-12, "{value} != {expected}");
        }
        assert_eq!(ticks.labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
    }

    #[test]
    fn ticks_with_margins() {
        assert_eq!(Ticks::new((0.55, 20.45), 5).labels, ["5", "10", "15", "20"]);
        assert_eq!(Ticks::new((-3.0, 7.0), 5).labels, ["-2", "0", "2", "4", "6"]);
        assert_eq!(Ticks::new((-0.05, 1.05), 5).labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(Ticks::new((0.012, 0.058), 5).labels, ["0.02", "0.03", "0.04", "0.05"]);
    }

    #[test]
    fn whole_ticks_skip_fractions() {
        // One epoch: the range is widened to 0.5..1.5, where plain ticks step by 0.2.
        assert_eq!(Ticks::new((0.5, 1.5), 5).labels, ["0.6", "0.8", "1.0", "1.2", "1.4"]);
        assert_eq!(Ticks::spaced((0.5, 1.5), 5, true).labels, ["1"]);
        assert_eq!(Ticks::spaced((0.9, 3.1), 5, true).labels, ["1", "2", "3"]);
        assert_eq!(Ticks::spaced((0.55, 20.45), 5, true).labels, ["5", "10", "15", "20"]);
    }

    #[test]
    fn ticks_scientific() {
        assert_eq!(Ticks::new((0.0, 2e7), 4).labels, ["0", "5e6", "1e7", "1.5e7", "2e7"]);
        assert_eq!(Ticks::new((0.0, 2e-5), 4).labels, ["0", "5e-6", "1e-5", "1.5e-5", "2e-5"]);
    }

    #[test]
    fn ticks_without_precision_are_empty() {
        assert!(Ticks::new((1e20, 1e20 + 1e5), 5).values.is_empty());
        assert!(Ticks::new((-f64::MAX, f64::MAX), 5).values.is_empty());
    }

    #[test]
    fn range_resolution() {
        assert_eq!(resolve_range(None, std::iter::empty()), (0.0, 1.0));
        assert_eq!(resolve_range(None, [0.0, 10.0].into_iter()), (-0.5, 10.5));
        assert_eq!(resolve_range(None, [0.0, 0.0].into_iter()), (-0.5, 0.5));
        assert_eq!(resolve_range(None, [100.0, f64::NAN].into_iter()), (90.0, 110.0));
        assert_eq!(resolve_range(Some((1.0, 0.0)), std::iter::empty()), (0.0, 1.0));
        assert_eq!(resolve_range(Some((0.0, f64::NAN)), [2.0, 4.0].into_iter()), (1.9, 4.1));
    }

    #[test]
    fn clip_segment_cases() {
        let unit = (0.0, 1.0);
        assert_eq!(clip_segment((0.2, 0.2), (0.8, 0.8), unit, unit), Some((0.0, 1.0)));
        assert_eq!(clip_segment((0.0, 0.5), (2.0, 0.5), unit, unit), Some((0.0, 0.5)));
        assert_eq!(clip_segment((2.0, 2.0), (3.0, 3.0), unit, unit), None);
        assert_eq!(clip_segment((-1.0, 0.5), (-1.0, 0.9), unit, unit), None);
    }

    #[test]
    fn text_width_and_glyphs() {
        assert_eq!(text_width("", 2), 0);
        assert_eq!(text_width("ab", 1), 11);
        for character in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,-+%()/:=_".chars() {
            let rows = glyph(character);
            assert!(rows.len() == 7 || rows.len() == 9, "{character:?} has {} rows", rows.len());
            assert!(rows.iter().all(|row| row.len() == 5), "{character:?} has a row not 5 wide");
            assert_ne!(rows, glyph('\u{1}'), "{character:?} falls back to the unknown glyph");
        }
    }

    /// Writes an example ROC chart and loss chart to the temporary directory, for looking
    /// at the output by eye.
    #[test]
    #[ignore = "writes example PNG files"]
    fn write_example_charts() {
        let roc = Chart {
            title: "ROC".into(),
            x_label: "false positive rate".into(),
            y_label: "true positive rate".into(),
            x_range: Some((0.0, 1.0)),
            y_range: Some((0.0, 1.0)),
            whole_x: false,
            series: vec![
                line("diseased vs healthy (AUC 0.97)", vec![(0.0, 0.0), (0.0, 0.6), (0.05, 0.8), (0.1, 0.93), (0.3, 0.98), (1.0, 1.0)], BLUE, false),
                line("COVID-19 vs other disease", vec![(0.0, 0.0), (0.1, 0.5), (0.2, 0.85), (0.5, 0.95), (1.0, 1.0)], RED, false),
                line("chance", vec![(0.0, 0.0), (1.0, 1.0)], [150, 150, 150], true),
            ],
        };
        let epochs = 1..=40;
        let loss: Vec<(f64, f64)> = epochs.clone().map(|e| (f64::from(e), 1.2 * (-f64::from(e) / 8.0).exp() + 0.15 + 0.03 * (f64::from(e)).sin())).collect();
        let accuracy: Vec<(f64, f64)> = epochs.map(|e| (f64::from(e), 0.95 - 0.45 * (-f64::from(e) / 6.0).exp())).collect();
        let fine: Vec<(f64, f64)> = (41..=60).map(|e| (f64::from(e), 0.4 * (-(f64::from(e) - 40.0) / 5.0).exp() + 0.1)).collect();
        let training = Chart {
            title: "Training".into(),
            x_label: "epoch".into(),
            y_label: "loss, accuracy".into(),
            x_range: None,
            y_range: None,
            whole_x: true,
            series: vec![
                line("stage 1 training loss", loss, BLUE, false),
                line("validation accuracy", accuracy, [44, 160, 44], true),
                line("stage 2 fine loss", fine, RED, false),
            ],
        };
        let directory = std::env::temp_dir();
        std::fs::write(directory.join("plot-roc.png"), render_png(&roc, 640, 600)).unwrap();
        std::fs::write(directory.join("plot-loss.png"), render_png(&training, 800, 500)).unwrap();
        println!("wrote plot-roc.png and plot-loss.png to {}", directory.display());
    }
}
