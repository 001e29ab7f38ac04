"""The checkout's ``kernels/`` folder is ``dlkern.kernels``; run from the checkout's root, where
Python puts the root first on ``sys.path``, ``import kernels`` must still give an installed
third-party package of that name (the Hub's, which transformers imports), never the folder."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _stand_in(tmp_path) -> Path:
    pkg = tmp_path / "site" / "kernels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("WHO = 'third-party'\n")
    (pkg / "layers.py").write_text("WHAT = 'a submodule of the third-party package'\n")
    return tmp_path / "site"


def _run(args, env_path=None, cwd=REPO):
    env = {"PATH": "/usr/bin:/bin"}
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_root_import_gets_the_installed_package(tmp_path):
    site = _stand_in(tmp_path)
    code = ("import kernels, kernels.layers; "
            "print(kernels.WHO, kernels.__file__, kernels.layers.WHAT, sep='|')")
    proc = _run(["-c", code], site)   # -c: the current directory (the root) is sys.path[0]
    assert proc.returncode == 0, proc.stderr
    who, file, what = proc.stdout.strip().split("|")
    assert who == "third-party"
    assert Path(file).resolve().is_relative_to(site.resolve())
    assert what.startswith("a submodule")


def test_python_dash_m_from_the_root_gets_the_installed_package(tmp_path):
    site = _stand_in(tmp_path)
    (tmp_path / "probe.py").write_text("import kernels\nprint(kernels.WHO)\n")
    proc = _run(["-m", "probe"], f"{site}:{tmp_path}")   # python -m: the root first, as pytest -m
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "third-party"


def test_without_a_third_party_package_the_folder_is_not_importable_as_kernels(tmp_path):
    # -S: no site-packages, so no installed `kernels`; the checkout must not pose as one
    proc = _run(["-S", "-c", "import kernels"])
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr and "dlkern.kernels" in proc.stderr


def test_dlkern_kernels_is_still_the_checkouts_folder():
    import dlkern.kernels
    assert Path(dlkern.kernels.__file__).resolve().parent == REPO / "kernels"
