"""hookloop.lm.doctor: a healthy tiny LM passes; each injected fault is named by its check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hookloop import Engine, hookimpl
from hookloop.lm.doctor import (
    CHECKS,
    FAIL,
    PASS,
    WARN,
    Finding,
    Subject,
    diagnose,
    format_findings,
    run_checks,
)
from hookloop.losses import next_token_loss

VOCAB, T = 16, 12


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine run 20x faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyLM(torch.nn.Module):
    """One single-head attention layer; `causal=False` lets positions see the future."""

    def __init__(self, *, causal: bool = True, detach_head: bool = False) -> None:
        super().__init__()
        self.causal, self.detach_head = causal, detach_head
        self.emb = torch.nn.Embedding(VOCAB, 32)
        self.pos = torch.nn.Embedding(T, 32)
        self.qkv = torch.nn.Linear(32, 96)
        self.proj = torch.nn.Linear(32, 32)
        self.head = torch.nn.Linear(32, VOCAB)
        for m in (self.qkv, self.proj, self.head):
            torch.nn.init.normal_(m.weight, std=0.02)
        torch.nn.init.normal_(self.emb.weight, std=0.02)
        torch.nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos(torch.arange(x.shape[1]))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=self.causal))
        weight = self.head.weight.detach() if self.detach_head else self.head.weight
        return F.linear(h, weight, self.head.bias)


def lm_batches(n: int = 3, *, shifted: bool = True) -> list:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (n * 4 * (T + 1),), generator=g).view(n, 4, T + 1)
    if shifted:
        return [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in tokens]
    return [(w[:, :-1].contiguous(), w[:, :-1].contiguous()) for w in tokens]


def subject(*, lr: float = 1e-2, batches=None, **model_kwargs) -> Subject:
    torch.manual_seed(0)
    model = TinyLM(**model_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return Subject(model, optimizer, batches or lm_batches(), next_token_loss, vocab_size=VOCAB)


def checklist(s: Subject) -> dict[str, Finding]:
    return {f.check: f for f in run_checks(s)}


def test_a_healthy_model_passes_every_check():
    found = checklist(subject())
    assert [f.check for f in found.values()] == [c.__name__ for c in CHECKS]
    assert {k: f.status for k, f in found.items() if f.status != PASS} == {}
    assert "ln(vocab) = 2.773" in found["initial_loss"].detail


def test_the_subject_is_left_untouched():
    s = subject()
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    run_checks(s)
    assert all(torch.equal(v, before[k]) for k, v in s.model.state_dict().items())
    assert all(p.grad is None for p in s.model.parameters())


def test_zero_learning_rate():
    found = checklist(subject(lr=0.0))
    assert found["learning_rate"].status == FAIL and "lr 0" in found["learning_rate"].detail
    assert found["optimizer_step"].status == FAIL
    assert found["overfit_one_batch"].status == FAIL


def test_a_parameter_detached_from_the_graph_is_named():
    found = checklist(subject(detach_head=True))
    assert found["gradients"].status == FAIL
    assert "no gradient for head.weight" in found["gradients"].detail


def test_a_frozen_layer_is_named():
    s = subject()
    s.model.qkv.requires_grad_(False)
    found = checklist(s)
    assert found["frozen_parameters"].status == WARN
    assert "qkv.weight, qkv.bias" in found["frozen_parameters"].detail


def test_nan_in_the_data():
    batches = [(x.float(), y) for x, y in lm_batches()]
    batches[0][0][0, 3] = float("nan")
    found = checklist(subject(batches=batches))
    assert found["batch_shapes"].status == FAIL and "1 NaN/inf" in found["batch_shapes"].detail
    assert found["token_range"].status == FAIL


def test_token_ids_outside_the_vocabulary():
    batches = lm_batches()
    batches[1][1][0, 0] = VOCAB + 3
    found = checklist(subject(batches=batches))
    assert (
        found["token_range"].status == FAIL and f"[0, {VOCAB + 3}]" in found["token_range"].detail
    )


def test_an_absurd_learning_rate_makes_the_overfit_check_fail():
    found = checklist(subject(lr=1e3))
    assert found["overfit_one_batch"].status == FAIL


def test_targets_not_shifted():
    found = checklist(subject(batches=lm_batches(shifted=False)))
    assert found["targets_shifted"].status == FAIL
    assert "not shifted by one" in found["targets_shifted"].detail


def test_non_causal_attention_leaks_the_future():
    found = checklist(subject(causal=False))
    assert found["causal_mask"].status == FAIL
    assert "see the future" in found["causal_mask"].detail


def test_a_check_that_raises_is_a_failure_naming_the_error():
    def broken(s: Subject) -> Finding:
        raise RuntimeError("boom")

    (finding,) = run_checks(subject(), [broken])
    assert finding == Finding("broken", FAIL, "the check raised RuntimeError: boom")


class ExtraCheck:
    """A plugin that adds its own check to the doctor."""

    name = "extra_check"

    @hookimpl
    def doctor_checks(self, engine):
        def vocab_is_small(s: Subject) -> Finding:
            return Finding("vocab_is_small", PASS, f"vocab {s.vocab_size}")

        return [vocab_is_small]


def engine_with(*plugins) -> Engine:
    s = subject()
    return Engine(s.model, s.optimizer, s.batches, plugins=plugins)


def test_diagnose_runs_plugin_checks_after_the_built_in_ones():
    engine = engine_with(ExtraCheck())
    findings = diagnose(engine, lm_batches(), vocab_size=VOCAB, max_steps=40)
    assert [f.check for f in findings[: len(CHECKS)]] == [c.__name__ for c in CHECKS]
    assert findings[len(CHECKS)] == Finding("vocab_is_small", PASS, f"vocab {VOCAB}")
    assert not any(f.status == FAIL for f in findings), format_findings(findings)


def test_a_run_whose_plugins_check_no_schedule_gets_a_schedule_warning():
    findings = diagnose(engine_with(ExtraCheck()), lm_batches(), vocab_size=VOCAB)
    assert findings[-1] == Finding(
        "schedule", WARN, "no schedule plugin: the lr stays 0.01 (no warmup, no decay)"
    )


def test_a_plugin_that_reports_a_schedule_finding_replaces_the_warning():
    class OwnSchedule:
        name = "own_schedule"

        @hookimpl
        def doctor_checks(self):
            return [lambda s: Finding("schedule", PASS, "checked by the plugin")]

    findings = diagnose(engine_with(OwnSchedule()), lm_batches(), vocab_size=VOCAB)
    assert [f for f in findings if f.check == "schedule"] == [
        Finding("schedule", PASS, "checked by the plugin")
    ]


@pytest.mark.parametrize("status", [PASS, FAIL])
def test_format_findings_prints_one_line_per_check_and_a_summary(status):
    text = format_findings([Finding("a", PASS, "1.0"), Finding("bb", status, "2.0")])
    assert text.splitlines()[1] == f"{status}  bb  2.0"
    assert text.splitlines()[-1].startswith("1 pass" if status == FAIL else "2 pass")


# --- each check's failing path, with one injected fault ------------------------------------


class Wrapped(torch.nn.Module):
    """TinyLM with its logits passed through `transform` (the injected fault)."""

    def __init__(self, transform, **model_kwargs) -> None:
        super().__init__()
        self.inner, self.transform = TinyLM(**model_kwargs), transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.inner(x))


def faulty(transform=None, *, loss_scale: float = 1.0, batches=None, lr: float = 1e-2) -> Subject:
    """A subject with a fault injected into its logits, its loss or its batches."""
    torch.manual_seed(0)
    model = Wrapped(transform or (lambda z: z))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def loss_fn(m, b):
        return next_token_loss(m, b) * loss_scale

    return Subject(model, optimizer, batches or lm_batches(), loss_fn, vocab_size=VOCAB)


def with_nan(z):
    z = z.clone()
    z[0, 0, 0] = float("nan")
    return z


FAULTS = {
    "nan logits": (lambda: faulty(with_nan), "logits_range", FAIL, "1 non-finite logits"),
    "flat logits": (
        lambda: faulty(lambda z: z.flatten(0, 1)),
        "logits_range",
        FAIL,
        "expected (B, T, V)",
    ),
    "huge logits": (lambda: faulty(lambda z: z * 1e4), "logits_range", WARN, "range ["),
    "confident init": (lambda: faulty(lambda z: z * 300), "initial_loss", FAIL, "off)"),
    "slightly off init": (
        lambda: faulty(lambda z: z + torch.linspace(0, 3.5, VOCAB)),
        "initial_loss",
        WARN,
        "(26% off)",
    ),
    "nan loss": (lambda: faulty(with_nan), "initial_loss", FAIL, "loss nan"),
    "exploding grads": (
        lambda: faulty(loss_scale=1e6),
        "grad_norm_range",
        FAIL,
        "grad norm",
    ),
    "large grads": (lambda: faulty(loss_scale=2e3), "grad_norm_range", WARN, "grad norm"),
    "zero grads": (lambda: faulty(loss_scale=0.0), "grad_norm_range", FAIL, "to 0 over"),
    "nan grads": (lambda: faulty(with_nan), "grad_norm_range", FAIL, "nan"),
    "tiny grads": (lambda: faulty(loss_scale=1e-12), "gradients", WARN, "tiny:"),
    "tiny lr": (lambda: faulty(lr=1e-9), "learning_rate", WARN, "lr 1e-09"),
    "mismatched shapes": (
        lambda: faulty(batches=[(x, y[:, :-1]) for x, y in lm_batches()]),
        "batch_shapes",
        FAIL,
        "expected two (B, T) tensors",
    ),
    "random targets": (
        lambda: faulty(batches=[(x, y.roll(1, 0)) for x, y in lm_batches()]),
        "targets_shifted",
        FAIL,
        "only",
    ),
    "inputs ignored": (
        lambda: faulty(lambda z: z.mean(1, keepdim=True).expand_as(z) * 0),
        "causal_mask",
        WARN,
        "later logits did not change",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_injected_fault_fails_or_warns_in_its_check(fault):
    build, check, status, detail = FAULTS[fault]
    found = checklist(build())
    assert found[check].status == status, found[check]
    assert detail in found[check].detail, found[check]


def test_a_parameter_left_out_of_the_optimizer_is_named_by_optimizer_step():
    s = subject()
    s.optimizer = torch.optim.AdamW(
        [p for n, p in s.model.named_parameters() if not n.startswith("head")], lr=1e-2
    )
    found = checklist(s)
    assert found["learning_rate"].status == PASS
    assert found["optimizer_step"].status == FAIL
    assert "unchanged: head.weight, head.bias" in found["optimizer_step"].detail
