"""Start-up hook run from ``annif_ebm_startup.pth``.

Annif 1.4 reads its backend types from a fixed dict in ``annif.backend``.
This hook waits until that module is imported by anyone, then adds ``ebm``
to it. Programs that never import Annif pay only for importing this module.
"""

from __future__ import annotations

import importlib.machinery
import sys

_TARGET = "annif.backend"


class _RegisteringLoader:
    """Wraps the real loader of ``annif.backend`` and registers afterwards."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        from annif_ebm import register

        register(module)

    def __getattr__(self, name):  # resource readers etc.
        return getattr(self._loader, name)


class _AnnifBackendFinder:
    """Finds ``annif.backend`` through the other finders, wrapping its loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also avoids recursion
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Register now if Annif's backend registry is loaded, else on its import."""
    if _TARGET in sys.modules:
        from annif_ebm import register

        register()
    elif not any(isinstance(f, _AnnifBackendFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AnnifBackendFinder())
