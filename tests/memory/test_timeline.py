"""The op-by-op timeline (sawtooth, phase markers, plot) and the Trainer callback."""
import matplotlib
import pytest
import torch

from minigpt.memory import BUCKETS, measure_step, memory_timeline, plot_timeline, zoo
from minigpt.memory.timeline import Timeline




matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tl() -> Timeline:
    return memory_timeline(zoo.factory("tiny"), zoo.make_batch("tiny", 2, 16), steps=2, mode="cpu")


def test_timeline_has_phases_in_order_for_each_step(tl):
    marks = [(s, p) for _, s, p in tl.markers()]
    assert marks == [(1, "forward"), (1, "backward"), (1, "optimizer"), (1, "end"),
                     (2, "forward"), (2, "backward"), (2, "optimizer"), (2, "end")]
    assert all(len(tl.live[k]) == len(tl) for k in BUCKETS) and len(tl.step) == len(tl)


def test_timeline_sawtooth_and_state(tl):
    total = tl.total
    i2 = next(i for i, _, p in [(i, s, p) for i, s, p in tl.markers()] if (tl.step[i], p) == (2, "forward"))
    # activations build up in forward and are gone after backward
    fwd_end = next(i for i, s, p in tl.markers() if (s, p) == (2, "backward"))
    assert tl.live["activations"][fwd_end] > 0 and tl.live["activations"][-1] == 0
    # step 1 creates the optimizer state; step 2 starts with it
    assert tl.live["optimizer"][0] == 0 and tl.live["optimizer"][i2] > 0
    # the step-2 peak matches measure_step's (same step, same tracker)
    r = measure_step(zoo.factory("tiny"), zoo.make_batch("tiny", 2, 16))
    assert max(total[i2:]) == r.peak


def test_plot_returns_figure_and_saves_only_inside_repo(tl, tmp_path):
    fig = plot_timeline(tl)
    assert fig.axes and fig.axes[0].get_ylabel().startswith("live memory")
    # each bucket has the colour it has in the bar charts (one palette for the course)
    from minigpt.memory.plot import BUCKET_COLORS
    fills = fig.axes[0].collections[:len(BUCKETS)]
    assert [matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in fills] == [BUCKET_COLORS[k] for k in BUCKETS]
    with pytest.raises(ValueError, match="inside the repository"):
        plot_timeline(tl, path=tmp_path / "x.png")
    matplotlib.pyplot.close("all")


def test_no_gpu_fallback_says_so():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    t = memory_timeline(zoo.factory("tiny"), zoo.make_batch("tiny", 1, 8), steps=1)
    assert t.mode == "cpu" and any("no GPU" in n for n in t.notes) and t.allocated is None


def test_memory_callback_in_a_tiny_trainer_run(tmp_path):
    from transformers import Trainer, TrainingArguments

    from minigpt.memory.callback import MemoryCallback
    ov = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    torch.manual_seed(0)
    model = zoo.build("roberta-base", **ov)
    data = [{k: v[0] for k, v in zoo.make_batch("roberta-base", 1, 16, seed=i, **ov).items()} for i in range(8)]
    cb = MemoryCallback()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=3,
                             per_device_train_batch_size=2, save_strategy="no", logging_steps=1,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    assert [h["step"] for h in cb.history] == [1, 2, 3]
    n = sum(p.numel() for p in model.parameters())
    assert all(h["peak_allocated"] >= 4 * n for h in cb.history)   # at least the fp32 weights
    assert cb.buckets is not None and cb.buckets["weights_trainable"] == 4 * n
    assert cb.buckets["optimizer"] >= 8 * n                         # AdamW moments exist at step 2
    assert "no GPU" in cb.history[0]["source"]
