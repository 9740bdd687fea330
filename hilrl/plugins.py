"""One way to extend hilrl: registries of named parts, filled by hilrl, by plugins and by your own files.

Every door that takes a new kind of part has one :class:`Registry`: algorithms
(:data:`hilrl.policies.registry.ALGORITHMS`), reward sources (:data:`hilrl.feedback.rewards.REWARD_SOURCES`),
interventionists (:data:`hilrl.feedback.interventions.INTERVENTIONISTS`) and teleop devices
(:data:`hilrl.feedback.teleop.base.TELEOP_DEVICES`). A part registers under a name with a decorator next to
its class, and the config validates that name against the registry (an unknown one is refused with the
registered names listed and the nearest one suggested)::

    from hilrl.feedback.teleop import TeleopDevice, register_device

    @register_device("my_pedal")
    class PedalDevice(TeleopDevice): ...

hilrl's own parts whose code needs heavy packages register by import path (``"hilrl.policies.sac:SAC"``):
the name and its settings are known at once, the module is imported when a run first builds one, so
validating a config imports no torch. :func:`import_object` is the one ``module:attr`` importer.

Where the registering code comes from, three ways:

1. **hilrl itself.** A registry is complete once its package is imported (the package imports the modules
   that register its built-ins).
2. **Installed plugins** (``pip install my-hilrl-device``): a distribution declares entry points in the group
   ``hilrl.plugins``, each naming a module that registers its parts when imported::

       [project.entry-points."hilrl.plugins"]
       my_device = "my_hilrl_device.plugin"

   They are imported once, lazily, before the first lookup or listing of any registry
   (:func:`load_plugins`); a plugin that fails to import is one :class:`PluginError` naming the plugin and its
   distribution, raised at every lookup until it is fixed or uninstalled (a half-loaded set of parts
   would make names vanish without a word).
3. **Your own file, unpackaged.** An experiment YAML may name modules to import before it is validated, in a
   top-level ``plugins:`` list: a dotted module name on ``PYTHONPATH``, or a path to a ``.py`` file
   (relative paths, like every path in a config, are relative to the current directory)::

       plugins: [my_pedal.py]
       intervention: {source: device, device: my_pedal}

   We chose to allow this because a lab's own device or reward should not need a package and an install
   to be tried once; the list is part of the config, so the run folder's ``config.yaml`` records it and the
   actor processes of a distributed run import the same files (:func:`import_plugins`).

This module imports only the standard library and :mod:`hilrl.errors`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from hilrl.errors import HilrlError

ENTRY_POINT_GROUP = "hilrl.plugins"

__all__ = ["ENTRY_POINT_GROUP", "Entry", "PluginError", "Registry", "import_object", "import_plugins",
           "load_plugins"]


class PluginError(HilrlError):
    """A plugin, or a part registered by import path, that cannot be imported."""


# ---------------------------------------------------------------------------- the one module:attr importer
def import_object(path: str, what: str, hint: str = "give an importable 'module:attr' (on PYTHONPATH), or "
                  "install the extra it needs") -> Any:
    """The object ``path`` (``"package.module:attr"``, the attribute may be dotted) names.

    :param path: ``module:attr``.
    :param what: what it is, for the error (``"reward source 'x'"``).
    :param hint: how to fix it, for the error.
    :raises PluginError: the module or the attribute is missing (one line naming ``what``, ``path`` and ``hint``).
    """
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise PluginError(f"{what} {path!r} is no import path; write it as 'module:attr'")
    try:
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"{what} {path!r} cannot be imported ({exc}); {hint}") from None
    return target


# ---------------------------------------------------------------------------- plugins: entry points and files
_lock = threading.RLock()
_entry_points_loaded = False
_entry_point_failure: PluginError | None = None
_origin: str | None = None  # the plugin being imported, recorded on what it registers


@contextmanager
def _registering_for(origin: str) -> Iterator[None]:
    global _origin
    previous, _origin = _origin, origin
    try:
        yield
    finally:
        _origin = previous


def load_plugins() -> None:
    """Import every module named in the ``hilrl.plugins`` entry-point group, once (every lookup calls this).

    :raises PluginError: a plugin failed to import: names the plugin, its module and its distribution;
        raised again at every later call, until the plugin is fixed or uninstalled.
    """
    global _entry_points_loaded, _entry_point_failure
    with _lock:
        if _entry_points_loaded:
            if _entry_point_failure is not None:
                raise _entry_point_failure
            return
        _entry_points_loaded = True  # first: a plugin that looks a name up while importing does not recurse
        for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = entry_point.dist.name if entry_point.dist is not None else "an unknown distribution"
            try:
                with _registering_for(f"plugin {entry_point.name!r} of {dist}"):
                    entry_point.load()
            except Exception as exc:
                _entry_point_failure = PluginError(
                    f"hilrl plugin {entry_point.name!r} (module {entry_point.value!r} of the distribution {dist!r}, "
                    f"entry-point group {ENTRY_POINT_GROUP!r}) fails to import: {type(exc).__name__}: {exc}; fix it "
                    f"or uninstall it (pip uninstall {dist})")
                raise _entry_point_failure from exc


def import_plugins(names: Iterable[str], what: str = "plugins") -> list[ModuleType]:
    """Import the modules a config's ``plugins:`` list names (each once): dotted module names, or ``.py`` files.

    :param names: ``my_package.parts`` (on ``PYTHONPATH``) or ``path/to/file.py`` (relative to the current
        directory); a file is imported as a module named after its stem.
    :param what: where the list was written, for errors.
    :raises PluginError: one that cannot be found or fails to import (named, with the exception).
    """
    modules = []
    for name in names:
        with _lock, _registering_for(f"{what} entry {name!r}"):
            modules.append(_import_file(name, what) if name.endswith(".py") else _import_module(name, what))
    return modules


def _import_module(name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and not name.startswith(exc.name) and not exc.name.startswith(name):
            raise PluginError(f"{what}: {name!r} fails to import: {exc}") from exc  # a package it needs is missing
        raise PluginError(f"{what}: module {name!r} not found; put its folder on PYTHONPATH, or give the path of "
                          f"its file (ending in .py)") from None
    except Exception as exc:
        raise PluginError(f"{what}: {name!r} fails to import: {type(exc).__name__}: {exc}") from exc


def _import_file(name: str, what: str) -> ModuleType:
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise PluginError(f"{what}: file {name!r} not found (looked at {path}); relative paths are relative to the "
                          f"current directory")
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise PluginError(f"{what}: {name!r} would be imported as module {module_name!r}, but another module of "
                          f"that name is loaded ({getattr(loaded, '__file__', 'built in')}); rename the file")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{what}: {name!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before running it, as an import does (dataclasses and pickle look it up)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(f"{what}: {name!r} fails to import: {type(exc).__name__}: {exc}") from exc
    return module


# ---------------------------------------------------------------------------- registries
class Entry:
    """One registered part.

    Attributes:
        name: its name in configs.
        target: the object (a class, a factory), or ``"module:attr"`` imported by :meth:`load` on first use.
        config: the class of its settings, if it has some (an algorithm's config dataclass).
        meta: what else the registration said (an algorithm's loop, a device being a person's).
        origin: who registered it (``None``: hilrl itself or a module imported in code; else the plugin).
    """

    def __init__(self, registry: Registry, name: str, target: Any, config: type | None, meta: Mapping[str, Any],
                 origin: str | None) -> None:
        self.registry, self.name, self.target, self.config = registry, name, target, config
        self.meta, self.origin = dict(meta), origin
        self._loaded: Any = None if isinstance(target, str) else target

    @property
    def lazy(self) -> bool:
        """Registered by import path and not imported yet."""
        return self._loaded is None

    def load(self) -> Any:
        """The registered object (imported now if it was registered by path)."""
        if self._loaded is None:
            registry = self.registry
            where = f" (registered by {self.origin})" if self.origin else ""
            try:
                self._loaded = import_object(self.target, f"{registry.kind} {self.name!r}{where}", registry.load_hint)
            except PluginError as exc:
                raise registry.error(str(exc)) from None
        return self._loaded

    def __getitem__(self, key: str) -> Any:
        """``entry["loop"]``: a registration keyword, or the registry's default for it."""
        return self.meta[key] if key in self.meta else self.registry.defaults[key]

    def __repr__(self) -> str:
        return f"Entry({self.registry.kind!r}, {self.name!r}, {self.target!r})"


class Registry:
    """Names of one kind of part -> :class:`Entry`; see the module docstring.

    :param kind: what its parts are, in errors (``"teleop device"``).
    :param error: the exception class of its errors (a :class:`~hilrl.errors.HilrlError`).
    :param load_hint: how to fix a part registered by path that cannot be imported.
    :param defaults: values of registration keywords a registration left out (so ``names(human=True)`` lists
        the parts that did not say otherwise).
    """

    def __init__(self, kind: str, *, error: type[HilrlError] = HilrlError,
                 load_hint: str = "install what it needs (pip install the package or extra that provides it)",
                 defaults: Mapping[str, Any] | None = None) -> None:
        self.kind, self.error, self.load_hint = kind, error, load_hint
        self.defaults = dict(defaults or {})
        self._entries: dict[str, Entry] = {}
        self._listeners: list[Callable[[], None]] = []

    def register(self, name: str, target: Any = None, config_cls: type | None = None, **meta: Any) -> Any:
        """Register ``target`` under ``name``; without ``target``, a decorator that registers what it decorates.

        :param name: the name configs use; no ``:`` (that marks import paths). Registering it again replaces it.
        :param target: the object, or ``"module:attr"`` imported on first use (keeps heavy imports out of
            config validation).
        :param config_cls: the class of its settings, if any.
        :param meta: anything the registry's users read (:meth:`Entry.__getitem__`).
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise self.error(f"a {self.kind} needs a name without ':' (that marks import paths), got {name!r}")

        def add(obj: Any) -> Any:
            self._entries[name] = Entry(self, name, obj, config_cls, meta, _origin)
            for listener in self._listeners:
                listener()
            return obj

        return add(target) if target is not None else add

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every registration (e.g. to drop a cache derived from the entries)."""
        self._listeners.append(listener)

    def _matching(self, where: Mapping[str, Any]) -> dict[str, Entry]:
        load_plugins()
        return {name: entry for name, entry in self._entries.items()
                if all(entry[key] == value for key, value in where.items())}

    def names(self, **where: Any) -> list[str]:
        """Registered names, in the order they were registered; ``where`` keeps those whose registration
        keywords equal the given values (``names(human=True)``)."""
        return list(self._matching(where))

    def entries(self, **where: Any) -> list[Entry]:
        """Registered entries (as :meth:`names`)."""
        return list(self._matching(where).values())

    def __contains__(self, name: object) -> bool:
        return name in self._matching({})

    def unknown(self, name: str, also: Iterable[str] = (), **where: Any) -> str:
        """The sentence for an unknown ``name``: the registered names (after ``also``, names accepted besides
        them, such as ``none``) and the nearest one."""
        known = [*also, *self.names(**where)]
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(known) or 'none registered'}"

    def entry(self, name: str, **where: Any) -> Entry:
        """The entry of ``name`` (among those matching ``where``).

        :raises HilrlError: (the registry's ``error`` class) an unknown name: lists the registered ones.
        """
        entry = self._matching(where).get(name)
        if entry is None:
            raise self.error(self.unknown(name, **where))
        return entry

    def get(self, name: str, **where: Any) -> Any:
        """The object registered as ``name``, imported if it was registered by path (as :meth:`entry`)."""
        return self.entry(name, **where).load()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
