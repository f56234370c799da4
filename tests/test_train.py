"""Training engine: exact resume from a checkpoint, DDP on CPU (gloo), optimizer recipe."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from na_kernels.app.datasets import digits_split
from na_kernels.app.train import (
    CheckpointError,
    TrainConfig,
    build_network,
    epoch_seed,
    fit,
    load_checkpoint,
    make_optimizer,
    network_from_checkpoint,
)
from na_kernels.nn import NoisyQuant

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_data(n_train=96, n_test=40):
    tr, te = digits_split()
    return tr.subset(torch.arange(n_train)), te.subset(torch.arange(n_test))


def tiny_cfg(out, **kw):
    base = dict(
        dataset="digits",
        arch="digits_cnn",
        p=3,
        noise="uniform",
        lam=2.0,
        epochs=3,
        batch_size=32,
        lr=0.05,
        seed=11,
        out=str(out),
        device="cpu",
        progress=False,
        amp=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def quiet(*_):
    pass


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_reproduces_the_next_steps_exactly(tmp_path):
    tr, te = tiny_data()
    straight = fit(tiny_cfg(tmp_path / "a"), tr, te, log=quiet)
    first = fit(tiny_cfg(tmp_path / "b", stop_after=1), tr, te, log=quiet)
    assert len(first["history"]) == 1
    ckpt = str(tmp_path / "b" / "last.pt")
    assert load_checkpoint(ckpt)["epoch"] == 1
    resumed = fit(tiny_cfg(tmp_path / "b", resume=ckpt), tr, te, log=quiet)
    a, b = _state(straight["model"]), _state(resumed["model"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]
    # and the checkpoint rebuilds the trained network
    net = network_from_checkpoint(load_checkpoint(str(tmp_path / "b" / "last.pt")))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(net(x), resumed["model"].eval()(x))


def test_resume_mismatch_and_bad_checkpoint(tmp_path):
    tr, te = tiny_data(64, 16)
    fit(tiny_cfg(tmp_path, epochs=1), tr, te, log=quiet)
    with pytest.raises(CheckpointError, match="p=3"):
        fit(tiny_cfg(tmp_path, p=7, resume=str(tmp_path / "last.pt")), tr, te, log=quiet)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pt"))


def test_noise_seeds_differ_per_rank_and_epoch():
    seeds = {epoch_seed(0, e, r) for e in range(3) for r in range(4)}
    assert len(seeds) == 12


def test_optimizer_groups_no_decay_on_lambda_bn_bias():
    model = build_network("resnet20", 10, 3, p=3, noise="uniform")
    opt = make_optimizer(model, 0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    lam_ids = {id(m.raw_lam) for m in model.modules() if isinstance(m, NoisyQuant)}
    assert lam_ids and lam_ids <= {id(p) for p in no_decay["params"]}
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    assert opt.defaults["momentum"] == 0.9


# ------------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, result_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    tr, te = tiny_data(64, 16)
    cfg = tiny_cfg(out_dir, epochs=1, batch_size=16, max_steps_per_epoch=1, lr=0.2)
    # record the generator state each rank's first noisy forward draws its noise seed from
    states = []
    original = NoisyQuant.forward

    def recording_forward(self, x):
        if self.training and not states:
            states.append(torch.get_rng_state())
        return original(self, x)

    NoisyQuant.forward = recording_forward
    try:
        summary = fit(cfg, tr, te, log=quiet)
    finally:
        NoisyQuant.forward = original
    model = summary["model"]
    torch.set_rng_state(states[0])
    probe = NoisyQuant(3, lam=2.0).train()(torch.linspace(-1, 3, 4096).reshape(1, 1, 64, 64)).detach()
    torch.save(
        {
            "state": _state(model),
            "lam": [m.lam.detach().clone() for m in model.modules() if isinstance(m, NoisyQuant)],
            "world": summary["world_size"],
            "probe": probe,
            "loss": summary["history"][0]["train_loss"],
        },
        os.path.join(result_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_gloo_keep_weights_and_lambda_equal(tmp_path):
    port = _free_port()
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(results)), nprocs=2, join=True)
    r0 = torch.load(results / "rank0.pt", weights_only=True)
    r1 = torch.load(results / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    torch.manual_seed(11)
    initial = build_network("digits_cnn", 10, 1, 3, "uniform", 2.0)
    moved = False
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"{k} differs across ranks"
        if k.endswith("weight") and not torch.equal(r0["state"][k], initial.state_dict()[k]):
            moved = True
    assert moved, "the step did not change the weights"
    for a, b in zip(r0["lam"], r1["lam"]):
        assert torch.equal(a, b)
    assert any(float(l) != 2.0 for l in r0["lam"]), "λ did not train"
    # each rank drew its own noise: the same input through the same quantizer differs
    assert not torch.equal(r0["probe"], r1["probe"])
    # rank 0 wrote the checkpoint, which records the world size
    assert load_checkpoint(str(tmp_path / "run" / "last.pt"))["meta"]["world_size"] == 2


def test_config_follows_the_shared_argument_rules(tmp_path):
    cfg = tiny_cfg(tmp_path, p=3.0, noise=None)
    assert cfg.p == 3 and type(cfg.p) is int and cfg.noise == "none"
    assert tiny_cfg(tmp_path, noise="none").to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="p must be an int >= 1"):
        tiny_cfg(tmp_path, p=2.5)
    with pytest.raises(ValueError, match="noise must be one of"):
        tiny_cfg(tmp_path, noise="laplace")
    with pytest.raises(ValueError, match="epochs must"):
        tiny_cfg(tmp_path, epochs=0)
    qcfs = build_network("digits_cnn", 10, 1, p=3.0, noise="none")
    assert all(m.noise is None and m.p == 3 for m in qcfs.modules() if isinstance(m, NoisyQuant))


def test_config_lam_auto_and_lam_floor(tmp_path):
    assert tiny_cfg(tmp_path, lam="auto").lam == "auto"
    with pytest.raises(ValueError, match=r"lam must be a finite float > min_lam \(0.001\)"):
        tiny_cfg(tmp_path, lam=1e-4)  # positive, but below NoisyQuant's floor: refused before any network
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        tiny_cfg(tmp_path, overwrite="yes")


def test_fit_refuses_an_existing_run_and_bad_settings_before_training(tmp_path):
    from na_kernels.app.train import ConfigError

    tr, te = tiny_data(64, 16)
    fit(tiny_cfg(tmp_path, epochs=1), tr, te, log=quiet)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(tiny_cfg(tmp_path, epochs=1, seed=3), tr, te, log=quiet)
    assert (tmp_path / "last.pt").read_bytes() == before
    fit(tiny_cfg(tmp_path, epochs=1, seed=3, overwrite=True), tr, te, log=quiet)
    assert (tmp_path / "last.pt").read_bytes() != before
    (tmp_path / "file").write_text("x")
    for cfg, message in (
        (tiny_cfg(tmp_path / "file"), "is a file, not a folder"),
        (tiny_cfg(tmp_path / "new", batch_size=65), "use a batch size of at most 64"),
        (tiny_cfg(tmp_path / "new", arch="vgg16"), "takes 32x32 images"),
        (tiny_cfg(tmp_path / "new", device="tpu"), "'tpu' is not a device"),
    ):
        with pytest.raises(ConfigError, match=message):
            fit(cfg, tr, te, log=quiet)
    assert not (tmp_path / "new").exists() or not os.listdir(tmp_path / "new")


def test_best_checkpoint_follows_the_best_test_accuracy_across_resume(tmp_path):
    import json

    tr, te = tiny_data(96, 40)
    fit(tiny_cfg(tmp_path, epochs=4, stop_after=2), tr, te, log=quiet)
    summary = fit(tiny_cfg(tmp_path, epochs=4, resume=str(tmp_path / "last.pt")), tr, te, log=quiet)
    accs = [h["test_acc"] for h in summary["history"]]
    best = accs.index(max(accs)) + 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["test_acc"] for e in metrics["epochs"]] == accs and len(accs) == 4
    assert metrics["best"]["epoch"] == best == summary["best"]["epoch"]
    assert load_checkpoint(str(tmp_path / "best.pt"))["epoch"] == best


def test_checkpoint_errors_are_one_line_and_name_what_is_missing(tmp_path):
    tr, te = tiny_data(64, 16)
    fit(tiny_cfg(tmp_path, epochs=1), tr, te, log=quiet)
    good = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model", "config", "meta", "epoch"):
        torch.save({k: v for k, v in good.items() if k != key}, tmp_path / "x.pt")
        with pytest.raises(CheckpointError, match=f"has no '{key}'"):
            load_checkpoint(str(tmp_path / "x.pt"))
    torch.save({**good, "meta": {"num_classes": 10}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="its 'meta' lacks 'in_channels'"):
        load_checkpoint(str(tmp_path / "x.pt"))
    weights = dict(good["model"])
    weights["classifier.3.weight"] = weights["classifier.3.weight"][:5]
    torch.save({**good, "model": weights}, tmp_path / "x.pt")
    with pytest.raises(
        CheckpointError,
        match=r"1 of another shape \(e.g. classifier.3.weight: \(5, 128\) vs "
        r"\(10, 128\)\)",
    ):
        network_from_checkpoint(load_checkpoint(str(tmp_path / "x.pt")))
    for junk in (b"junk" * 10, b"not a checkpoint " * 8, good["model"]["classifier.3.weight"]):
        if isinstance(junk, bytes):
            (tmp_path / "junk.pt").write_bytes(junk)
        else:
            torch.save({"x": torch.nn.Linear(1, 1)}, tmp_path / "junk.pt")  # a pickled module: torch's advice
        with pytest.raises(CheckpointError, match=r"junk.pt is not a readable na_kernels checkpoint \(\w+: ") as e:
            load_checkpoint(str(tmp_path / "junk.pt"))
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value) and "\x1b" not in str(e.value)
    with pytest.raises(CheckpointError, match="a folder; pass the last.pt or best.pt in it"):
        load_checkpoint(str(tmp_path))


def test_parse_device_names_what_is_available():
    from na_kernels.app.train import ConfigError, parse_device

    assert parse_device(None) is None and parse_device("cpu") == "cpu"
    for bad, message in (("tpu", "is not a device"), ("meta", "runs on cpu or cuda"), ("cuda:99", "cuda:99")):
        with pytest.raises(ConfigError, match=message):
            parse_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available here"):
            parse_device("cuda")
