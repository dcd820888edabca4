"""Reference for the network benchmark: both lobe networks in PyTorch eager.

It is the graph of services/infer/src/net.rs written as a PyTorch user would write it,
with the same parameter names, so it loads the weights of a lungstream model file:

1. VGG-16's conv1_1 … conv3_3, ReLU after each, a 2×2 max-pool after each block.
2. A U-Net on the 32×32 block-3 map, with one 3×3 convolution per level down to 4×4.
   On the way back up, each level's 2×2 stride-2 transposed convolution (with ReLU) is
   concatenated with the encoder's map of that level and merged by a 3×3 convolution.
3. Patch features: concat(block 3, U-Net output, distance / 32).
4. Attention head: two 1×1 convolutions and a sigmoid give each patch a weight. The lobe
   feature is the attention-weighted mean of the patch features (the weighted sum over
   the sum of the weights plus 1e-3), standardised per channel with the saved running
   mean and variance (eps 1e-5), and a linear layer with a sigmoid gives the lobe's
   probability.
5. Diseased network only: the coarse infection head (like the attention head) and the
   fine decoder (up to 64×64 and 128×128 with VGG's block-2 and block-1 maps as skips,
   then a 1×1 convolution and a sigmoid).

    python infer_torch.py MODEL.safetensors INPUT.npy DISTANCE.npy --out DIR
        [--threads N] [--repeat N | --serve]

MODEL.safetensors contains float32 tensors named `diseased.…` and `covid.…`, and the
widths are read from their shapes. INPUT.npy is float32 [B, 3, 256, 256] in 0..1, DISTANCE.npy
float32 [B, 1, 32, 32] in crop pixels. Each repetition runs both networks on the batch
and converts the outputs to numpy; loading is not timed. The outputs of the first
repetition are written to DIR as p_diseased.npy [B], p_covid.npy [B], attention.npy
[B, 32, 32] (diseased network), coarse.npy [B, 32, 32] and fine.npy [B, 128, 128].

By default it runs --repeat repetitions and prints one JSON object: seconds (wall time of
each repetition; the first includes one-time set-up), batch, threads and versions. With
--serve it runs one untimed repetition and prints that object (with empty seconds) as one
line. Then it runs one timed repetition for each line read from stdin and prints
{"seconds": S} as one line, until stdin closes. `lungstream bench infer` uses --serve to
alternate its own repetitions with these, so that a change in machine load hits both
implementations alike.
"""

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch import nn

# Periphery distances are divided by this before they join the patch features.
DISTANCE_SCALE = 32.0


