"""Embedding-Based Matching (EBM) backend plugin for Annif.

Installing the package registers the ``ebm`` backend type with Annif (see
:mod:`annif_ebm._startup`); :func:`register` does the same explicitly.
This module stays tiny: it is imported at every Python start-up.
"""

__version__ = "0.1.0"

BACKEND_NAME = "ebm"


def _ebm_backend():
    from annif_ebm.backend import EbmBackend

    return EbmBackend


def register(registry_module=None) -> None:
    """Make ``backend=ebm`` known to ``annif.backend.get_backend``.

    ``registry_module`` is ``annif.backend`` itself; the start-up hook passes
    it while that module is still being imported."""
    if registry_module is None:
        import annif.backend as registry_module

    registry_module._backend_fns.setdefault(BACKEND_NAME, _ebm_backend)
