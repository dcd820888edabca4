"""Reference for the reader benchmark: load a CT series with pydicom and numpy.

It does the same work as the Rust reader's load. It reads every file of the folder, keeps
the CT images and sorts them along the slice normal. Then it converts each slice to
Hounsfield units with its own Rescale Slope and Intercept into one int16 volume. It
prints one JSON object with the wall time of each repetition in seconds.

    python load_pydicom.py DIR [--repeat N]
"""

import argparse
import json
import pathlib
import time

import numpy as np
import pydicom


def load_volume(folder: pathlib.Path) -> np.ndarray:
    datasets = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            dataset = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        localizer = "LOCALIZER" in [str(v).upper() for v in dataset.get("ImageType", [])]
        if dataset.get("Modality") == "CT" and "PixelData" in dataset and not localizer:
            datasets.append(dataset)
    if not datasets:
        raise SystemExit(f"no CT images under {folder}")

    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    if normal[2] < 0:
        normal = -normal
    datasets.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))

    rows, columns = datasets[0].Rows, datasets[0].Columns
    volume = np.empty((len(datasets), rows, columns), dtype=np.int16)
    for index, dataset in enumerate(datasets):
        slope = float(dataset.get("RescaleSlope", 1.0))
        intercept = float(dataset.get("RescaleIntercept", 0.0))
        hu = dataset.pixel_array.astype(np.float32) * slope + intercept
        volume[index] = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    return volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    seconds = []
    shape = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        volume = load_volume(args.folder)
        seconds.append(time.perf_counter() - start)
        shape = list(volume.shape)
    print(json.dumps({"seconds": seconds, "shape": shape, "pydicom": pydicom.__version__, "numpy": np.__version__}))


if __name__ == "__main__":
    main()