def conv(input: int, output: int, kernel: int) -> nn.Conv2d:
    """Return a convolution with bias and "same" padding."""
    return nn.Conv2d(input, output, kernel, padding=kernel // 2)


def up(input: int, output: int) -> nn.ConvTranspose2d:
    """Return a 2×2 transposed convolution with stride 2, which doubles the resolution."""
    return nn.ConvTranspose2d(input, output, 2, stride=2)


class Vgg(nn.Module):
    """VGG-16's first three blocks, named as torchvision's layers are."""

    def __init__(self, c1: int, c2: int, c3: int):
        super().__init__()
        self.conv1_1 = conv(3, c1, 3)
        self.conv1_2 = conv(c1, c1, 3)
        self.conv2_1 = conv(c1, c2, 3)
        self.conv2_2 = conv(c2, c2, 3)
        self.conv3_1 = conv(c2, c3, 3)
        self.conv3_2 = conv(c3, c3, 3)
        self.conv3_3 = conv(c3, c3, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv1_1(x), inplace=True)
        x = F.relu(self.conv1_2(x), inplace=True)
        block1 = F.max_pool2d(x, 2)
        x = F.relu(self.conv2_1(block1), inplace=True)
        x = F.relu(self.conv2_2(x), inplace=True)
        block2 = F.max_pool2d(x, 2)
        x = F.relu(self.conv3_1(block2), inplace=True)
        x = F.relu(self.conv3_2(x), inplace=True)
        x = F.relu(self.conv3_3(x), inplace=True)
        block3 = F.max_pool2d(x, 2)
        return block1, block2, block3


class Vicinity(nn.Module):
    """The vicinity U-Net: one 3×3 convolution per level, from 32×32 down to 4×4 and back."""

    def __init__(self, input: int, v0: int, v1: int, v2: int, v3: int):
        super().__init__()
        self.down0 = conv(input, v0, 3)
        self.down1 = conv(v0, v1, 3)
        self.down2 = conv(v1, v2, 3)
        self.down3 = conv(v2, v3, 3)
        self.up2 = up(v3, v2)
        self.up1 = up(v2, v1)
        self.up0 = up(v1, v0)
        self.merge2 = conv(2 * v2, v2, 3)
        self.merge1 = conv(2 * v1, v1, 3)
        self.merge0 = conv(2 * v0, v0, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = F.relu(self.down0(x), inplace=True)
        e1 = F.relu(self.down1(F.max_pool2d(e0, 2)), inplace=True)
        e2 = F.relu(self.down2(F.max_pool2d(e1, 2)), inplace=True)
        e3 = F.relu(self.down3(F.max_pool2d(e2, 2)), inplace=True)
        d2 = F.relu(self.merge2(torch.cat([F.relu(self.up2(e3), inplace=True), e2], 1)), inplace=True)
        d1 = F.relu(self.merge1(torch.cat([F.relu(self.up1(d2), inplace=True), e1], 1)), inplace=True)
        return F.relu(self.merge0(torch.cat([F.relu(self.up0(d1), inplace=True), e0], 1)), inplace=True)


class Head(nn.Module):
    """Two 1×1 convolutions: a hidden ReLU layer, then one probability per cell."""

    def __init__(self, input: int, hidden: int):
        super().__init__()
        self.hidden = conv(input, hidden, 1)
        self.out = conv(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(F.relu(self.hidden(x), inplace=True))).squeeze(1)


class FineDecoder(nn.Module):
    """Patch features up to 128×128 cells, one probability per 6×6 fine patch."""

    def __init__(self, features: int, c1: int, c2: int, f0: int, f1: int):
        super().__init__()
        self.reduce = conv(features, f0, 3)
        self.up64 = up(f0, f1)
        self.merge64 = conv(f1 + c2, f1, 3)
        self.up128 = up(f1, f1)
        self.merge128 = conv(f1 + c1, f1, 3)
        self.out = conv(f1, 1, 1)

    def forward(self, patches: torch.Tensor, block1: torch.Tensor, block2: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.reduce(patches), inplace=True)
        x = F.relu(self.merge64(torch.cat([F.relu(self.up64(x), inplace=True), block2], 1)), inplace=True)
        x = F.relu(self.merge128(torch.cat([F.relu(self.up128(x), inplace=True), block1], 1)), inplace=True)
        return torch.sigmoid(self.out(x)).squeeze(1)


class FeatureNorm(nn.Module):
    """Standardises the lobe feature with saved running statistics (inference only)."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.running_mean) / torch.sqrt(self.running_var + 1e-5)


class LobeNetwork(nn.Module):
    """One lobe network; `infection_heads` is true for the diseased-vs-healthy network."""

    def __init__(self, widths: dict, infection_heads: bool):
        super().__init__()
        c1, c2, c3 = widths["vgg"]
        v0, v1, v2, v3 = widths["vicinity"]
        features = c3 + v0 + 1
        self.vgg = Vgg(c1, c2, c3)
        self.vicinity = Vicinity(c3, v0, v1, v2, v3)
        self.attention = Head(features, widths["head"])
        self.feature_norm = FeatureNorm(features)
        self.classifier = nn.Linear(features, 1)
        if infection_heads:
            self.coarse = Head(features, widths["head"])
            self.fine = FineDecoder(features, c1, c2, *widths["fine"])
        else:
            self.coarse = None
            self.fine = None

    def forward(self, lobes: torch.Tensor, distance: torch.Tensor) -> dict[str, torch.Tensor]:
        block1, block2, block3 = self.vgg(lobes)
        patches = torch.cat([block3, self.vicinity(block3), distance / DISTANCE_SCALE], 1)
        attention = self.attention(patches)
        weighted = (patches * attention.unsqueeze(1)).sum(dim=(2, 3))
        pooled = self.feature_norm(weighted / (attention.sum(dim=(1, 2)).unsqueeze(1) + 1e-3))
        outputs = {"probability": torch.sigmoid(self.classifier(pooled)).squeeze(1), "attention": attention}
        if self.coarse is not None:
            outputs["coarse"] = self.coarse(patches)
            outputs["fine"] = self.fine(patches, block1, block2)
        return outputs


class Model(nn.Module):
    """Both networks: diseased vs healthy (with the infection heads) and COVID-19 vs other."""

    def __init__(self, widths: dict):
        super().__init__()
        self.diseased = LobeNetwork(widths, infection_heads=True)
        self.covid = LobeNetwork(widths, infection_heads=False)

    def forward(self, lobes: torch.Tensor, distance: torch.Tensor) -> dict[str, np.ndarray]:
        diseased = self.diseased(lobes, distance)
        covid = self.covid(lobes, distance)
        return {
            "p_diseased": diseased["probability"].numpy(),
            "p_covid": covid["probability"].numpy(),
            "attention": diseased["attention"].numpy(),
            "coarse": diseased["coarse"].numpy(),
            "fine": diseased["fine"].numpy(),
        }


def widths_of(weights: dict[str, np.ndarray]) -> dict:
    """Read the layer widths from the shapes of the diseased network's weights."""

    def out_channels(name: str) -> int:
        return weights[f"diseased.{name}.weight"].shape[0]

    return {
        "vgg": [out_channels("vgg.conv1_1"), out_channels("vgg.conv2_1"), out_channels("vgg.conv3_1")],
        "vicinity": [out_channels(f"vicinity.down{level}") for level in range(4)],
        "head": out_channels("attention.hidden"),
        "fine": [out_channels("fine.reduce"), out_channels("fine.merge64")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="lungstream model file (.safetensors)")
    parser.add_argument("input", help="float32 lobes [B, 3, 256, 256] in 0..1 (.npy)")
    parser.add_argument("distance", help="float32 periphery distances [B, 1, 32, 32] in crop pixels (.npy)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="folder for the outputs of the first repetition")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads (default: PyTorch's)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="repetitions (default 3)")
    parser.add_argument("--serve", action="store_true", help="time one repetition per line read from stdin")
    args = parser.parse_args()
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be at least 1, got {args.repeat}")
    if args.threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)

    weights = load_file(args.model)
    model = Model(widths_of(weights))
    # strict: every parameter must come from the file, and the file may hold no others.
    model.load_state_dict({name: torch.from_numpy(values) for name, values in weights.items()}, strict=True)
    model.eval()
    lobes = torch.from_numpy(np.load(args.input))
    distance = torch.from_numpy(np.load(args.distance))
    if lobes.dtype != torch.float32 or lobes.dim() != 4 or lobes.shape[1] != 3:
        raise SystemExit(f"{args.input}: expected float32 [B, 3, H, W], got {lobes.dtype} {list(lobes.shape)}")
    if distance.dtype != torch.float32 or distance.shape[0] != lobes.shape[0]:
        raise SystemExit(f"{args.distance}: expected float32 [{lobes.shape[0]}, 1, 32, 32], got {distance.dtype} {list(distance.shape)}")

    def run_once(save: bool) -> float:
        """Run both networks once, write the outputs when `save`, return the wall time in seconds."""
        start = time.perf_counter()
        outputs = model(lobes, distance)
        elapsed = time.perf_counter() - start
        if save:
            args.out.mkdir(parents=True, exist_ok=True)
            for name, values in outputs.items():
                np.save(args.out / f"{name}.npy", values)
        return elapsed

    result = {
        "seconds": [],
        "batch": lobes.shape[0],
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    with torch.inference_mode():
        if args.serve:
            run_once(save=True)
            print(json.dumps(result), flush=True)
            for _ in sys.stdin:
                print(json.dumps({"seconds": run_once(save=False)}), flush=True)
        else:
            result["seconds"] = [run_once(save=repetition == 0) for repetition in range(args.repeat)]
            print(json.dumps(result))


if __name__ == "__main__":
    main()
