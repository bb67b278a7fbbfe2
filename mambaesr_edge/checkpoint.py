"""Loading and saving weights, apart from the model.

Our format: safetensors with the model config in its metadata (weights_format.CONFIG_KEY), so one file fully
describes its model. Key names, shapes and the checks' messages are weights_format's, shared with model_numpy.
Outside checkpoints: DVMSR's plain state_dict and BasicSR's {'params', 'params_ema'} .pth
files, read with `torch.load(weights_only=True)`: a pickle that carries code is refused, never executed.
Configs of outside checkpoints are inferred from tensor shapes; a preset, when given, must match them exactly.
"""

from __future__ import annotations

import logging
import pickle
import pickletools
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ArchitectureMismatchError, WeightsError
from .fileio import atomic_write, sha256_file  # noqa: F401  (sha256_file is part of this module's API)
from .model import MambaSR
from .presets import ModelConfig, get_preset
from .resources import default_weights_path
from .weights_format import (
    BLOCK_KEY,
    CONFIG_KEY,
    FORMAT,
    FORMAT_KEY,
    GROUP_KEY,
    MIXER,
    block_prefix,
    check_shapes,
    check_values,
    config_from_metadata,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    config: ModelConfig | None  # from our metadata; None for outside checkpoints
    metadata: dict[str, str]
    sha256: str
    source: str  # "mambaesr-edge", "state_dict", "basicsr:params_ema", ...


def read_weights(path: str | Path, param_key: str | None = None) -> LoadedWeights:
    """Read a weights file (.safetensors, .pth, .pt) without building a model. Never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}", hint="check the path given to --weights")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path, param_key)


def _read_safetensors(path: Path) -> LoadedWeights:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"corrupt or unreadable safetensors file {path}: {exc}", hint="re-download or re-export it") from exc
    config = config_from_metadata(metadata, str(path))
    return LoadedWeights(tensors, config, metadata, sha256_file(path), "mambaesr-edge" if config else "safetensors")


def _read_torch(path: Path, param_key: str | None) -> LoadedWeights:
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        imports = _pickle_imports(path)
        if not imports:  # no import at all: the bytes are just not a valid checkpoint
            raise WeightsError(f"corrupt or unreadable weights file {path}: not a valid checkpoint", hint="re-download it") from exc
        raise WeightsError(
            f"refused to load {path}: its pickle imports {', '.join(sorted(imports)[:4])} (code, not just tensors)",
            hint="only plain state_dicts load; convert the file to .safetensors where it was made",
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(f"corrupt or unreadable weights file {path}: {_first_line(exc)}", hint="re-download it") from exc
    state_dict, source = _unwrap(obj, param_key, path)
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return LoadedWeights(state_dict, None, {}, sha256_file(path), source)


_SAFE_IMPORT_PREFIXES = ("torch.", "collections.OrderedDict", "numpy.", "_codecs.encode")


def _pickle_imports(path: Path) -> set[str]:
    """Names a pickle would import (read with pickletools, which executes nothing), outside torch's own types."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
        names, strings = set(), []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.add(f"{strings[-2]}.{strings[-1]}")
            elif opcode.name in ("GLOBAL", "INST"):
                names.add(str(arg).replace(" ", "."))
    except (ValueError, zipfile.BadZipFile, OSError, KeyError, EOFError):
        return set()
    return {n for n in names if not n.startswith(_SAFE_IMPORT_PREFIXES)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unwrap(obj: object, param_key: str | None, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Find the state dict: a plain one, or BasicSR's {'params', 'params_ema'} (params_ema first unless asked)."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict", hint="save model.state_dict()")
    wrapped = [key for key in ("params_ema", "params", "state_dict", "model") if isinstance(obj.get(key), dict)]
    if param_key is not None:
        if param_key not in obj or not isinstance(obj[param_key], dict):
            raise WeightsError(f"{path} has no {param_key!r} entry", hint=f"its top-level keys are {sorted(obj)[:8]}")
        return obj[param_key], f"basicsr:{param_key}"
    if wrapped:
        return obj[wrapped[0]], f"basicsr:{wrapped[0]}"
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} is a dict but not a state_dict of tensors", hint="pass --param-key to pick the entry")
    return obj, "state_dict"


def infer_config(state_dict: dict[str, torch.Tensor], scale: int | None = None) -> ModelConfig:
    """Read a DVMSR-layout config off tensor shapes (orders and block residual cannot be seen: raster, none)."""
    try:
        embed_dim, in_channels = state_dict["conv_first.weight"].shape[:2]
        groups = 1 + max(int(m.group(1)) for m in map(GROUP_KEY.match, state_dict) if m)
        blocks = 1 + max(int(m.group(2)) for m in map(BLOCK_KEY.match, state_dict) if m and m.group(1) == "0")
        prefix = block_prefix(0, 0) + MIXER
        d_inner, d_state = state_dict[prefix + "A_log"].shape
        d_conv = state_dict[prefix + "conv1d.weight"].shape[-1]
        dt_rank = state_dict[prefix + "dt_proj.weight"].shape[1]
        up_channels = state_dict["upsample.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as exc:
        raise ArchitectureMismatchError(
            f"these weights are not a DVMSR-layout network (missing {exc})",
            hint=f"first keys: {sorted(state_dict)[:5]}; pass --preset only for mambaesr-edge/DVMSR weights",
        ) from exc
    inferred_scale = round((up_channels / in_channels) ** 0.5)
    return ModelConfig(
        scale=scale or inferred_scale,
        in_channels=int(in_channels),
        embed_dim=int(embed_dim),
        groups=groups,
        blocks_per_group=blocks,
        d_state=int(d_state),
        expand=int(d_inner) // int(embed_dim),
        d_conv=int(d_conv),
        dt_rank=int(dt_rank),
    )


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """Strict key and shape check; the error lists missing, unexpected and mis-shaped keys."""
    check_shapes(
        {k: tuple(v.shape) for k, v in state_dict.items()},
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
        name,
        hint="pick the preset the weights were trained with (--preset), or omit --preset to infer it",
    )


def check_tensor_values(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """Float parameters need float tensors (any float width is cast to float32) holding finite numbers."""
    expected = model.state_dict()
    check_values(
        name,
        not_float=[f"{k} ({v.dtype})" for k, v in state_dict.items() if expected[k].is_floating_point() and not v.is_floating_point()],
        not_finite=(k for k, v in state_dict.items() if not torch.isfinite(v).all()),
    )


def load_model(
    weights: str | Path | None = None,
    preset: str | None = None,
    *,
    scan_impl: str = "auto",
    param_key: str | None = None,
) -> tuple[MambaSR, LoadedWeights]:
    """Build a model and load weights into it (eval mode, CPU). Without `weights`, the shipped default model.

    The config comes from the file's metadata, else from `preset`, else is inferred from the shapes.
    """
    path = Path(weights) if weights is not None else default_weights_path()
    loaded = read_weights(path, param_key)
    if preset is not None:
        config = get_preset(preset)
        if loaded.config is not None and loaded.config != config:
            log.info("--preset %s overrides the config stored in %s", preset, path.name)
    else:
        config = loaded.config or infer_config(loaded.state_dict)
    model = MambaSR(config, scan_impl=scan_impl)
    check_state_dict(model, loaded.state_dict, path.name)
    check_tensor_values(model, loaded.state_dict, path.name)
    tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in loaded.state_dict.items()}
    model.load_state_dict(tensors, strict=True)
    return model.eval(), loaded


def save_weights(model: MambaSR, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write our format: safetensors + config metadata, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    metadata = {CONFIG_KEY: model.config.to_json(), FORMAT_KEY: FORMAT, **(extra_metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
