//! A model: the diseased-vs-healthy and the COVID-vs-other networks, their weights in one
//! safetensors file, and the model card that describes the weights.
//!
//! File layout: float32 tensors named `diseased.…` and `covid.…` (the variable names of
//! [`LobeNetwork`]), and two metadata entries: `format` ([`MODEL_FORMAT`]) and
//! `model_card` (the [`ModelCard`] as JSON). The card's `version` is a hash of the
//! tensors, checked when the file is loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::config::NetworkConfig;
use crate::net::{LobeNetwork, Scope};

/// Format name written into every model file; loading rejects others. Version 2 added
/// the running statistics of the lobe feature and pools it as an attention-weighted
/// mean, so version 1 weights would compute something else.
pub const MODEL_FORMAT: &str = "lungstream-model-v2";

/// The demo weights shipped in the binary: the narrow networks trained on synthetic
/// phantoms by `scripts/train-demo.sh`, marked research only (see `models/README.md`).
pub const DEMO_WEIGHTS: &[u8] = include_bytes!("../../../models/demo-narrow-phantom.safetensors");

/// Name of the shipped demo weights where a model file's path would go.
pub const DEMO_NAME: &str = "bundled demo weights (models/demo-narrow-phantom.safetensors)";

/// Model files larger than this are refused before they are read (the full
/// configuration's weights take about 60 MB).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Seed of the initial weights used when no model file is given.
pub const DEFAULT_SEED: u64 = 20_201_123;

/// Description of a set of weights and of their origin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Stable name of the model, for example `ghavami2020-narrow-init`.
    pub id: String,
    /// First 16 hex digits of the SHA-256 of the weights (names, shapes and bytes).
    pub version: String,
    /// Widths shared by both networks.
    pub config: NetworkConfig,
    /// False for initial weights: their probabilities mean nothing.
    pub trained: bool,
    /// The training data (centres, scans, labels), or how the initial weights were made.
    pub trained_on: String,
    /// Free text: intended use, evaluation results, limitations.
    #[serde(default)]
    pub notes: String,
    /// True for weights that must not be used on patients, such as the demo weights
    /// trained on synthetic phantoms. Every report made with them warns about it.
    #[serde(default)]
    pub research_only: bool,
}

/// Reasons a model cannot be made, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("model file {path} has {bytes} bytes, more than the limit of {limit}")]
    TooLarge { path: String, bytes: u64, limit: u64 },
    #[error("model file {path} is not a lungstream model: {reason}")]
    Invalid { path: String, reason: String },
    #[error("model file {path}: the weights hash to {actual}, but the model card says version {expected}; the file was altered or damaged")]
    VersionMismatch { path: String, expected: String, actual: String },
    #[error("cannot write model file {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("CUDA was requested, but libtorch finds no CUDA device (build with the `cuda` feature and the full torch install, and check the driver)")]
    CudaUnavailable,
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
}

/// Device choice for the networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when libtorch finds a device, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!("unknown device {other:?}: expected auto, cpu or cuda")),
        }
    }
}

impl DeviceChoice {
    /// Returns the device to use, with the reason for the choice.
    ///
    /// # Errors
    ///
    /// [`ModelError::CudaUnavailable`] when CUDA is requested and libtorch finds no device.
    pub fn resolve(self) -> Result<(Device, &'static str), ModelError> {
        let cuda = tch::Cuda::is_available();
        match self {
            DeviceChoice::Cpu => Ok((Device::Cpu, "cpu requested")),
            DeviceChoice::Cuda if cuda => Ok((Device::Cuda(0), "cuda requested and available")),
            DeviceChoice::Cuda => Err(ModelError::CudaUnavailable),
            DeviceChoice::Auto if cuda => Ok((Device::Cuda(0), "auto: libtorch finds a CUDA device")),
            DeviceChoice::Auto => Ok((Device::Cpu, "auto: libtorch finds no CUDA device")),
        }
    }
}

/// Both networks with their weights, ready for inference on one device.
#[derive(Debug)]
pub struct Model {
    vs: VarStore,
    /// Diseased vs healthy, with the infection heads.
    pub diseased: LobeNetwork,
    /// COVID-19 vs other disease.
    pub covid: LobeNetwork,
    card: ModelCard,
}

impl Model {
    /// Creates a model with deterministic initial weights (He initialisation from `seed`).
    /// The networks run, but their outputs mean nothing until trained.
    pub fn initialised(config: NetworkConfig, seed: u64) -> Result<Model, ModelError> {
        config.validate().map_err(ModelError::Config)?;
        let card = ModelCard {
            id: format!("ghavami2020-{}-init", config.name()),
            version: String::new(),
            config,
            trained: false,
            trained_on: format!("nothing: deterministic He initialisation from seed {seed}"),
            research_only: true,
            notes: "Untrained weights. The probabilities, decision and infected areas they give mean nothing; use them to test the pipeline only.".into(),
        };
        let mut model = Model::build(card, seed);
        model.card.version = weights_version(&model.named_tensors())?;
        Ok(model)
    }

    /// Loads the demo weights shipped in the binary ([`DEMO_WEIGHTS`]).
    ///
    /// # Errors
    ///
    /// As [`Model::from_bytes`]; a binary built from this repository loads them.
    pub fn demo() -> Result<Model, ModelError> {
        Model::from_bytes(DEMO_WEIGHTS, DEMO_NAME)
    }

    fn build(card: ModelCard, seed: u64) -> Model {
        let vs = VarStore::new(Device::Cpu);
        let diseased = LobeNetwork::new(&Scope::root(vs.root(), "diseased", seed), &card.config, true);
        let covid = LobeNetwork::new(&Scope::root(vs.root(), "covid", seed), &card.config, false);
        Model { vs, diseased, covid, card }
    }

