"""The Engine loop: firing order, accumulation, limits, stop/skip, devices, evaluation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from hookloop import ConfigError, DataError, Engine, PluginError, hookimpl


class Recorder:
    """Records every core hook with the counters valid at that moment."""

    name = "recorder"

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.events: list[tuple] = []
        self.fail_at_step = fail_at_step

    @hookimpl
    def on_fit_start(self, state):
        self.events.append(("on_fit_start", state.step))

    @hookimpl
    def before_step(self, state):
        self.events.append(("before_step", state.step, state.epoch, state.epoch_batch))

    @hookimpl
    def after_backward(self, engine, state):
        grads_ready = all(p.grad is not None for p in engine.model.parameters())
        self.events.append(("after_backward", state.step, state.micro_step, grads_ready))
        if self.fail_at_step is not None and state.step == self.fail_at_step:
            raise RuntimeError("boom")

    @hookimpl
    def after_step(self, engine, state):
        grads_gone = all(p.grad is None for p in engine.model.parameters())
        self.events.append(("after_step", state.step, grads_gone))

    @hookimpl
    def on_epoch_end(self, state):
        self.events.append(("on_epoch_end", state.epoch, state.epoch_batch))

    @hookimpl
    def on_eval_end(self, metrics):
        self.events.append(("on_eval_end", sorted(metrics)))

    @hookimpl
    def on_fit_end(self, state):
        self.events.append(("on_fit_end", state.step, state.should_stop))

    @hookimpl
    def on_exception(self, state, error):
        self.events.append(("on_exception", state.step, type(error).__name__))


def expected_sequence(epochs: int, steps_per_epoch: int, accumulate: int) -> list[tuple]:
    events: list[tuple] = [("on_fit_start", 0)]
    step = 0
    for epoch in range(epochs):
        for i in range(steps_per_epoch):
            events.append(("before_step", step, epoch, i * accumulate))
            events.append(("after_backward", step, (step + 1) * accumulate, True))
            step += 1
            events.append(("after_step", step, True))
        events.append(("on_epoch_end", epoch + 1, 0))
    events.append(("on_fit_end", step, None))
    return events


def test_firing_sequence_two_epochs_three_steps_two_micro_batches(make_engine):
    recorder = Recorder()
    engine = make_engine(batches=6, accumulate=2, plugins=[recorder])
    state = engine.fit(epochs=2)
    assert recorder.events == expected_sequence(epochs=2, steps_per_epoch=3, accumulate=2)
    assert (state.step, state.epoch, state.micro_step) == (6, 2, 12)


def test_firing_sequence_on_exception_path(make_engine):
    recorder = Recorder(fail_at_step=4)
    engine = make_engine(batches=6, accumulate=2, plugins=[recorder])
    with pytest.raises(PluginError, match="plugin 'recorder' failed in hook 'after_backward'"):
        engine.fit(epochs=2)
    expected = expected_sequence(epochs=2, steps_per_epoch=3, accumulate=2)
    cut = expected.index(("after_backward", 4, 10, True)) + 1
    assert recorder.events == [*expected[:cut], ("on_exception", 4, "PluginError")]


def test_exception_in_loss_fires_on_exception_and_reraises(make_engine):
    recorder = Recorder()

    def bad_loss(model, batch):
        raise ValueError("bad batch")

    engine = make_engine(plugins=[recorder], loss_fn=bad_loss)
    with pytest.raises(ValueError, match="bad batch"):
        engine.fit(max_steps=3)
    assert recorder.events[-1] == ("on_exception", 0, "ValueError")
    assert not any(e[0] == "on_fit_end" for e in recorder.events)


def test_accumulated_gradient_equals_one_big_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    big_x, big_y = torch.randn(16, 6), torch.randn(16, 3)
    reference = copy.deepcopy(model)
    F.mse_loss(reference(big_x), big_y).backward()

    captured = {}

    class Capture:
        @hookimpl
        def after_backward(self, engine, state):
            captured.update({n: p.grad.clone() for n, p in engine.model.named_parameters()})
            state.skip_step = True

    micro = list(zip(big_x.split(4), big_y.split(4), strict=True))
    engine = Engine(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        micro,
        accumulate=4,
        loss_fn=lambda m, b: F.mse_loss(m(b[0]), b[1]),
        plugins=[Capture()],
    )
    engine.fit(max_steps=1)
    for name, param in reference.named_parameters():
        torch.testing.assert_close(captured[name], param.grad, atol=1e-6, rtol=0)


def test_state_loss_is_mean_of_micro_batch_losses(make_engine):
    losses = []

    def loss_fn(model, batch):
        loss = F.mse_loss(model(batch[0]), batch[1])
        losses.append(loss.item())
        return loss

    engine = make_engine(accumulate=3, loss_fn=loss_fn)
    state = engine.fit(max_steps=1)
    assert state.loss.item() == pytest.approx(sum(losses) / 3, abs=1e-6)
    assert isinstance(state.loss, torch.Tensor) and not state.loss.requires_grad


def test_max_steps_stops_mid_epoch_and_epochs_limit(make_engine):
    engine = make_engine(batches=6)
    assert engine.fit(max_steps=4).step == 4
    assert engine.state.epoch == 0 and engine.state.epoch_batch == 4
    engine = make_engine(batches=6)
    state = engine.fit(epochs=3)
    assert (state.step, state.epoch) == (18, 3)
    engine = make_engine(batches=6)
    assert engine.fit(max_steps=100, epochs=2).step == 12  # whichever comes first


def test_epoch_end_fires_when_max_steps_lands_on_epoch_boundary(make_engine):
    recorder = Recorder()
    engine = make_engine(batches=3, plugins=[recorder])
    engine.fit(max_steps=3)
    assert ("on_epoch_end", 1, 0) in recorder.events


def test_fit_needs_a_limit(make_engine):
    with pytest.raises(ConfigError, match="max_steps or epochs"):
        make_engine().fit()


def test_too_little_data_for_one_step_is_a_data_error(make_engine):
    engine = make_engine(batches=1, accumulate=2)
    with pytest.raises(DataError, match="fewer than accumulate=2"):
        engine.fit(max_steps=5)


def test_plugin_stop_request_ends_the_run_with_its_reason(make_engine):
    class StopAtTwo:
        @hookimpl
        def after_step(self, state):
            if state.step == 2:
                state.request_stop("enough")

    recorder = Recorder()
    engine = make_engine(plugins=[StopAtTwo(), recorder])
    state = engine.fit(max_steps=10)
    assert state.step == 2 and state.should_stop == "enough"
    assert recorder.events[-1] == ("on_fit_end", 2, "enough")


def test_skip_step_leaves_weights_untouched(make_engine):
    class SkipAll:
        @hookimpl
        def after_backward(self, state):
            state.skip_step = True

    engine = make_engine(plugins=[SkipAll()])
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    state = engine.fit(max_steps=3)
    assert state.step == 3
    for k, v in engine.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_metrics_are_cleared_each_step(make_engine):
    seen = []

    class Writer:
        @hookimpl
        def before_step(self, state):
            seen.append(dict(state.metrics))
            state.metrics[f"m{state.step}"] = state.step

    make_engine(plugins=[Writer()]).fit(max_steps=3)
    assert seen == [{}, {}, {}]


def test_batches_are_moved_to_the_engine_device(make_engine):
    devices = []

    def loss_fn(model, batch):
        devices.append(batch[0].device.type)
        return F.mse_loss(model(batch[0]), batch[1])

    engine = make_engine(loss_fn=loss_fn, device="cpu")
    engine.fit(max_steps=2)
    assert devices == ["cpu", "cpu"]
    nested = engine.to_device({"a": [torch.ones(1)], "b": (torch.zeros(1), 3)})
    assert nested["a"][0].device.type == "cpu" and nested["b"][1] == 3


def test_to_device_really_moves_nested_batches_off_the_cpu(make_engine):
    engine = make_engine(device="meta")  # a real device other than the CPU, on any machine
    assert all(p.device.type == "meta" for p in engine.model.parameters())
    batch = {"a": [torch.ones(2, 3)], "b": (torch.zeros(1, dtype=torch.int64), 3, "text")}
    moved = engine.to_device(batch)
    assert type(moved) is dict and type(moved["a"]) is list and type(moved["b"]) is tuple
    assert moved["a"][0].device.type == "meta" and moved["a"][0].shape == (2, 3)
    assert moved["b"][0].device.type == "meta" and moved["b"][0].dtype == torch.int64
    assert moved["b"][1:] == (3, "text")
    assert batch["a"][0].device.type == "cpu"  # the input is left as it was


def test_the_loop_moves_every_micro_batch_to_the_engine_device(make_engine):
    seen = []

    def loss_fn(model, batch):
        seen.append({t.device.type for t in batch})
        return model(batch[0]).sum() * 0 + torch.ones((), device="meta", requires_grad=True)

    engine = make_engine(loss_fn=loss_fn, device="meta", accumulate=2, val_data=None)
    engine.fit(max_steps=2)
    assert seen == [{"meta"}] * 4


def test_tokens_seen_counts_elements_of_the_first_tensor(make_engine):
    engine = make_engine(batches=6)
    assert engine.fit(max_steps=5).tokens_seen == 5 * 4 * 8


def test_evaluate_returns_token_weighted_loss_and_perplexity(make_engine):
    recorder = Recorder()
    engine = make_engine(plugins=[recorder])
    metrics = engine.evaluate()
    with torch.no_grad():
        expected = sum(F.mse_loss(engine.model(x), y).item() for x, y in engine.val_data) / 2
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["val_ppl"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-5)
    assert engine.model.training
    assert recorder.events == [("on_eval_end", ["val_loss", "val_ppl"])]


def test_evaluate_without_validation_data_is_a_config_error(make_engine):
    with pytest.raises(ConfigError, match="validation data"):
        make_engine(val_data=None).evaluate()


class ResumableBatches:
    """Data with `iter_epoch`: the engine asks for the position instead of replaying."""

    def __init__(self, batches):
        self.batches = batches
        self.calls = []

    def __iter__(self):
        return iter(self.batches)

    def iter_epoch(self, epoch, start):
        self.calls.append((epoch, start))
        return iter(self.batches[start:])


def test_resume_mid_epoch_matches_an_uninterrupted_run(make_engine):
    straight = make_engine(batches=6)
    straight.fit(max_steps=8)

    first = make_engine(batches=6)
    first.fit(max_steps=4)
    second = make_engine(batches=6)
    second.model.load_state_dict(first.model.state_dict())
    second.optimizer.load_state_dict(first.optimizer.state_dict())
    second.state.load_counters(first.state.counters())
    second.fit(max_steps=8)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])


def test_iter_epoch_is_used_with_the_data_position(make_engine):
    data = ResumableBatches(make_engine(batches=6).train_data)
    engine = make_engine(batches=6)
    engine.train_data = data
    engine.state.epoch_batch = 4
    engine.fit(max_steps=4)
    assert data.calls == [(0, 4), (1, 0)]


def test_bad_engine_options_are_config_errors(make_engine):
    with pytest.raises(ConfigError, match="accumulate"):
        make_engine(accumulate=0)
    with pytest.raises(ConfigError, match="precision"):
        make_engine(precision="fp8")


def test_bf16_autocast_trains_on_cpu(make_engine):
    engine = make_engine(precision="bf16")
    assert torch.isfinite(engine.fit(max_steps=2).loss)


def test_fp16_uses_a_grad_scaler(make_engine):
    engine = make_engine(precision="fp16")
    assert engine.scaler is not None
    state = engine.fit(max_steps=2)
    assert state.step == 2


def test_next_token_loss_accepts_non_contiguous_targets():
    from hookloop.losses import next_token_loss

    model = torch.nn.Embedding(5, 5)
    windows = torch.randint(0, 5, (2, 7))
    inputs, targets = windows[:, :-1], windows[:, 1:]  # slices: not contiguous
    expected = F.cross_entropy(model(inputs).reshape(-1, 5), targets.reshape(-1))
    assert next_token_loss(model, (inputs, targets)).item() == pytest.approx(expected.item())
