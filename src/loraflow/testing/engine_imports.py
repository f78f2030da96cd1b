"""Import an engine's own modules (its argparse, its config classes) on a CPU test machine without its GPU
stack: the packages named are stubs whose every attribute is a harmless class, so module-level code that
only builds classes and parsers runs, and the code under test (argparse, voluptuous schemas, dataclasses)
is the engine's own. Used by tests/engines/test_engine_code.py in a subprocess."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return stub_class(name)

    def __or__(cls, other):
        return cls

    __ror__ = __or__

    def __getitem__(cls, item):
        return cls

    def __iter__(cls):
        return iter(())


class _Base(metaclass=_Meta):
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return stub_class(name)

    def __iter__(self):
        return iter(())

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Base()


def stub_class(name):
    return _Meta(name, (_Base,), {})


class _Stub(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return stub_class(name)


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname.split(".")[0] in self.roots else None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def install(missing):
    sys.meta_path.insert(0, StubFinder(set(missing)))


class EasyDict(dict):
    """easydict's one class, which musubi's Wan configs build at import time."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


_SPECIAL = {"easydict": {"EasyDict": EasyDict}}
_orig_create = StubFinder.create_module


def _create(self, spec):
    module = _orig_create(self, spec)
    for key, value in _SPECIAL.get(spec.name, {}).items():
        setattr(module, key, value)
    return module


StubFinder.create_module = _create
