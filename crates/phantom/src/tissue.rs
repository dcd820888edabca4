use serde::{Deserialize, Serialize};

/// Tissue class of a voxel in the label map that the ground truth is counted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Tissue {
    /// Outside the reconstruction circle: the padding value, no noise.
    Outside = 0,
    /// Air outside the body, including an enclosed external air pocket.
    Air = 1,
    /// Patient table (+100 HU).
    Table = 2,
    /// Cushion between the back and the table (-60 HU).
    Cushion = 3,
    /// Subcutaneous fat (-100 HU).
    Fat = 4,
    /// Muscle, mediastinum, great vessels, abdominal organs other than the liver, discs
    /// and the spinal canal (about +40 HU).
    SoftTissue = 5,
    /// Heart (+40 HU).
    Heart = 6,
    /// Liver (+55 HU).
    Liver = 7,
    /// Vertebrae, ribs and sternum (+250…+850 HU).
    Bone = 8,
    /// Trachea and main bronchi outside the lungs (-1000 HU).
    Airway = 9,
    /// Lung parenchyma (about -850 HU).
    Lung = 10,
    /// Pulmonary vessel inside a lung (+40 HU).
    Vessel = 11,
    /// Ground-glass opacity inside a lung (-700…-300 HU).
    GroundGlass = 12,
    /// Consolidation inside a lung (0…+50 HU).
    Consolidation = 13,
    /// Solid nodule inside a lung (+30 HU).
    Nodule = 14,
    /// Pleural effusion (+10 HU), outside the lung.
    Effusion = 15,
}

impl Tissue {
    /// Returns whether the voxel counts as lung: parenchyma, pulmonary vessels and the lesions
    /// inside the lung (ground glass, consolidation, nodules). Effusion does not.
    pub fn is_lung(self) -> bool {
        matches!(
            self,
            Tissue::Lung
                | Tissue::Vessel
                | Tissue::GroundGlass
                | Tissue::Consolidation
                | Tissue::Nodule
        )
    }

    /// Returns whether the voxel counts as infected: ground glass or consolidation.
    pub fn is_infected(self) -> bool {
        matches!(self, Tissue::GroundGlass | Tissue::Consolidation)
    }
}
