"""Registration with transformers' Auto classes, done lazily so that ``import aligngpt`` imports neither torch nor
transformers (``aligngpt --help`` stays fast).

* ``AutoConfig``: :mod:`aligngpt.config` registers :class:`~aligngpt.config.AlignGPTConfig` when it is imported.
  :func:`install` (run by ``import aligngpt``) imports it as soon as transformers' ``configuration_auto`` exists: at
  once if transformers already loaded it, else right after transformers first does.
* ``AutoModel`` / ``AutoModelForImageTextToText``: :mod:`aligngpt.modeling` registers the model class when imported.
  Each Auto-model lookup of our model type starts from an ``AlignGPTConfig`` instance, so the config's first instance
  calls :func:`ensure_model_classes_registered`. Importing the model code from the import hook instead would be
  unsafe: transformers first imports its Auto modules while ``modeling_utils`` and ``modeling_layers`` are still
  half-initialised, and our model code needs both.
* ``AutoProcessor``: :mod:`aligngpt.processing.processor` registers :class:`~aligngpt.processing.AlignGPTProcessor`
  when imported. ``AutoProcessor.from_pretrained`` looks the class up by the name ``processor_config.json`` stores,
  before it reads any config, so :func:`install` imports the processor module right after transformers' own
  ``processing_auto`` (which transformers imports only once ``modeling_utils`` is complete).

This module imports only the standard library, and not ``importlib.abc`` / ``importlib.util`` (they pull in
``pathlib`` and ``contextlib``): the finder and loader below follow the import protocols without subclassing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

CONFIG_MODULE = "aligngpt.config"
MODELING_MODULE = "aligngpt.modeling"
PROCESSOR_MODULE = "aligngpt.processing.processor"
_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_PROCESSING_AUTO = "transformers.models.auto.processing_auto"


class _RunAfterLoader:
    """Wraps a module's loader: executes the module, then ``callback``; everything else goes to the wrapped loader."""

    def __init__(self, loader, callback: Callable[[], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _AfterImportHook:
    """Meta-path finder that runs ``callback`` once, right after the module ``name`` is first executed."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding this finder again
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RunAfterLoader(spec.loader, self.callback)
                return spec
        return None


def _import_config() -> None:
    importlib.import_module(CONFIG_MODULE)


def _import_processor() -> None:
    importlib.import_module(PROCESSOR_MODULE)


def _run_after_import(name: str, callback: Callable[[], None]) -> None:
    """``callback`` now if module ``name`` is loaded, else right after it first is (one hook per module)."""
    if name in sys.modules:
        callback()
    elif not any(isinstance(finder, _AfterImportHook) and finder.name == name for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportHook(name, callback))


def install() -> None:
    """Register ``AlignGPTConfig`` with ``AutoConfig`` and ``AlignGPTProcessor`` with ``AutoProcessor``: now if
    transformers' Auto modules are loaded, else once they are. Idempotent."""
    _run_after_import(_CONFIG_AUTO, _import_config)
    _run_after_import(_PROCESSING_AUTO, _import_processor)


def ensure_model_classes_registered() -> None:
    """Import :mod:`aligngpt.modeling` (which registers the model classes) unless it is imported or importing."""
    if MODELING_MODULE not in sys.modules:
        importlib.import_module(MODELING_MODULE)


__all__ = ["ensure_model_classes_registered", "install"]