    /// Loads a model file written by [`Model::save`] onto the CPU.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is not a model file, its tensors do not match the
    /// card's configuration, or its weights do not hash to the card's version.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let name = path.display().to_string();
        let bytes = std::fs::metadata(path).map_err(|source| ModelError::Read { path: name.clone(), source })?.len();
        if bytes > MAX_MODEL_BYTES {
            return Err(ModelError::TooLarge { path: name, bytes, limit: MAX_MODEL_BYTES });
        }
        let data = std::fs::read(path).map_err(|source| ModelError::Read { path: name.clone(), source })?;
        Model::from_bytes(&data, &name)
    }

    /// Loads a model from the bytes of a model file; `name` stands for it in errors.
    ///
    /// # Errors
    ///
    /// As [`Model::load`], except for reading.
    pub fn from_bytes(data: &[u8], name: &str) -> Result<Model, ModelError> {
        let name = name.to_string();
        let invalid = |reason: String| ModelError::Invalid { path: name.clone(), reason };
        let (_, metadata) = SafeTensors::read_metadata(data).map_err(|e| invalid(format!("not a safetensors file ({e})")))?;
        let info = metadata.metadata().clone().unwrap_or_default();
        match info.get("format") {
            Some(format) if format == MODEL_FORMAT => {}
            Some(format) => return Err(invalid(format!("format {format:?}, expected {MODEL_FORMAT:?}"))),
            None => return Err(invalid("no format entry in its metadata".into())),
        }
        let card_json = info.get("model_card").ok_or_else(|| invalid("no model card in its metadata".into()))?;
        let card: ModelCard = serde_json::from_str(card_json).map_err(|e| invalid(format!("unreadable model card ({e})")))?;
        card.config.validate().map_err(|e| invalid(format!("model card: {e}")))?;
        let tensors = SafeTensors::deserialize(data).map_err(|e| invalid(format!("unreadable tensors ({e})")))?;

        let model = Model::build(card, 0);
        let variables = model.vs.variables();
        let file_names: std::collections::BTreeSet<String> = tensors.names().into_iter().map(str::to_string).collect();
        if let Some(extra) = file_names.iter().find(|n| !variables.contains_key(*n)) {
            return Err(invalid(format!("tensor {extra} does not belong to the {} configuration", model.card.config.name())));
        }
        let _guard = tch::no_grad_guard();
        for (var_name, var) in &variables {
            let view = tensors.tensor(var_name).map_err(|_| invalid(format!("tensor {var_name} is missing")))?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if view.dtype() != Dtype::F32 || shape != var.size() {
                return Err(invalid(format!("tensor {var_name} is {:?} {:?}, expected F32 {:?}", view.dtype(), shape, var.size())));
            }
            let values: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let mut target = var.shallow_clone();
            target.copy_(&Tensor::from_slice(&values).view(shape.as_slice()));
        }
        let actual = weights_version(&model.named_tensors())?;
        if actual != model.card.version {
            return Err(ModelError::VersionMismatch { path: name, expected: model.card.version.clone(), actual });
        }
        Ok(model)
    }

    /// Writes the weights and the card into one safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let write_error = |reason: String| ModelError::Write { path: path.display().to_string(), reason };
        let tensors = self.named_tensors();
        let mut buffers = Vec::with_capacity(tensors.len());
        for (name, tensor) in &tensors {
            let values = Vec::<f32>::try_from(&tensor.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
            let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
            buffers.push((name.clone(), shape, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()));
        }
        let views = buffers
            .iter()
            .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| write_error(e.to_string()))?)))
            .collect::<Result<Vec<_>, ModelError>>()?;
        let card = serde_json::to_string(&self.card).map_err(|e| write_error(e.to_string()))?;
        let metadata = HashMap::from([("format".to_string(), MODEL_FORMAT.to_string()), ("model_card".to_string(), card)]);
        safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| write_error(e.to_string()))
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// Replaces the card's descriptive fields (after training); the version is recomputed.
    pub fn set_card(&mut self, id: String, trained: bool, trained_on: String, notes: String) -> Result<(), ModelError> {
        self.card.id = id;
        self.card.trained = trained;
        self.card.trained_on = trained_on;
        self.card.notes = notes;
        self.card.version = weights_version(&self.named_tensors())?;
        Ok(())
    }

    /// Marks the weights as not for use on patients (or lifts the mark).
    pub fn set_research_only(&mut self, research_only: bool) {
        self.card.research_only = research_only;
    }

    /// Moves the weights to `device`; on CUDA they become half precision.
    pub fn to_device(&mut self, device: Device) {
        self.vs.set_device(device);
        if device.is_cuda() {
            self.vs.half();
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Number of weights of both networks.
    pub fn parameters(&self) -> i64 {
        self.vs.variables().values().map(Tensor::numel).map(|n| n as i64).sum()
    }

    /// Returns every variable, sorted by name.
    /// Returns the variables of both networks, for an optimiser. Names start with `diseased.` or
    /// `covid.`, e.g. `diseased.fine.out.weight`.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }
}

/// Hash of the weights: names, shapes and float32 bytes, in name order.
fn weights_version(tensors: &BTreeMap<String, Tensor>) -> Result<String, ModelError> {
    let mut hasher = Sha256::new();
    for (name, tensor) in tensors {
        hasher.update(name.as_bytes());
        for d in tensor.size() {
            hasher.update(d.to_le_bytes());
        }
        let values = Vec::<f32>::try_from(&tensor.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hex::encode(&hasher.finalize()[..8]))
}
