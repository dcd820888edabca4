//! The lobe network of method.md §3 (diseased vs healthy) and §4 (COVID-19 vs other
//! disease: the same graph without the infection heads).
//!
//! Input: a batch of lobes, `B × 3 × 256 × 256` (previous, this and next slice, 0..1) and
//! the periphery distance of every coarse patch, `B × 1 × 32 × 32` in crop pixels.
//!
//! 1. VGG-16's conv1_1 … conv3_3 with three max-pools: local features `vgg[2] × 32 × 32`,
//!    one cell per coarse patch (36×36 receptive field, stride 8).
//! 2. A U-Net on that map (32² → 16² → 8² → 4² and back, skip connections): vicinity
//!    features, `vicinity[0] × 32 × 32`.
//! 3. Patch features = concat(local, vicinity, distance / 32).
//! 4. Coarse infection head: two 1×1 convolutions and a sigmoid per patch (32 × 32).
//! 5. Fine decoder: from the patch features up to 64² and 128², with VGG's block 2 and
//!    block 1 features as skips, then a sigmoid per 6×6 fine patch (128 × 128).
//! 6. Attention head: two 1×1 convolutions and a sigmoid give each patch a weight. The
//!    lobe feature is the weighted sum of patch features, and one linear layer with a
//!    sigmoid gives the lobe's probability.
//!
//! Every convolution is followed by ReLU except the heads' last layers. There is no batch
//! normalisation: the method names none, and without it inference is the plain graph.

use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::config::NetworkConfig;
use crate::init::{he_normal, scaled_normal};

/// Periphery distances are divided by this before they join the patch features, so they
/// are of the same order as the activations (a lung crop is rarely 64 pixels deep).
pub const DISTANCE_SCALE: f64 = 32.0;

/// Added to the attention weights' sum before it divides the weighted sum of patch
/// features, so that a lobe whose weights are all near 0 still gets a finite feature.
pub const ATTENTION_EPSILON: f64 = 1e-3;

/// A variable scope: the `nn::Path` and the dotted name it stands for, which seeds the
/// deterministic initialisation of each tensor.
#[derive(Clone)]
pub(crate) struct Scope<'a> {
    path: nn::Path<'a>,
    name: String,
    seed: u64,
}

impl<'a> Scope<'a> {
    pub(crate) fn root(path: nn::Path<'a>, name: &str, seed: u64) -> Self {
        Scope { path: path.sub(name), name: name.to_string(), seed }
    }

    fn sub(&self, name: &str) -> Scope<'a> {
        Scope { path: self.path.sub(name), name: format!("{}.{name}", self.name), seed: self.seed }
    }

    /// Creates a variable initialised from a normal distribution with `std`, seeded by its
    /// name.
    fn normal(&self, name: &str, shape: &[i64], std: f64) -> Tensor {
        let full = format!("{}.{name}", self.name);
        let values = scaled_normal(self.seed, &full, shape.iter().product::<i64>() as usize, std);
        self.path.var_copy(name, &Tensor::from_slice(&values).view(shape))
    }

    fn zeros(&self, name: &str, shape: &[i64]) -> Tensor {
        self.path.zeros(name, shape)
    }

    /// Creates a variable that is saved with the weights but not trained, filled with 0
    /// or 1.
    fn statistic(&self, name: &str, shape: &[i64], one: bool) -> Tensor {
        if one {
            self.path.ones_no_train(name, shape)
        } else {
            self.path.zeros_no_train(name, shape)
        }
    }
}

/// Execution mode of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: the lobe feature is standardised with the batch's statistics, which
    /// update the running ones.
    Train,
    /// Inference: the running statistics are used and left as they are, so each lobe's
    /// output depends on that lobe alone.
    Infer,
}

/// Momentum of the running statistics of the lobe feature (libtorch's default).
const FEATURE_MOMENTUM: f64 = 0.1;
/// Added to the variance of the lobe feature before its square root.
const FEATURE_EPSILON: f64 = 1e-5;

/// A 2-D convolution with bias; `k × k` kernel, "same" padding.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: i64,
}

impl Conv {
    /// He-initialised, for layers followed by ReLU.
    fn relu(scope: &Scope, name: &str, input: i64, output: i64, k: i64) -> Conv {
        Conv::with_std(scope, name, input, output, k, he_normal(input * k * k))
    }

