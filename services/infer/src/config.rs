//! Widths of the two lobe networks. `full` is the method's VGG-16 prefix with a vicinity
//! U-Net and heads sized to match it. `narrow` keeps every layer and connection but
//! divides the widths, so CPU tests run a whole series in seconds.

use serde::{Deserialize, Serialize};

/// Layer widths of one lobe network (both networks of a model share them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Channels of VGG-16's three blocks (conv1_x, conv2_x, conv3_x): 64, 128, 256.
    pub vgg: [i64; 3],
    /// Channels of the vicinity encoder at 32², 16², 8² and 4² cells.
    pub vicinity: [i64; 4],
    /// Hidden width of the 1×1 heads (infection, attention).
    pub head: i64,
    /// Channels of the fine decoder at 32² and at 64²/128² cells.
    pub fine: [i64; 2],
}

impl NetworkConfig {
    /// The configuration with VGG-16's widths.
    pub const FULL: NetworkConfig = NetworkConfig { vgg: [64, 128, 256], vicinity: [128, 256, 256, 512], head: 256, fine: [128, 32] };

    /// Every width divided by eight: the same graph at about 1/60 of the arithmetic.
    pub const NARROW: NetworkConfig = NetworkConfig { vgg: [8, 16, 32], vicinity: [16, 32, 32, 64], head: 16, fine: [16, 8] };

    /// Looks a preset up by name (`full`, `narrow`).
    pub fn preset(name: &str) -> Option<NetworkConfig> {
        match name {
            "full" => Some(NetworkConfig::FULL),
            "narrow" => Some(NetworkConfig::NARROW),
            _ => None,
        }
    }

    /// Returns the preset's name when these widths are one, else `custom`.
    pub fn name(&self) -> &'static str {
        if *self == NetworkConfig::FULL {
            "full"
        } else if *self == NetworkConfig::NARROW {
            "narrow"
        } else {
            "custom"
        }
    }

    /// Features of one coarse patch: local (VGG), vicinity (U-Net) and the distance.
    pub fn patch_features(&self) -> i64 {
        self.vgg[2] + self.vicinity[0] + 1
    }

    /// Checks that every width is positive and small enough to allocate.
    pub fn validate(&self) -> Result<(), String> {
        let widths = self.vgg.iter().chain(&self.vicinity).chain(&self.fine).chain(std::iter::once(&self.head));
        for &width in widths {
            if !(1..=4096).contains(&width) {
                return Err(format!("layer width {width} is outside 1..=4096"));
            }
        }
        Ok(())
    }
}
