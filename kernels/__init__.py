"""The Triton kernels and their launchers (no autograd here), shipped as ``dlkern.kernels``:
``launchers.py`` indexes every launcher (same names and signatures as the CUDA twins in
``dlkern._C``); ``interpret.py`` records whether Triton's interpreter was on when they were defined.

Python that runs from a checkout's root (``python -m pytest``, ``python -m dlkern``) has the root
first on ``sys.path``, where this folder would shadow any installed package called ``kernels`` (the
Hub's, which current transformers imports). Imported under that top-level name, this file therefore
hands over: it loads the installed ``kernels`` in its own place, or fails as the import would have
failed without the checkout. Only ``dlkern.kernels`` is ours.
"""
if __name__ != "dlkern.kernels":
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.realpath(__file__)))
    _path = [p for p in _sys.path if _os.path.realpath(p or _os.curdir) != _root]
    _spec = _machinery.PathFinder.find_spec(__name__, _path)
    if _spec is None or (_spec.origin and _os.path.realpath(_spec.origin) == _os.path.realpath(__file__)):
        raise ModuleNotFoundError(f"No module named {__name__!r} (the checkout's kernels/ folder is "
                                  "dlkern.kernels, not a top-level package)", name=__name__)
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module  # the import statement returns what sys.modules holds now
    _spec.loader.exec_module(_module)
