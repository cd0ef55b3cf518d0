"""segdemo as an installed package: a wheel built from this checkout, installed into a fresh venv, run from a
folder outside the source tree (`segdemo --version`, `check`, `app` + one predict through gradio_client);
and the app's default address (127.0.0.1, 0.0.0.0 only on a Hugging Face Space).

The fresh venv has no pip and no packages of its own: a .pth file adds this venv's site-packages *after* its
own, so the wheel's segdemo wins and torch, gradio & co. need no 5 GB download. Building needs hatchling
(requirements-dev.txt), without build isolation so nothing is fetched.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segdemo
from tests.conftest import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_IN_WHEEL = "segdemo/assets/checkpoints/shapes_unet.safetensors"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling", reason="the build backend; pip install -r requirements-dev.txt")
    out = tmp_path_factory.mktemp("wheel")
    r = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, ROOT])
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("segdemo-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed, and the environment and working folder to run it in."""
    base = tmp_path_factory.mktemp("installed")
    env_dir = base / "venv"
    r = run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    assert r.returncode == 0, r.stderr
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    ours = sysconfig.get_path("purelib")
    (site / "zz_project_venv.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    r = run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    assert r.returncode == 0, r.stderr
    cwd = base / "elsewhere"  # no app.py, no checkpoints/, no examples/ here
    cwd.mkdir()
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }  # no PYTHONPATH, GRADIO_SERVER_NAME or SPACE_ID
    return dict(python=python, segdemo=env_dir / "bin" / "segdemo", site=site, cwd=cwd, env=env)


def in_venv(venv, *args, **kw) -> subprocess.CompletedProcess:
    return run(args, cwd=venv["cwd"], env=venv["env"], **kw)


# -- the wheel and its metadata -------------------------------------------------------------------------


def test_wheel_holds_the_package_and_its_assets_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert CHECKPOINT_IN_WHEEL in names
    examples = sorted(p.name for p in (ROOT / "examples").glob("*.png"))
    assert len(examples) == 4
    for name in examples:
        assert f"segdemo/assets/examples/{name}" in names and f"segdemo/assets/examples/masks/{name}" in names
    assert "segdemo/data/camvid_classes.json" in names and "segdemo/ui/predict_tab.py" in names
    dist_info = f"segdemo-{segdemo.__version__}.dist-info"
    assert {n.split("/")[0] for n in names} == {"segdemo", dist_info}  # no tests/, bench/, docs/, app.py
    assert not [n for n in names if n.endswith(".pyc") or "make_examples" in n]
    with zipfile.ZipFile(wheel) as z:
        assert "segdemo = segdemo.cli:main" in z.read(f"{dist_info}/entry_points.txt").decode()
        assert "MIT License" in z.read(f"{dist_info}/licenses/LICENSE").decode()
        assert f"Version: {segdemo.__version__}\n" in z.read(f"{dist_info}/METADATA").decode()


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return sorted(line for line in lines if line and not line.startswith("-r"))


def test_pyproject_dependencies_mirror_the_requirements_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == _requirement_lines(ROOT / "requirements.txt")
    assert sorted(project["optional-dependencies"]["dev"]) == _requirement_lines(ROOT / "requirements-dev.txt")
    assert "torch===2.13.0" in project["dependencies"]  # not ==: that admits a local +cpu torch (see pyproject)


# -- the installed package, outside the source tree --------------------------------------------------------


def test_installed_segdemo_and_its_assets_come_from_the_wheel(venv):
    code = (
        "import segdemo; from segdemo.assets import asset; print(segdemo.__file__); "
        "print(asset('checkpoints/shapes_unet.safetensors')); print(asset('examples'))"
    )
    r = in_venv(venv, venv["python"], "-c", code)
    assert r.returncode == 0, r.stderr
    module, checkpoint, examples = map(Path, r.stdout.split())
    for p in (module, checkpoint, examples):
        assert p.is_relative_to(venv["site"]) and not p.is_relative_to(ROOT), p
        assert p.exists(), p
    assert checkpoint.read_bytes() == (ROOT / "checkpoints" / "shapes_unet.safetensors").read_bytes()


