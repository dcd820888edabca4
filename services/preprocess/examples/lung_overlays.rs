//! Writes PNG overlays of the lung masks found on a DICOM series: every `step`-th slice in
//! a lung window, the patient's right lung tinted red and the left green, tiled into one
//! image. Patient right is on the image's left, as radiologists view axial slices.
//!
//! `cargo run --release -p lungstream-preprocess --example lung_overlays -- DIR OUT.png [STEP]`

use std::path::PathBuf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use lungstream_preprocess::lungs::{extract_lungs, Side};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: lung_overlays DIR OUT.png [STEP]  (every STEP-th slice, default 8)");
        std::process::exit(2);
    }
    let (dir, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let step: usize = match args.get(3).map(|s| s.parse()) {
        None => 8,
        Some(Ok(step)) if step > 0 => step,
        _ => {
            eprintln!("STEP must be a positive whole number, not {:?}", args[3]);
            std::process::exit(2);
        }
    };
    let config = lungstream_dicom::ReaderConfig {
        min_slices: 1,
        ..Default::default()
    };
    let (volume, _) = lungstream_dicom::read_volume(&[dir], &config).unwrap_or_else(|e| panic!("{e}"));
    let dims = volume.dims;

    let Some(median) = lungstream_preprocess::background_histogram(&volume).median() else {
        eprintln!("no outside air on any slice, so the background cannot be measured");
        std::process::exit(1);
    };
    let area = volume.spacing_mm[1] * volume.spacing_mm[2];

    let chosen: Vec<usize> = (0..dims.slices).step_by(step).collect();
    let tiles_per_row = 4;
    let tile_rows = chosen.len().div_ceil(tiles_per_row);
    let (width, height) = (dims.columns * tiles_per_row, dims.rows * tile_rows);
    let mut rgb = vec![0u8; width * height * 3];
    for (n, &k) in chosen.iter().enumerate() {
        let (normalised, padding) = lungstream_preprocess::normalised_slice(&volume, k, median);
        let lungs = extract_lungs(&normalised, &padding, area, &Default::default());
        let (tile_r, tile_c) = (n / tiles_per_row, n % tiles_per_row);
        for r in 0..dims.rows {
            for c in 0..dims.columns {
                let i = r * dims.columns + c;
                let hu = f64::from(volume.slice(k)[i]);
                let grey = ((hu + 1350.0) / 1500.0 * 255.0).clamp(0.0, 255.0);
                let mut pixel = [grey, grey, grey];
                for (side, tint) in [(Side::Right, [255.0, 0.0, 0.0]), (Side::Left, [0.0, 255.0, 0.0])] {
                    if lungs.side(side).is_some_and(|m| m.data[i]) {
                        for ch in 0..3 {
                            pixel[ch] = 0.6 * pixel[ch] + 0.4 * tint[ch];
                        }
                    }
                }
                let at = ((tile_r * dims.rows + r) * width + tile_c * dims.columns + c) * 3;
                for ch in 0..3 {
                    rgb[at + ch] = pixel[ch] as u8;
                }
            }
        }
    }
    let file = std::fs::File::create(&out).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().unwrap().write_image_data(&rgb).unwrap();
    println!("wrote {} slices to {}", chosen.len(), out.display());
}