    /// For the last layer of a head: unit-variance logits for unit-variance inputs.
    fn logits(scope: &Scope, name: &str, input: i64, output: i64) -> Conv {
        Conv::with_std(scope, name, input, output, 1, (1.0 / input as f64).sqrt())
    }

    fn with_std(scope: &Scope, name: &str, input: i64, output: i64, k: i64, std: f64) -> Conv {
        let scope = scope.sub(name);
        Conv { weight: scope.normal("weight", &[output, input, k, k], std), bias: scope.zeros("bias", &[output]), padding: k / 2 }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(&self.weight, Some(&self.bias), [1, 1], [self.padding, self.padding], [1, 1], 1)
    }

    fn forward_relu(&self, x: &Tensor) -> Tensor {
        self.forward(x).relu_()
    }
}

/// A 2×2 transposed convolution with stride 2: doubles the resolution.
#[derive(Debug)]
struct UpConv {
    weight: Tensor,
    bias: Tensor,
}

impl UpConv {
    fn new(scope: &Scope, name: &str, input: i64, output: i64) -> UpConv {
        let scope = scope.sub(name);
        // Each output pixel receives exactly one kernel tap from each input channel.
        let weight = scope.normal("weight", &[input, output, 2, 2], he_normal(input));
        UpConv { weight, bias: scope.zeros("bias", &[output]) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv_transpose2d(&self.weight, Some(&self.bias), [2, 2], [0, 0], [0, 0], 1, [1, 1]).relu_()
    }
}

/// Two 1×1 convolutions: hidden ReLU layer, then one logit per cell.
#[derive(Debug)]
struct Head {
    hidden: Conv,
    out: Conv,
}

impl Head {
    fn new(scope: &Scope, name: &str, input: i64, hidden: i64) -> Head {
        let scope = scope.sub(name);
        Head { hidden: Conv::relu(&scope, "hidden", input, hidden, 1), out: Conv::logits(&scope, "out", hidden, 1) }
    }

    /// Probabilities, `B × H × W`.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.out.forward(&self.hidden.forward_relu(x)).sigmoid().squeeze_dim(1)
    }
}

/// VGG-16's first three blocks, named as torchvision's layers are.
#[derive(Debug)]
struct VggPrefix {
    block1: [Conv; 2],
    block2: [Conv; 2],
    block3: [Conv; 3],
}

/// The three blocks' outputs after their max-pools: 128², 64² and 32² cells.
struct VggFeatures {
    block1: Tensor,
    block2: Tensor,
    block3: Tensor,
}

impl VggPrefix {
    fn new(scope: &Scope, widths: [i64; 3]) -> VggPrefix {
        let s = scope.sub("vgg");
        let [c1, c2, c3] = widths;
        VggPrefix {
            block1: [Conv::relu(&s, "conv1_1", 3, c1, 3), Conv::relu(&s, "conv1_2", c1, c1, 3)],
            block2: [Conv::relu(&s, "conv2_1", c1, c2, 3), Conv::relu(&s, "conv2_2", c2, c2, 3)],
            block3: [Conv::relu(&s, "conv3_1", c2, c3, 3), Conv::relu(&s, "conv3_2", c3, c3, 3), Conv::relu(&s, "conv3_3", c3, c3, 3)],
        }
    }

    /// Runs the three blocks. On the CPU (float32, libtorch built with oneDNN) they run on
    /// oneDNN tensors in its blocked layout, and only the three pooled outputs are
    /// converted back to dense tensors. The convolutions are the same oneDNN kernels as on
    /// dense tensors, but a dense input makes libtorch reorder each convolution's input
    /// and output between the layouts, with two fresh buffers of the activation's size.
    fn forward(&self, x: &Tensor) -> VggFeatures {
        let block = |convs: &[Conv], x: &Tensor| {
            let mut y = convs[0].forward_relu(x);
            for conv in &convs[1..] {
                y = conv.forward_relu(&y);
            }
            y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
        };
        let blocked = x.device() == Device::Cpu && x.kind() == Kind::Float && tch::utils::has_mkldnn();
        let input = if blocked { x.to_mkldnn() } else { x.shallow_clone() };
        let block1 = block(&self.block1, &input);
        let block2 = block(&self.block2, &block1);
        let block3 = block(&self.block3, &block2);
        if blocked {
            let dense = |t: &Tensor| t.to_dense(None::<Kind>, false);
            VggFeatures { block1: dense(&block1), block2: dense(&block2), block3: dense(&block3) }
        } else {
            VggFeatures { block1, block2, block3 }
        }
    }
}

