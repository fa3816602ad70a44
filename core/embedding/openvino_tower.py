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


# A kept tower is used only if its vector for a probe image is this close to torch fp32's: far below
# what any precision of the same weights gives (>= 0.999 on a first batch), far above other weights.
MIN_PROBE_COSINE = 0.99


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
        and compiled to compute in `precision` ("fp32" or "bf16").

        A kept conversion is checked against the torch tower on a probe image first: one that is
        unreadable (a damaged file) or computes something else (another checkpoint kept under the
        same key, another output size) is said in one line and converted again.
        """
        import openvino as ov

        path = Path(folder) / f"{key}.xml"
        core, tower = ov.Core(), _image_tower(model, features)
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        probe = np.random.default_rng(0).standard_normal((1, 3, *input_size), dtype=np.float32)
        expected = _torch_vectors(tower, probe)
        compiled = None
        if path.exists():
            compiled, problem = _checked(core, path, hint, probe, expected)
            if problem:
                warnings.warn(
                    f"the converted OpenVINO copy of this model's image tower {problem}; converting it again",
                    stacklevel=2,
                )
        else:
            # Seconds to a minute with nothing else to show for it: said, so a first run does not look stuck.
            warnings.warn(
                f"converting the image tower to OpenVINO, once for this model (kept in {path.parent})",
                stacklevel=2,
            )
        if compiled is None:
            _save(_converted(tower, input_size), path)
            compiled, problem = _checked(core, path, hint, probe, expected)
            if problem:
                raise RuntimeError(f"the image tower converted to OpenVINO {problem}")
        self._compiled = compiled

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        return np.asarray(
            self._compiled(np.ascontiguousarray(pixel_values, np.float32))[0], np.float32
        )


def _checked(core, path: Path, hint: str, probe: np.ndarray, expected: np.ndarray):
    """The model at `path` compiled, and None; or None and what is wrong with it, as "… was unreadable"."""
    try:
        compiled = core.compile_model(
            core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": hint}
        )
    except (
        RuntimeError
    ):  # a truncated or garbled .xml or .bin; OpenVINO's own text names only its source lines
        return None, "was unreadable"
    try:
        vectors = np.asarray(compiled(probe)[0], np.float32)
    except RuntimeError:
        return None, "does not take this model's input size"
    if vectors.shape != expected.shape:
        return None, f"has another output size ({vectors.shape[-1]}, not {expected.shape[-1]})"
    cosine = float(np.sum(_unit(vectors) * _unit(expected)))
    if not cosine >= MIN_PROBE_COSINE:
        return (
            None,
            f"computes other vectors than this model (cosine {cosine:.3f} on a probe image)",
        )
    return compiled, None


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _image_tower(model, features: Callable):
    """`model`'s torch image tower as one module: pixel values in, projected features out."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered, so tracing takes its weights as parameters

        def forward(self, pixel_values):
            output = features(pixel_values=pixel_values)
            return output if isinstance(output, torch.Tensor) else output.pooler_output

    return ImageTower().eval()


def _torch_vectors(tower, pixel_values: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return tower(torch.from_numpy(pixel_values)).float().numpy()


def _converted(tower, input_size: tuple[int, int]):
    import openvino as ov
    import torch

    height, width = input_size
    # Tracing warns about Python branches on shapes that hold for any batch of this input size.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Traced with one image; the batch dimension stays free.
        return ov.convert_model(
            tower,
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
