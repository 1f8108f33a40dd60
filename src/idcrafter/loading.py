"""Loading saved pipelines: local folders only, strictly, with one-line errors.

`IDCrafterPipeline.from_pretrained` calls `load_pipeline`, which departs from diffusers'
`DiffusionPipeline.from_pretrained` on purpose:

- **local only**: the argument must be an existing folder with `model_index.json`; a hub name
  such as `"org/name"` is refused before diffusers sees it, and `local_files_only=True` is
  forced, so nothing is ever downloaded (diffusers would call `snapshot_download`);
- **safetensors only**: `use_safetensors=True`; a component holding only pickled weights
  (`.bin`, `.pt`, `.ckpt`) is refused (nothing is unpickled);
- **checked before building**: `model_index.json` and every component's `config.json` must
  parse, name only known libraries (diffusers, transformers, idcrafter), and give values of
  the types the component's constructor declares (`"num_layers": "two"` is refused, not
  turned into a traceback deep inside the model);
- **strict weights**: after loading, the tensors in each component's safetensors files must
  be exactly the component's parameters and buffers (weights shared by tying excepted).
  diffusers only warns about unexpected keys, so a config with fewer layers than its weights
  would silently generate with half the model;
- every other failure while loading (a corrupt safetensors header, a truncated file) becomes a
  `CorruptFileError` naming the folder.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import numbers
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from idcrafter.errors import CorruptFileError, InputError
from idcrafter.validation import check_pipeline_folder

KNOWN_LIBRARIES = ("diffusers", "transformers", "idcrafter")
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CorruptFileError(f"{what}: {path} is missing; the folder is incomplete, re-export it") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{what}: {path} is not valid JSON ({exc}); the folder is corrupt, re-export it") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"{what}: {path} must hold a JSON object")
    return data


def _type_matches(default: Any, value: Any) -> bool:
    """Whether `value` can stand for a constructor argument whose default is `default`."""
    if default is None or default is inspect.Parameter.empty or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, numbers.Integral):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and (not default or not value or
                                                      all(_type_matches(default[0], v) for v in value))
    return True


def check_init_kwargs(cls: type, config: dict[str, Any], where: str) -> None:
    """Refuse config values whose type differs from the constructor default's (int for an int,
    a finite number for a float, ...) and negative integers (no size or count is negative)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    for key, value in config.items():
        if key.startswith("_") or key not in params:
            continue
        default = params[key].default
        if not _type_matches(default, value):
            raise CorruptFileError(f"{where}: {key!r} is {value!r}, expected a value like {default!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, int) \
                and value < 0 and default >= 0:
            raise CorruptFileError(f"{where}: {key!r} is {value}, it cannot be negative")


def _component_class(entry: Any, name: str, where: Path) -> type | None:
    """The class a model_index.json entry [library, class] names (None for an absent component)."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
        return None
    lib, cls_name = entry
    if lib is None and cls_name is None:
        return None
    if not isinstance(lib, str) or not isinstance(cls_name, str) or lib.split(".")[0] not in KNOWN_LIBRARIES:
        raise CorruptFileError(f"{where}: component {name!r} names {entry!r}; only {', '.join(KNOWN_LIBRARIES)} "
                               "classes are loaded")
    try:
        return getattr(importlib.import_module(lib), cls_name)
    except (ImportError, AttributeError) as exc:
        raise CorruptFileError(f"{where}: component {name!r} names an unknown class {lib}.{cls_name}") from exc


def check_folder_configs(folder: Path) -> dict[str, Any]:
    """Parse and type-check model_index.json and the components' config.json before building."""
    from idcrafter.pipeline import IDCrafterPipeline

    index_path = folder / "model_index.json"
    index = read_json_file(index_path, "pipeline")
    check_init_kwargs(IDCrafterPipeline, index, str(index_path))
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        cls = _component_class(entry, name, index_path)
        if cls is None:
            continue
        sub = folder / name
        if not sub.is_dir():
            raise CorruptFileError(f"{folder}: component {name!r} is listed in model_index.json but {sub} is missing")
        weights = [p for p in sub.iterdir() if p.suffix == ".safetensors"]
        if not weights and any(p.suffix in PICKLED for p in sub.iterdir()):
            raise CorruptFileError(f"{sub} holds pickled weights only; idcrafter loads safetensors only "
                                   "(re-save it with save_pretrained(..., safe_serialization=True))")
        if (sub / "config.json").is_file():
            config = read_json_file(sub / "config.json", f"component {name!r}")
            check_init_kwargs(cls, config, str(sub / "config.json"))
        _weight_keys(sub)  # every safetensors header must parse (diffusers' own error names no fix)
    return index


def _weight_keys(folder: Path) -> set[str] | None:
    """Tensor names of every safetensors file in `folder` (headers only), None if there are none."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys.update(fh.keys())
        except Exception as exc:  # noqa: BLE001 - any header failure is a corrupt file
            raise CorruptFileError(f"{f} is not a readable safetensors file ({exc.__class__.__name__}): "
                                   "the folder is corrupt, re-export it") from exc
    return keys


def check_strict(pipe: Any, folder: Path) -> None:
    """Each component's saved tensors must be exactly its parameters and buffers."""
    import torch

    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module) or not (folder / name).is_dir():
            continue
        if (folder / name).is_symlink():  # a linked frozen component (idcrafter.linking): a source folder,
            continue                      # checked by its fingerprint, loaded as it is (e.g. a VLM's lm_head)
        saved = _weight_keys(folder / name)
        if saved is None:
            continue
        state = module.state_dict()
        unexpected = sorted(saved - set(state))
        present = {state[k].data_ptr() for k in saved if k in state and state[k].numel()}
        missing = sorted(k for k in set(state) - saved if not state[k].numel() or state[k].data_ptr() not in present)
        if unexpected or missing:
            what = []
            if unexpected:
                what.append(f"{len(unexpected)} saved tensor(s) the config does not build (e.g. {unexpected[0]})")
            if missing:
                what.append(f"{len(missing)} weight(s) missing from the files (e.g. {missing[0]})")
            raise CorruptFileError(f"{folder / name}: the weights do not match its config.json: {'; '.join(what)}; "
                                   "the folder is corrupt or its config was edited, re-export it")


