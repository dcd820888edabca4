//! Prints a summary of the volume the reader builds from a DICOM folder.
//!
//! `cargo run --release -p lungstream-dicom --example volume_stats -- DIR`

fn main() {
    let inputs: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let repeat: usize = std::env::var("REPEAT").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let config = lungstream_dicom::ReaderConfig {
        min_slices: 1,
        ..Default::default()
    };
    for _ in 1..repeat {
        let inventory = lungstream_dicom::Inventory::scan(&inputs, &config);
        std::hint::black_box(lungstream_dicom::load_volume(inventory.selected().unwrap(), &config).unwrap());
    }

    let start = std::time::Instant::now();
    let inventory = lungstream_dicom::Inventory::scan(&inputs, &config);
    let scanned = start.elapsed();
    let candidate = inventory.selected().expect("a loadable stack");
    let volume = lungstream_dicom::load_volume(candidate, &config).unwrap_or_else(|e| panic!("{e}"));
    println!("read in {:?} (headers {scanned:?})", start.elapsed());

    println!("dims {:?} spacing {:?} origin {:?}", volume.dims, volume.spacing_mm, volume.origin_mm);
    println!("mapping {:?} directions {:?}", volume.mapping, volume.directions);
    let padding = volume.padding.count_ones();
    println!("padding {:.2}% of voxels", 100.0 * padding as f64 / volume.hu.len() as f64);
    let mut histogram = std::collections::BTreeMap::new();
    for (i, v) in volume.hu.iter().enumerate() {
        if !volume.padding.get(i) {
            *histogram.entry((*v as i32).div_euclid(100) * 100).or_insert(0u64) += 1;
        }
    }
    let measured: u64 = histogram.values().sum();
    for (bin, count) in histogram.iter().filter(|(_, c)| **c * 200 > measured) {
        println!("  {bin:6}..{:6} HU: {:5.1}%", bin + 100, 100.0 * *count as f64 / measured as f64);
    }
    let first = &volume.slices[0];
    let last = volume.slices.last().unwrap();
    println!(
        "first slice z {:.2} instance {:?}; last z {:.2} instance {:?}",
        volume.slice_positions_mm[0], first.instance_number, volume.slice_positions_mm.last().unwrap(), last.instance_number
    );
}
