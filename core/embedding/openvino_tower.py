"""A CLIP image tower run by OpenVINO: converted from the torch model once per checkpoint, kept on disk, compiled for this CPU."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np


def openvino_available() -> bool:
    """Whether the openvino package can be imported here (it is in requirements.txt; a trimmed install may lack it)."""
    return importlib.util.find_spec("openvino") is not None


class OpenVinoTower:
    """Prepared images (n, 3, H, W) in, projected image features (n, dim) out, computed by OpenVINO on the CPU."""

    def __init__(
        self,
        model,
        features: Callable,
        input_size: tuple[int, int],
        folder: Path,
        key: str,
        precision: str,
    ) -> None:
        """`features(pixel_values=...)` is `model`'s torch image tower, converted unless `folder` already holds `key`'s model,
        and compiled to compute in `precision` ("fp32" or "bf16")."""
        import openvino as ov

        path = Path(folder) / f"{key}.xml"
        core = ov.Core()
        if not path.exists():
            # Seconds to a minute with nothing else to show for it: said, so a first run does not look stuck.
            warnings.warn(
                f"converting the image tower to OpenVINO, once for this model (kept in {path.parent})",
                stacklevel=2,
            )
            _save(_converted(model, features, input_size), path)
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        self._compiled = core.compile_model(
            core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": hint}
        )

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        return np.asarray(
            self._compiled(np.ascontiguousarray(pixel_values, np.float32))[0], np.float32
        )


def _converted(model, features: Callable, input_size: tuple[int, int]):
    import openvino as ov
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered, so tracing takes its weights as parameters

        def forward(self, pixel_values):
            output = features(pixel_values=pixel_values)
            return output if isinstance(output, torch.Tensor) else output.pooler_output

    height, width = input_size
    # Tracing warns about Python branches on shapes that hold for any batch of this input size.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Traced with one image; the batch dimension stays free.
        return ov.convert_model(
            ImageTower().eval(),
            example_input=torch.zeros((1, 3, height, width)),
            input=[ov.PartialShape([-1, 3, height, width])],
        )


def _save(model, path: Path) -> None:
    """Write the converted model's .xml and .bin so a concurrent or interrupted run never reads half of them."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".converting-") as scratch:
        written = Path(scratch) / path.name
        ov.save_model(model, written, compress_to_fp16=False)
        # The .bin first: read_model takes the .bin beside an .xml, so an .xml is only ever seen with its .bin.
        os.replace(written.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(written, path)