def test_version(venv):
    r = in_venv(venv, venv["segdemo"], "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"segdemo {segdemo.__version__}"


def test_check_a_dataset(venv):
    data = venv["cwd"] / "tiny-data"
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((24, 32), np.uint8)
        mask[4 : 12 + i, 6:20] = 1
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(data / "images" / f"p{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"p{i}.png")
    r = in_venv(venv, venv["segdemo"], "check", "tiny-data", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"ok": true' in r.stdout and "Traceback" not in r.stderr


def _listening(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on `port` (IPv4, from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
            found.append(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
    return found


def test_app_serves_and_predicts_with_the_shipped_model(venv):
    from gradio_client import Client, handle_file

    port = free_port()
    log = venv["cwd"] / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(venv["segdemo"]), "app", "--port", str(port)],
            cwd=venv["cwd"],
            env=venv["env"] | {"PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, proc, log)
        if Path("/proc/net/tcp").exists():
            assert _listening(port) == ["127.0.0.1"]  # this machine only, not 0.0.0.0
        assert "warning" not in log.read_text().lower()
        c = Client(url, verbose=False, ssl_verify=False)
        token = c.predict(None, api_name="/session")
        example = ROOT / "examples" / "shapes_1.png"  # the shipped model scores 0.95 mIoU on it
        out = c.predict(
            token,
            "default",
            None,
            [handle_file(example)],
            [handle_file(example.parent / "masks" / example.name)],
            None,
            0.5,
            False,
            api_name="/predict",
        )
        details = out[9]
        assert [p["name"] for p in details["per_class"]] == ["background", "circle", "square", "triangle"]
        assert details["ground_truth"] and details["miou"] > 0.9, details  # the shipped model, from package data
        assert details["checkpoint_val_miou"] > 0.9
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- where the app listens -----------------------------------------------------------------------------


class FakeDemo:
    def launch(self, **opts):
        self.opts = opts


@pytest.fixture
def launch_opts(monkeypatch):
    """The options segdemo.ui.launch() hands to demo.launch, for an environment and keyword arguments."""
    from segdemo import ui

    monkeypatch.setattr("segdemo.training.trainer.warm_up", lambda: None)

    def opts(env: dict[str, str], **kw) -> dict:
        for name in ("GRADIO_SERVER_NAME", "SPACE_ID", "SYSTEM", "PORT", "GRADIO_SERVER_PORT"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        demo = FakeDemo()
        ui.launch(demo, **kw)
        return demo.opts

    return opts


def test_default_bind_is_this_machine_only(launch_opts, capsys):
    opts = launch_opts({})
    assert opts["server_name"] == "127.0.0.1" and opts["server_port"] == 7860
    assert opts["max_file_size"] == "50mb" and not opts["show_error"] and not opts["enable_monitoring"]
    assert "warning" not in capsys.readouterr().err


def test_a_space_binds_everywhere_without_a_warning(launch_opts, capsys):
    assert launch_opts({"SPACE_ID": "someone/segdemo", "SYSTEM": "spaces"})["server_name"] == "0.0.0.0"
    assert launch_opts({"SYSTEM": "spaces"})["server_name"] == "0.0.0.0"
    assert "warning" not in capsys.readouterr().err


def test_gradio_server_name_and_host_override_with_a_warning(launch_opts, capsys):
    opts = launch_opts({"GRADIO_SERVER_NAME": "0.0.0.0", "PORT": "8123"})
    assert (opts["server_name"], opts["server_port"]) == ("0.0.0.0", 8123)
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    assert launch_opts({"SPACE_ID": "someone/segdemo"}, server_name="127.0.0.1")["server_name"] == "127.0.0.1"
    assert launch_opts({}, server_name="localhost")["server_name"] == "localhost"
    assert "warning" not in capsys.readouterr().err
    assert launch_opts({}, share=True)["share"] is True
    assert "public gradio.live link" in capsys.readouterr().err


def test_segdemo_app_passes_host_port_and_share(monkeypatch):
    from segdemo import cli, ui

    seen = {}
    monkeypatch.setattr(ui, "build_demo", lambda: "demo")
    monkeypatch.setattr(ui, "launch", lambda demo, **kw: seen.update(demo=demo, **kw))
    assert cli.main(["app"]) == 0 and seen == {"demo": "demo"}  # launch()'s own defaults
    seen.clear()
    assert cli.main(["app", "--host", "0.0.0.0", "--port", "9000", "--share"]) == 0
    assert seen == {"demo": "demo", "server_name": "0.0.0.0", "server_port": 9000, "share": True}


def test_python_app_py_leaves_the_address_to_launch():
    calls = [n for n in ast.walk(ast.parse((ROOT / "app.py").read_text())) if isinstance(n, ast.Call)]
    (launch,) = [c for c in calls if getattr(c.func, "id", None) == "launch"]
    assert [a.id for a in launch.args] == ["demo"] and not launch.keywords  # so python app.py binds 127.0.0.1


def test_run_from_a_checkout_finds_the_assets_in_the_source_tree():
    from segdemo.assets import asset

    assert asset("checkpoints/shapes_unet.safetensors") == ROOT / "checkpoints" / "shapes_unet.safetensors"
    assert asset("examples") == ROOT / "examples"
    assert asset("checkpoints/shapes_unet.safetensors").is_file()