/// The vicinity U-Net: one 3×3 convolution per level, down to 4² and back up.
#[derive(Debug)]
struct Vicinity {
    down: [Conv; 4],
    up: [UpConv; 3],
    merge: [Conv; 3],
}

impl Vicinity {
    fn new(scope: &Scope, input: i64, widths: [i64; 4]) -> Vicinity {
        let s = scope.sub("vicinity");
        let [v0, v1, v2, v3] = widths;
        Vicinity {
            down: [Conv::relu(&s, "down0", input, v0, 3), Conv::relu(&s, "down1", v0, v1, 3), Conv::relu(&s, "down2", v1, v2, 3), Conv::relu(&s, "down3", v2, v3, 3)],
            up: [UpConv::new(&s, "up2", v3, v2), UpConv::new(&s, "up1", v2, v1), UpConv::new(&s, "up0", v1, v0)],
            merge: [Conv::relu(&s, "merge2", 2 * v2, v2, 3), Conv::relu(&s, "merge1", 2 * v1, v1, 3), Conv::relu(&s, "merge0", 2 * v0, v0, 3)],
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let pool = |t: &Tensor| t.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        let e0 = self.down[0].forward_relu(x);
        let e1 = self.down[1].forward_relu(&pool(&e0));
        let e2 = self.down[2].forward_relu(&pool(&e1));
        let e3 = self.down[3].forward_relu(&pool(&e2));
        let d2 = self.merge[0].forward_relu(&Tensor::cat(&[self.up[0].forward(&e3), e2], 1));
        let d1 = self.merge[1].forward_relu(&Tensor::cat(&[self.up[1].forward(&d2), e1], 1));
        self.merge[2].forward_relu(&Tensor::cat(&[self.up[2].forward(&d1), e0], 1))
    }
}

/// The fine decoder: patch features up to 128² cells, one per 6×6 fine patch.
#[derive(Debug)]
struct FineDecoder {
    reduce: Conv,
    up64: UpConv,
    merge64: Conv,
    up128: UpConv,
    merge128: Conv,
    out: Conv,
}

impl FineDecoder {
    fn new(scope: &Scope, config: &NetworkConfig) -> FineDecoder {
        let s = scope.sub("fine");
        let [f0, f1] = config.fine;
        FineDecoder {
            reduce: Conv::relu(&s, "reduce", config.patch_features(), f0, 3),
            up64: UpConv::new(&s, "up64", f0, f1),
            merge64: Conv::relu(&s, "merge64", f1 + config.vgg[1], f1, 3),
            up128: UpConv::new(&s, "up128", f1, f1),
            merge128: Conv::relu(&s, "merge128", f1 + config.vgg[0], f1, 3),
            out: Conv::logits(&s, "out", f1, 1),
        }
    }

