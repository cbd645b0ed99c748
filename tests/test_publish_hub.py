"""Publishing backbones and downloading them, with the real tools: a two-rank ZeRO-2 DeepSpeed
run exported by `python -m pretrain.publish`, folders served by `python -m http.server`,
`python -m finetune.hub`, plain timm in a process where auforge cannot be imported, and
huggingface_hub in offline mode."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.request import urlopen

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_pretrain_run import env, run

from finetune import hub
from finetune.backbone import load_backbone
from pretrain.distributed import free_port
from pretrain.publish import backbone_config, backbone_state, find_checkpoint, publish_backbone, publish_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARCH = "mobilenetv3_small_050"  # small (2.3 MB of weights) but with BatchNorm buffers, as ResNets have
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)
AUFORGE = {"objectives": {"temporal_margin": {"weight": 1.0, "margin": 0.5}}, "steps": 7, "samples_seen": 28,
           "data": {"kind": "synthetic", "name": "synthetic-faces", "split": "train", "manifest_digest": "ab" * 32},
           "evaluation": {"probe/linear_f1": 0.5, "random_init/linear_f1": 0.25}, "code_version": "test"}  # fmt: skip


# ---------------------------------------------------------------- helpers


def trained_like(seed: int) -> torch.nn.Module:
    """A timm backbone whose weights and BatchNorm statistics are all away from timm's init, so
    that a buffer lost on the way changes the features."""
    torch.manual_seed(seed)
    return moved_off_init(timm.create_model(ARCH, num_classes=0))


def moved_off_init(model: torch.nn.Module) -> torch.nn.Module:
    """`model`, every weight and BatchNorm statistic moved off its init (in place)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.randn_like(tensor))
                if "running_var" in name:
                    tensor.abs_()  # a variance stays positive
    return model.eval()


def publish(out: Path, name: str, model: torch.nn.Module, overwrite: bool = False, auforge: dict = AUFORGE) -> Path:
    encoder = SimpleNamespace(arch=ARCH, num_features=model.num_features, model_args={})
    config = backbone_config(encoder, 32, MEAN, STD, auforge)
    return publish_backbone(out, name, backbone_state(model), config, overwrite)


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def hub_cli(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune.hub", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(extra_env or {})})  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry_of(index: str, name: str) -> hub.Entry:
    entries, url = hub.read_index(index)
    return hub.find(entries, name, url)


def wait_until_served(url: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + 30
    while True:
        try:
            urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or (proc is not None and proc.poll() is not None):
                raise AssertionError(f"nothing answers at {url}") from None
            time.sleep(0.1)


@dataclass
class Site:
    root: Path  # the folder served
    url: str
    log: Path  # the server's request log

    def gets(self, path: str) -> int:
        return self.log.read_text().count(f'"GET {path} ')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`python -m http.server` on 127.0.0.1 (it ignores Range requests, as many servers do)."""
    root = tmp_path_factory.mktemp("site")
    log = root.parent / "http.log"
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                                 str(root)], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(url, proc)
        yield Site(root, url, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves byte ranges (`Range: bytes=N-`), records every request's Range header, and breaks
    off a response after `server.cut[path]` bytes once, as a dropped connection would."""

    def do_GET(self):  # noqa: N802 - http.server's name
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data, asked = path.read_bytes(), self.headers.get("Range")
        self.server.requests.append((self.path, asked))
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked else 0
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.server.cut.pop(self.path, None)
        self.wfile.write(data[start:] if cut is None else data[start:cut])
        self.close_connection = cut is not None

    def log_message(self, *args):
        pass


@pytest.fixture
def range_site(tmp_path):
    root = tmp_path / "range-site"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(root)))
    server.requests, server.cut = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- publishing from DeepSpeed


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> tuple[Path, Path]:
    """Two ranks of ZeRO stage 2 (optimizer state and gradients partitioned), 2 steps."""
    cache = tmp_path_factory.mktemp("cache")
    run_dir = tmp_path_factory.mktemp("zero2") / "run"
    run(run_dir, cache, steps=2, ranks=2, extra=["deepspeed=zero2"])
    return run_dir, cache


