"""Sizes are checked against the machine's memory before anything is allocated, and refused in
one line naming the option and its value; odd state dicts are one-line checkpoint errors."""
import re

import pytest
import torch

import alphafuse.data.memory as memory
from alphafuse.data.memory import GIB, check_fits, module_bytes
from alphafuse.extract import backbone_names, create_backbone, get_backbone
from alphafuse.extract.checkpoint import CheckpointError
from alphafuse.fuse import TrainConfig
from alphafuse.fuse.heads import create_head, head_names
from tests.test_cli_errors import _error_line, _run


@pytest.fixture
def work(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.csv").write_text("path,label,split\na.mp4,x,train\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_gib(monkeypatch):
    """A machine with 1 GiB free, whatever runs the test."""
    monkeypatch.setattr(memory, "available_memory", lambda: GIB)


def test_check_fits_says_what_and_how_much():
    check_fits(GIB, "x", limit=GIB)
    with pytest.raises(ValueError, match=r"^hidden=3: the layers would take 2\.0 GiB, more than the 1\.0 GiB"):
        check_fits(2 * GIB, "hidden=3: the layers", limit=GIB)


def test_module_bytes_counts_without_allocating():
    before = torch.randn(1)   # the meta build draws no random numbers either
    torch.manual_seed(0)
    expected = torch.randn(3)
    torch.manual_seed(0)
    assert module_bytes(torch.nn.Linear, 1 << 20, 1 << 20) == ((1 << 40) + (1 << 20)) * 4   # 4 TiB, not taken
    assert torch.equal(torch.randn(3), expected) and before.numel() == 1


def test_backbone_opt_num_frames_100000_is_refused_before_allocating(work):
    # One clip of 100000 224x224 frames is 56 GiB of float32: refused on any machine, in one line.
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--arch", "tiny",
                             "--backbone-opt", "num_frames=100000"], work))
    assert "num_frames=100000" in line and "batch_size=8" in line and "more than the" in line
    assert not (work / "c").exists()


# The families with random weights of a chosen size (arch); hf builds only from a snapshot, whose
# config and files its own tests refuse when wrong (tests/test_hf.py).
SIZED = [n for n in backbone_names() if "arch" in get_backbone(n).options]


@pytest.mark.parametrize("name", SIZED)
def test_every_backbone_weights_are_sized_before_building(name, one_gib):
    # The widest option each family has, pushed until the weights alone exceed 1 GiB.
    wide = {"timesformer": {"img_size": 16 * 4000}, "ast": {"input_tdim": 10 ** 7},
            "cavmae": {"audio_length": 10 ** 7}, "tsm": {"num_segments": 8}, "tsam": {"num_segments": 16}}[name]
    if name in ("tsm", "tsam"):      # resnet weights do not grow with options: base is 94 MiB, fits
        create_backbone(name, None, arch="tiny", **wide)
        return
    key, value = next(iter(wide.items()))
    with pytest.raises(ValueError, match=re.escape(f"{key}={value}") + ".*building its weights would take .* more than the 1.0 GiB"):
        create_backbone(name, None, arch="tiny", **wide)


def test_options_beyond_64_bits_and_beyond_indexing_are_one_line(work):
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--arch", "tiny",
                             "--backbone-opt", "num_frames=100000000000000000000000"], work))
    assert f"backbone option timesformer.num_frames must be an integer from {-2 ** 63} to {2 ** 63 - 1}, " \
           f"got {10 ** 23}" in line
    line = _error_line(_run(["extract", "--manifest", "m.csv", "--cache-dir", "c", "--arch", "tiny",
                             "--backbone-opt", f"num_frames={2 ** 62}"], work))
    assert f"num_frames={2 ** 62}" in line and ("too large to build" in line or "would take" in line)


def test_cavmae_audio_length_is_sized_with_its_build_peak(one_gib):
    # Weights of 0.4 GiB fit in 1 GiB, but building them peaks near three times that (float64 tables).
    with pytest.raises(ValueError, match=r"audio_length=3000000.*building its weights would take"):
        create_backbone("cavmae", None, arch="tiny", audio_length=3_000_000)


def test_fuse_hidden_beyond_the_machine_is_one_line(work):
    line = _error_line(_run(["fuse", "--cache-dir", "c", "--hidden", "100000000000,100000000000"], work))
    assert "hidden=100000000000,100000000000: the hidden layers would take" in line
    line = _error_line(_run(["fuse", "--cache-dir", "c", "--hidden", "1e11"], work))
    assert "hidden must be integers such as 1024,512, got '1e11'" in line
    assert not (work / "runs").exists()


def test_train_config_refuses_hidden_sizes_no_machine_holds(one_gib):
    with pytest.raises(ValueError, match="hidden=100000,100000: the hidden layers would take 149.0 GiB"):
        TrainConfig(hidden=(100000, 100000))      # 1e5 x 1e5 weights, x4 in training
    TrainConfig(hidden=(1024, 512))


@pytest.mark.parametrize("name", head_names())
def test_every_head_is_sized_on_its_inputs_before_building(name, one_gib):
    # Inputs of 10^6 dimensions: each head's first layer alone is beyond 1 GiB in training.
    shapes = {"video": (10 ** 6,), "audio": (10 ** 6,), "video_tokens": (4, 10 ** 6), "audio_tokens": (4, 10 ** 6),
              "video_layers": (2, 10 ** 6), "audio_layers": (2, 10 ** 6), "joint": (10 ** 6,)}
    options = TrainConfig(head=name, hidden=(256,)).head_kwargs()
    from alphafuse.fuse.heads import get_head
    wanted = get_head(name).needs(options)
    with pytest.raises(ValueError, match=f"^head {name} .*training it would take"):
        create_head(name, {n: shapes[n] for n in wanted}, 10, **options)
    small = create_head(name, {n: (8,) * len(shapes[n]) for n in wanted}, 3, **options)
    assert sum(p.numel() for p in small.parameters()) > 0


@pytest.mark.parametrize("name", SIZED)
def test_a_state_dict_with_an_integer_key_is_one_line(tmp_path, name):
    state = dict(create_backbone(name, None, arch="tiny").state_dict())
    state[7] = torch.zeros(1)
    torch.save(state, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match=r"int.pth: not a model state dict: parameter names must be strings, "
                                              r"found 1 int key\(s\) \(7\)"):
        create_backbone(name, tmp_path / "int.pth", arch="tiny")


def test_grid_stacks_are_sized_before_building(monkeypatch):
    # The grid's vectorized path builds its concat heads itself, not through create_head.
    from alphafuse.fuse.stacked import train_heads_stacked
    from tests.test_input_data import _split

    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)   # 1 MiB free
    configs = [TrainConfig(hidden=(4096,), seed=s, epochs=1) for s in (0, 1)]
    with pytest.raises(ValueError, match=r"^a stack of 2 concat heads \(hidden=4096\) on inputs video \(4,\), "
                                         r"audio \(3,\): training it would take 1\.\d MiB"):
        train_heads_stacked(_split("train", 6, 2), None, configs)