    fn forward(&self, patches: &Tensor, vgg: &VggFeatures) -> Tensor {
        let x = self.reduce.forward_relu(patches);
        let x = self.merge64.forward_relu(&Tensor::cat(&[self.up64.forward(&x), vgg.block2.shallow_clone()], 1));
        let x = self.merge128.forward_relu(&Tensor::cat(&[self.up128.forward(&x), vgg.block1.shallow_clone()], 1));
        self.out.forward(&x).sigmoid().squeeze_dim(1)
    }
}

/// Outputs of a lobe network for a batch of lobes.
#[derive(Debug)]
pub struct LobeOutput {
    /// Probability per lobe, `B`.
    pub probability: Tensor,
    /// Attention weight per coarse patch, `B × 32 × 32`.
    pub attention: Tensor,
    /// Infection probability per coarse patch, `B × 32 × 32` (diseased network only).
    pub coarse: Option<Tensor>,
    /// Infection probability per fine patch, `B × 128 × 128` (diseased network only).
    pub fine: Option<Tensor>,
}

/// One lobe network; `infection_heads` is true for the diseased-vs-healthy network.
#[derive(Debug)]
pub struct LobeNetwork {
    config: NetworkConfig,
    vgg: VggPrefix,
    vicinity: Vicinity,
    coarse: Option<Head>,
    fine: Option<FineDecoder>,
    attention: Head,
    feature_mean: Tensor,
    feature_var: Tensor,
    classifier_weight: Tensor,
    classifier_bias: Tensor,
}

impl LobeNetwork {
    /// Creates the network's variables under `root/name` with deterministic values.
    pub(crate) fn new(scope: &Scope, config: &NetworkConfig, infection_heads: bool) -> LobeNetwork {
        let features = config.patch_features();
        let classifier = scope.sub("classifier");
        let norm = scope.sub("feature_norm");
        let std = (1.0 / features as f64).sqrt();
        LobeNetwork {
            config: *config,
            vgg: VggPrefix::new(scope, config.vgg),
            vicinity: Vicinity::new(scope, config.vgg[2], config.vicinity),
            coarse: infection_heads.then(|| Head::new(scope, "coarse", features, config.head)),
            fine: infection_heads.then(|| FineDecoder::new(scope, config)),
            attention: Head::new(scope, "attention", features, config.head),
            feature_mean: norm.statistic("running_mean", &[features], false),
            feature_var: norm.statistic("running_var", &[features], true),
            classifier_weight: classifier.normal("weight", &[1, features], std),
            classifier_bias: classifier.zeros("bias", &[1]),
        }
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    pub fn has_infection_heads(&self) -> bool {
        self.coarse.is_some()
    }

    /// Runs the network. `lobes` is `B × 3 × 256 × 256`, `distance` `B × 1 × 32 × 32` in
    /// crop pixels; both are converted to the parameters' kind and device.
    pub fn forward(&self, lobes: &Tensor, distance: &Tensor) -> LobeOutput {
        self.forward_parts(lobes, distance, true, Mode::Infer)
    }

    /// Like [`LobeNetwork::forward`], but runs the fine decoder only when `fine` is true
    /// (the first training stage does not use the fine map), in the given mode.
    pub fn forward_parts(&self, lobes: &Tensor, distance: &Tensor, fine: bool, mode: Mode) -> LobeOutput {
        let (kind, device) = (self.classifier_weight.kind(), self.classifier_weight.device());
        let x = lobes.to_device(device).to_kind(kind);
        let distance = (distance.to_device(device).to_kind(kind) / DISTANCE_SCALE).to_kind(kind);
        let vgg = self.vgg.forward(&x);
        let vicinity = self.vicinity.forward(&vgg.block3);
        let patches = Tensor::cat(&[vgg.block3.shallow_clone(), vicinity, distance], 1);
        let attention = self.attention.forward(&patches);
        // **[choice]** The paper sums the weighted patch features. Here the sum is divided
        // by the sum of the weights, so the lobe feature is the attention-weighted mean.
        // With the plain sum, one Adam step swung the logits by about 10. Divided by the
        // fixed 1024 cells, a lesion on a tenth of the cells moved the mean too little, and
        // training settled on a constant output.
        let weighted = (&patches * attention.unsqueeze(1)).sum_dim_intlist([2i64, 3].as_slice(), false, None::<Kind>);
        let total = attention.sum_dim_intlist([1i64, 2].as_slice(), false, None::<Kind>).unsqueeze(1);
        let pooled = weighted / (total + ATTENTION_EPSILON);
        // **[choice]** The lobe feature is standardised per channel before the classifier
        // (batch normalisation without scale and shift, which the classifier has). The
        // differences a lesion makes in the pooled feature are small next to its scale,
        // and Adam moves each weight by about the learning rate per step, so without
        // it the classifier needed thousands of steps to separate the classes.
        let pooled = pooled.batch_norm(None::<&Tensor>, None::<&Tensor>, Some(&self.feature_mean), Some(&self.feature_var), mode == Mode::Train, FEATURE_MOMENTUM, FEATURE_EPSILON, false);
        let probability = pooled.linear(&self.classifier_weight, Some(&self.classifier_bias)).sigmoid().squeeze_dim(1);
        LobeOutput {
            probability,
            attention,
            coarse: self.coarse.as_ref().map(|head| head.forward(&patches)),
            fine: self.fine.as_ref().filter(|_| fine).map(|decoder| decoder.forward(&patches, &vgg)),
        }
    }
}
