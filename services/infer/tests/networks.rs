//! The networks with libtorch: output shapes, deterministic initialisation, the weights
//! file round trip and its guards.

use std::collections::HashMap;

use lungstream_infer::model::MODEL_FORMAT;
use lungstream_infer::{Model, ModelError, NetworkConfig};
use safetensors::SafeTensors;
use tch::{Kind, Tensor};

/// Builds a deterministic batch: `b` lobes of smooth patterns in 0..1, with distances
/// 0..31.
fn inputs(b: i64) -> (Tensor, Tensor) {
    let lobes = Tensor::arange(b * 3 * 256 * 256, (Kind::Float, tch::Device::Cpu)).view([b, 3, 256, 256]);
    let lobes = (lobes / 977.0).sin().abs();
    let distance = Tensor::arange(b * 32 * 32, (Kind::Float, tch::Device::Cpu)).view([b, 1, 32, 32]).remainder(32.0);
    (lobes, distance)
}

fn in_unit_interval(t: &Tensor) -> bool {
    let min = t.min().double_value(&[]);
    let max = t.max().double_value(&[]);
    (0.0..=1.0).contains(&min) && (0.0..=1.0).contains(&max)
}

#[test]
fn network_output_shapes() {
    for (config, b) in [(NetworkConfig::NARROW, 3), (NetworkConfig::FULL, 1)] {
        let model = Model::initialised(config, 5).unwrap();
        let (lobes, distance) = inputs(b);
        let _guard = tch::no_grad_guard();
        let diseased = model.diseased.forward(&lobes, &distance);
        assert_eq!(diseased.probability.size(), [b]);
        assert_eq!(diseased.attention.size(), [b, 32, 32]);
        assert_eq!(diseased.coarse.as_ref().unwrap().size(), [b, 32, 32]);
        assert_eq!(diseased.fine.as_ref().unwrap().size(), [b, 128, 128]);
        for t in [&diseased.probability, &diseased.attention, diseased.coarse.as_ref().unwrap(), diseased.fine.as_ref().unwrap()] {
            assert!(in_unit_interval(t), "{} output outside 0..1", config.name());
            assert!(!t.requires_grad(), "autograd recorded under no_grad");
        }
        let covid = model.covid.forward(&lobes, &distance);
        assert_eq!(covid.probability.size(), [b]);
        assert_eq!(covid.attention.size(), [b, 32, 32]);
        assert!(covid.coarse.is_none(), "the COVID network has no coarse head");
        assert!(covid.fine.is_none(), "the COVID network has no fine decoder");
    }
}

#[test]
fn batch_lobes_are_independent() {
    let model = Model::initialised(NetworkConfig::NARROW, 5).unwrap();
    let (lobes, distance) = inputs(4);
    let _guard = tch::no_grad_guard();
    let batch = model.diseased.forward(&lobes, &distance);
    let single = model.diseased.forward(&lobes.narrow(0, 2, 1), &distance.narrow(0, 2, 1));
    let difference = (batch.fine.unwrap().narrow(0, 2, 1) - single.fine.unwrap()).abs().max().double_value(&[]);
    assert!(difference < 1e-5, "lobe 2 differs by {difference} between batch and single");
}

#[test]
fn feature_statistics_update_only_in_training() {
    use lungstream_infer::net::Mode;
    let model = Model::initialised(NetworkConfig::NARROW, 5).unwrap();
    let (lobes, distance) = inputs(4);
    let running = |m: &Model| m.named_tensors()["diseased.feature_norm.running_mean"].copy();
    let before = running(&model);
    assert_eq!(before.abs().sum(Kind::Float).double_value(&[]), 0.0, "the running mean starts at 0");

    // Inference leaves the statistics alone, so a lobe's output depends on that lobe alone.
    let _guard = tch::no_grad_guard();
    let first = model.diseased.forward(&lobes, &distance).probability;
    assert!(running(&model).equal(&before));
    let again = model.diseased.forward(&lobes, &distance).probability;
    assert!(first.equal(&again));

    // Training standardises with the batch and moves the running mean a tenth of the way.
    let trained = model.diseased.forward_parts(&lobes, &distance, false, Mode::Train).probability;
    let after = running(&model);
    assert!(after.abs().sum(Kind::Float).double_value(&[]) > 0.0, "training updated nothing");
    assert!(!trained.allclose(&first, 1e-6, 1e-6, false), "batch statistics changed nothing");
    let changed = model.diseased.forward(&lobes, &distance).probability;
    assert!(!changed.allclose(&first, 1e-6, 1e-6, false), "inference ignores the running statistics");
    assert!(model.diseased.forward_parts(&lobes, &distance, false, Mode::Infer).probability.equal(&changed));
}

#[test]
fn demo_weights_are_trained_and_research_only() {
    let model = Model::demo().unwrap();
    let card = model.card();
    assert_eq!(card.id, "lungstream-demo-narrow-phantom");
    assert_eq!(card.config, NetworkConfig::NARROW);
    assert!(card.trained, "the demo weights are marked untrained");
    assert!(card.research_only, "the demo weights must be marked research only");
    assert!(card.notes.contains("NOT FOR CLINICAL USE"), "{}", card.notes);
    assert!(card.trained_on.contains("synthetic"), "{}", card.trained_on);
}