@pytest.mark.slow
def test_zero2_checkpoint_of_two_ranks_exports_the_live_weights(zero2_run, tmp_path):
    run_dir, cache = zero2_run
    checkpoint = run_dir / "checkpoints" / "step_000002"
    assert len(list(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # really partitioned
    live = run_dir / "published" / "auforge-pretrain"  # the end of training: rank 0's live module
    assert (live / "README.md").exists() and "auforge-pretrain" in (run_dir / "published" / "index.json").read_text()

    out = tmp_path / "pub"
    cli = [sys.executable, "-m", "pretrain.publish", str(run_dir), "--name", "exported", "--out", str(out)]
    proc = subprocess.run(cli, cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported, reference = load_file(str(out / "exported" / "model.safetensors")), load_file(str(live / "model.safetensors"))
    timm_keys = timm.create_model("resnet18", num_classes=0).state_dict()
    assert set(exported) == set(timm_keys) and any("running_var" in k for k in exported)
    for key, value in reference.items():
        assert value.dtype == timm_keys[key].dtype and torch.equal(exported[key], value), key
    assert not torch.equal(exported["conv1.weight"], timm_keys["conv1.weight"])

    config = json.loads((out / "exported" / "config.json").read_text())
    live_config = json.loads((live / "config.json").read_text())
    assert config["auforge"]["steps"] == 2 and config["auforge"]["samples_seen"] == 2 * 2 * 4
    assert config["auforge"]["checkpoint"] == "step_000002"
    for key in ("architecture", "num_classes", "num_features", "global_pool", "model_args", "pretrained_cfg"):
        assert config[key] == live_config[key], key
    assert config["auforge"]["data"] == live_config["auforge"]["data"]
    assert config["auforge"]["objectives"] == live_config["auforge"]["objectives"]
    index = json.loads((out / "index.json").read_text())
    [entry] = index["backbones"]
    assert entry["name"] == "exported" and entry["created"]
    for f in entry["files"]:
        path = out / "exported" / f["name"]
        assert f["sha256"] == sha256(path) and f["bytes"] == path.stat().st_size

    again = subprocess.run(cli, cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    again = subprocess.run([*cli, "--overwrite"], cwd=ROOT, env=env(cache), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [e["name"] for e in json.loads((out / "index.json").read_text())["backbones"]] == ["exported"]


@pytest.mark.slow
def test_zero0_checkpoint_exports_the_live_weights(tmp_path, monkeypatch):
    """Stage 0 keeps the whole module in its model-states file: the same export, another path. The
    checkpoint carries what the run derived from its data (run.json's provenance), so it publishes
    the same provenance with the data gone, and renders nothing."""
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    run(run_dir, cache, steps=2, ranks=1)
    assert not list((run_dir / "checkpoints" / "step_000002").glob("zero_pp_rank_*"))
    shutil.rmtree(cache)
    monkeypatch.setenv("AUFORGE_CACHE", str(cache))
    folder = publish_checkpoint(run_dir / "checkpoints" / "step_000002", "zero0", tmp_path / "pub")
    assert not cache.exists(), "publishing rendered the synthetic set again"
    exported = load_file(str(folder / "model.safetensors"))
    live = run_dir / "published" / "auforge-pretrain"
    reference = load_file(str(live / "model.safetensors"))
    assert set(exported) == set(reference) and all(torch.equal(exported[k], v) for k, v in reference.items())
    config, live_config = (json.loads((f / "config.json").read_text()) for f in (folder, live))
    assert config["auforge"]["data"] == live_config["auforge"]["data"] and config["auforge"]["data"]["manifest_digest"]
    assert config["pretrained_cfg"]["input_size"] == live_config["pretrained_cfg"]["input_size"]


def test_incomplete_checkpoints_are_refused(tmp_path):
    (tmp_path / "checkpoints" / "step_000004").mkdir(parents=True)
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        find_checkpoint(tmp_path / "checkpoints" / "step_000004")
    with pytest.raises(FileNotFoundError, match="complete.json"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "complete.json").write_text('["step_000004"]')
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_checkpoint(tmp_path)


# ---------------------------------------------------------------- serving and downloading


TIMM_ONLY = """
import sys
for name in ("pretrain", "finetune", "shards"):
    sys.modules[name] = None  # importing any part of auforge would fail here
import timm, torch
from safetensors.torch import load_file, save_file
model = timm.create_model(sys.argv[1], pretrained=True, num_classes=0,
                          pretrained_cfg_overlay=dict(file=sys.argv[2])).eval()
with torch.no_grad():
    save_file({"features": model(load_file(sys.argv[3])["x"])}, sys.argv[4])
"""


@pytest.mark.slow
def test_publish_serve_download_verify_and_load_in_plain_timm(site, tmp_path, monkeypatch):
    model = trained_like(seed=1)
    x = torch.randn(3, 3, 32, 32)
    before = features(model, x)
    publish(site.root / "a", "tiny", model)
    card = (site.root / "a" / "tiny" / "README.md").read_text()
    assert "| linear_f1 | 0.500 | 0.250 |" in card and f'timm.create_model("{ARCH}", pretrained=True' in card

    cache = tmp_path / "cache"
    proc = hub_cli("download", "tiny", "--index", f"{site.url}a/index.json", "--cache", str(cache))
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    assert folder.parent == cache / "backbones" and not list(cache.rglob("*.part"))
    for f in entry_of(f"{site.url}a/index.json", "tiny").files:
        assert sha256(folder / f.name) == f.sha256

    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    timm_only = subprocess.run([sys.executable, "-c", TIMM_ONLY, ARCH, str(folder / "model.safetensors"),
                                str(tmp_path / "x.safetensors"), str(tmp_path / "f.safetensors")],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert timm_only.returncode == 0, timm_only.stderr[-3000:]
    torch.testing.assert_close(load_file(str(tmp_path / "f.safetensors"))["features"], before)
    assert not torch.allclose(features(timm.create_model(ARCH, num_classes=0), x), before)

    # auforge's loader: the folder URL finds its index beside it, and the cache answers
    monkeypatch.setenv(hub.CACHE_ENV, str(cache))
    loaded = load_backbone(f"{site.url}a/tiny/")
    assert Path(loaded.source) == folder and loaded.input_size == 32 and loaded.mean == MEAN
    torch.testing.assert_close(features(loaded.model, x), before)
    assert site.gets("/a/tiny/model.safetensors") == 1  # downloaded once
    # a file:// folder and a name through $AUFORGE_HUB_INDEX (a local path) land in a fresh cache
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache2"))
    assert Path(load_backbone((site.root / "a" / "tiny").as_uri()).source).parent == tmp_path / "cache2" / "backbones"
    monkeypatch.setenv(hub.INDEX_ENV, str(site.root / "a"))
    torch.testing.assert_close(features(load_backbone("tiny").model, x), before)


def test_a_tampered_file_is_refused_and_deleted(site, tmp_path):
    publish(site.root / "b", "tiny", trained_like(seed=2))
    weights = site.root / "b" / "tiny" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight: still a valid safetensors file, not the published one
    weights.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    proc = hub_cli("download", "tiny", "--index", f"{site.url}b/index.json", "--cache", str(cache))
    assert proc.returncode == 1
    assert "sha256" in proc.stderr and "does not match" in proc.stderr and "deleted" in proc.stderr
    assert "/b/tiny/model.safetensors" in proc.stderr
    assert not [p for p in cache.rglob("*") if p.name.startswith("model.safetensors")]
    assert not list((cache / "backbones").glob("tiny-*"))  # no folder a reader could take for complete


def test_an_interrupted_download_resumes_to_the_right_bytes(range_site, site, tmp_path):
    root, url, server = range_site
    publish(root, "tiny", trained_like(seed=3))
    source = (root / "tiny" / "model.safetensors").read_bytes()
    entry = entry_of(f"{url}index.json", "tiny")

    # the connection drops a third of the way: the download resumes from there, with a Range request
    cut = len(source) // 3
    server.cut["/tiny/model.safetensors"] = cut
    folder = hub.fetch("tiny", index=f"{url}index.json", cache=tmp_path / "c1", progress=False)
    asked = [r for p, r in server.requests if p == "/tiny/model.safetensors"]
    assert asked == [None, f"bytes={cut}-"]
    assert (folder / "model.safetensors").read_bytes() == source

    # a process killed mid-download left a .part: the next one asks only for the rest
    staging = tmp_path / "c2" / "backbones" / f".tiny-{entry.digest}.download"
    staging.mkdir(parents=True)
    (staging / "model.safetensors.part").write_bytes(source[:1000])
    server.requests.clear()
    folder = hub.fetch("tiny", index=f"{url}index.json", cache=tmp_path / "c2", progress=False)
    assert [r for p, r in server.requests if p == "/tiny/model.safetensors"] == ["bytes=1000-"]
    assert sha256(folder / "model.safetensors") == next(f.sha256 for f in entry.files if f.name == "model.safetensors")
    assert not staging.exists()

    # a server that ignores Range (http.server) sends the whole file: the .part is started over
    publish(site.root / "c", "tiny", trained_like(seed=3))
    entry = entry_of(f"{site.url}c/index.json", "tiny")
    staging = tmp_path / "c3" / "backbones" / f".tiny-{entry.digest}.download"
    staging.mkdir(parents=True)
    (staging / "model.safetensors.part").write_bytes(b"\0" * 1000)
    folder = hub.fetch("tiny", index=f"{site.url}c/index.json", cache=tmp_path / "c3", progress=False)
    assert (folder / "model.safetensors").read_bytes() == (site.root / "c" / "tiny" / "model.safetensors").read_bytes()


def test_a_missing_name_says_which_names_exist_and_list_shows_them(tmp_path, capsys):
    for name in ("au-small", "au-base"):
        publish(tmp_path / "pub", name, trained_like(seed=4))
    proc = hub_cli("download", "au-large", "--index", str(tmp_path / "pub" / "index.json"), "--cache", str(tmp_path / "c"))
    assert proc.returncode == 1
    assert "no backbone named 'au-large'" in proc.stderr and "offers: au-base, au-small" in proc.stderr
    assert hub.main(["list", "--index", str(tmp_path / "pub")]) == 0
    shown = capsys.readouterr().out
    assert "2 backbone(s)" in shown and re.search(rf"au-base\s+{ARCH}", shown) and "au-small" in shown
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish(tmp_path / "pub", "au-base", trained_like(seed=5))
    with pytest.raises(ValueError, match="no index is set"):
        load_backbone("au-base")
    lonely = tmp_path / "lonely" / "au-base"  # a folder served without its index cannot be verified
    shutil.copytree(tmp_path / "pub" / "au-base", lonely)
    with pytest.raises(hub.HubError, match="no index beside it"):
        hub.fetch(lonely.as_uri(), cache=tmp_path / "c")


def test_only_safetensors_json_and_the_card_are_fetched(tmp_path):
    good = {"name": "model.safetensors", "sha256": "0" * 64, "bytes": 1}
    for bad in ("model.bin", "model.pt", "../config.json", "sub/model.safetensors"):
        index = {"schema": hub.INDEX_SCHEMA, "backbones": [{"name": "x", "files": [good, {**good, "name": bad}]}]}
        with pytest.raises(hub.HubError, match="refused"):
            hub.parse_index(index, "test-index")
    with pytest.raises(hub.HubError, match="not an auforge index"):
        hub.parse_index({"schema": "other/1"}, "test-index")


# ---------------------------------------------------------------- the Hugging Face Hub, offline


def hf_cached_repo(hf_cache: Path, repo: str, folder: Path) -> Path:
    """A repository in huggingface_hub's cache layout (as a download would leave it): large files
    stored under their sha256, small ones under their git blob id, linked from a snapshot."""
    base = hf_cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "blobs").mkdir()
    (base / "snapshots" / commit).mkdir(parents=True)
    for f in folder.iterdir():
        data = f.read_bytes()
        blob = sha256(f) if f.suffix == ".safetensors" else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (base / "blobs" / blob).write_bytes(data)
        (base / "snapshots" / commit / f.name).symlink_to(Path("..", "..", "blobs", blob))
    return base / "blobs" / sha256(folder / "model.safetensors")


@pytest.mark.slow
def test_hugging_face_hub_offline(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1"}
    cache = tmp_path / "cache"
    proc = hub_cli("download", "hf://nobody/missing-backbone", "--cache", str(cache), extra_env=offline)
    assert proc.returncode == 1
    assert "hf://nobody/missing-backbone" in proc.stderr and "HF_HUB_OFFLINE is set" in proc.stderr

    folder = publish(tmp_path / "pub", "tiny", trained_like(seed=6))
    blob = hf_cached_repo(cache / "hf", "auforge/tiny", folder)
    proc = hub_cli("download", "hf:auforge/tiny", "--cache", str(cache), extra_env=offline)
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip().splitlines()[-1])
    assert (snapshot / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()

    data = bytearray(blob.read_bytes())
    data[-5] ^= 0x01
    blob.write_bytes(bytes(data))
    proc = hub_cli("download", "hf://auforge/tiny", "--cache", str(cache), extra_env=offline)
    assert proc.returncode == 1 and "does not hash to the sha256" in proc.stderr and not blob.exists()