def check_pipeline_config(pipe: Any, folder: Path) -> None:
    """Values of a loaded pipeline's own config (default sizes, schedule shift) that make no sense."""
    c = pipe.config
    for key in ("default_height", "default_width", "default_frames", "reference_size", "max_sequence_length"):
        v = getattr(c, key, None)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CorruptFileError(f"{folder / 'model_index.json'}: {key} must be a positive integer, got {v!r}")
    shift = getattr(pipe.scheduler.config, "shift", 1.0) if getattr(pipe, "scheduler", None) is not None else 1.0
    if not isinstance(shift, numbers.Real) or not math.isfinite(float(shift)) or shift <= 0:
        raise CorruptFileError(f"{folder / 'scheduler'}: shift must be a positive number, got {shift!r}")


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No progress bars or routine warnings from diffusers / transformers while loading (a CLI
    error must stay one line; errors still raise)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = (dlog.get_verbosity(), tlog.get_verbosity())
    bars = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error(), tlog.set_verbosity_error()
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0]), tlog.set_verbosity(levels[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def load_pipeline(cls: type, path: Any, load: Callable[..., Any], **kwargs: Any) -> Any:
    """`cls.from_pretrained(path)` the idcrafter way (module docstring); `load` is diffusers'."""
    folder = check_pipeline_folder(path)
    check_folder_configs(folder)
    kwargs["local_files_only"] = True
    kwargs.setdefault("use_safetensors", True)
    try:
        with _quiet_loading():
            pipe = load(str(folder), **kwargs)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever fails inside diffusers, the folder is bad
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CorruptFileError(f"cannot load the pipeline in {folder} ({exc.__class__.__name__}: {msg}): "
                               "the folder is corrupt or incomplete, re-export it") from exc
    if not isinstance(pipe, cls):
        raise CorruptFileError(f"{folder} holds a {type(pipe).__name__}, not an {cls.__name__}")
    check_strict(pipe, folder)
    check_pipeline_config(pipe, folder)
    return pipe