#[test]
fn initialisation_is_deterministic() {
    let a = Model::initialised(NetworkConfig::NARROW, 11).unwrap();
    let b = Model::initialised(NetworkConfig::NARROW, 11).unwrap();
    let c = Model::initialised(NetworkConfig::NARROW, 12).unwrap();
    assert_eq!(a.card().version, b.card().version);
    assert_ne!(a.card().version, c.card().version);
    for (name, tensor) in a.named_tensors() {
        let other = &b.named_tensors()[&name];
        assert!(tensor.equal(other), "{name} differs between two models of the same seed");
    }
    assert_eq!(a.card().id, "ghavami2020-narrow-init");
    assert!(!a.card().trained);
    // He initialisation: conv1_2 has 8 × 3 × 3 inputs per output, so std √(2/72).
    let weight = &a.named_tensors()["diseased.vgg.conv1_2.weight"];
    let std = weight.std(true).double_value(&[]);
    assert!((std - (2.0f64 / 72.0).sqrt()).abs() < 0.03, "conv1_2 std {std}");
}

#[test]
fn weights_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut model = Model::initialised(NetworkConfig::NARROW, 3).unwrap();
    model.set_card("test-model".into(), true, "two phantoms".into(), "for a test".into()).unwrap();
    model.save(&path).unwrap();

    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.card(), model.card());
    let (lobes, distance) = inputs(2);
    let _guard = tch::no_grad_guard();
    let (x, y) = (model.diseased.forward(&lobes, &distance), loaded.diseased.forward(&lobes, &distance));
    assert!(x.probability.equal(&y.probability));
    assert!(x.fine.unwrap().equal(&y.fine.unwrap()));
    let (x, y) = (model.covid.forward(&lobes, &distance), loaded.covid.forward(&lobes, &distance));
    assert!(x.probability.equal(&y.probability));
    assert!(x.attention.equal(&y.attention));
}

/// Rewrites a model file with other metadata and tensors.
fn rewrite(path: &std::path::Path, edit: impl FnOnce(&mut HashMap<String, String>, &mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let data = std::fs::read(path).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&data).unwrap();
    let mut info = metadata.metadata().clone().unwrap();
    let tensors = SafeTensors::deserialize(&data).unwrap();
    let mut list: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut info, &mut list);
    let views: Vec<(String, safetensors::tensor::TensorView)> = list
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, Some(info), path).unwrap();
}

#[test]
fn model_load_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    Model::initialised(NetworkConfig::NARROW, 3).unwrap().save(&good).unwrap();
    let copy = |name: &str| {
        let path = dir.path().join(name);
        std::fs::copy(&good, &path).unwrap();
        path
    };

    // One weight changed: the card's version no longer matches.
    let altered = copy("altered.safetensors");
    rewrite(&altered, |_, tensors| tensors[0].2[0] ^= 0x40);
    assert!(matches!(Model::load(&altered), Err(ModelError::VersionMismatch { .. })));

    // Another format name.
    let foreign = copy("foreign.safetensors");
    rewrite(&foreign, |info, _| {
        info.insert("format".into(), "someone-else-v3".into());
    });
    let error = Model::load(&foreign).unwrap_err().to_string();
    assert!(error.contains("someone-else-v3"), "{error}");
    assert!(error.contains(MODEL_FORMAT), "{error}");

    // A card that claims the full configuration over narrow tensors.
    let mismatched = copy("mismatched.safetensors");
    rewrite(&mismatched, |info, _| {
        let card = info["model_card"].replace("\"vgg\":[8,16,32]", "\"vgg\":[64,128,256]");
        info.insert("model_card".into(), card);
    });
    let error = Model::load(&mismatched).unwrap_err().to_string();
    assert!(error.contains("diseased.vgg.conv1_1.weight") || error.contains("expected F32"), "{error}");

    // A missing tensor.
    let missing = copy("missing.safetensors");
    rewrite(&missing, |_, tensors| {
        tensors.retain(|(n, _, _)| n != "covid.classifier.bias");
    });
    let error = Model::load(&missing).unwrap_err().to_string();
    assert!(error.contains("covid.classifier.bias is missing"), "{error}");

    // Truncated, empty and absent files.
    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(Model::load(&truncated), Err(ModelError::Invalid { .. })));
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(Model::load(&empty), Err(ModelError::Invalid { .. })));
    assert!(matches!(Model::load(&dir.path().join("absent.safetensors")), Err(ModelError::Read { .. })));

    // The untouched file still loads.
    Model::load(&good).unwrap();
}

#[test]
fn device_choice_without_cuda() {
    use lungstream_infer::DeviceChoice;
    if tch::Cuda::is_available() {
        return;
    }
    assert!(matches!(DeviceChoice::Cuda.resolve(), Err(ModelError::CudaUnavailable)));
    assert_eq!(DeviceChoice::Auto.resolve().unwrap().0, tch::Device::Cpu);
    assert!("gpu".parse::<DeviceChoice>().is_err());
}
