//! Deterministic initial weights that do not depend on libtorch's random generator or on
//! the order in which layers are created: each tensor's values come from a SplitMix64
//! stream keyed by the model seed and the tensor's name. The same seed gives the same
//! bytes on every machine, so tests and benchmarks can rebuild a model exactly.

/// Standard deviation of He initialisation for a layer followed by ReLU.
pub fn he_normal(fan_in: i64) -> f64 {
    (2.0 / fan_in as f64).sqrt()
}

/// `count` values from a normal distribution with mean 0 and `std`, drawn from a stream
/// keyed by `seed` and `name`.
pub fn scaled_normal(seed: u64, name: &str, count: usize, std: f64) -> Vec<f32> {
    let mut stream = SplitMix64(seed ^ fnv1a(name.as_bytes()));
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        // Box–Muller: two uniforms in (0, 1] give two independent standard normals.
        let u1 = stream.unit();
        let u2 = stream.unit();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((radius * angle.cos() * std) as f32);
        values.push((radius * angle.sin() * std) as f32);
    }
    values.truncate(count);
    values
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Draws a uniform value in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_values() {
        assert_eq!(scaled_normal(7, "a.weight", 5, 1.0), scaled_normal(7, "a.weight", 5, 1.0));
        assert_ne!(scaled_normal(7, "a.weight", 5, 1.0), scaled_normal(7, "b.weight", 5, 1.0));
        assert_ne!(scaled_normal(7, "a.weight", 5, 1.0), scaled_normal(8, "a.weight", 5, 1.0));
    }

    #[test]
    fn values_have_requested_spread() {
        let values = scaled_normal(1, "w", 100_000, 0.5);
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "std {}", var.sqrt());
    }
}
