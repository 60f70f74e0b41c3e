"""`hookloop doctor`: run the checklist on a configured run and print it.

The built-in checks live in `hookloop.lm.checks`; a plugin contributes the checks that need
to know it through the `doctor_checks` hook (the `schedule` plugin checks its own lr curve).
`diagnose()` runs both on an engine, `run_checks()` runs any list of checks on a `Subject`,
`format_findings()` prints the result. A check that raises becomes a FAIL naming the error.

The doctor knows one thing about plugins in general: a run whose plugins report no
`schedule` finding trains at a constant lr, which it reports as a WARN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hookloop.findings import FAIL, PASS, WARN, Check, Finding, Subject
from hookloop.lm.checks import CHECKS, peak_lrs

if TYPE_CHECKING:
    from hookloop.engine import Engine

__all__ = [
    "CHECKS",
    "FAIL",
    "PASS",
    "WARN",
    "Check",
    "Finding",
    "Subject",
    "diagnose",
    "format_findings",
    "no_schedule",
    "run_checks",
]


def run_checks(subject: Subject, checks: Sequence[Check] = CHECKS) -> list[Finding]:
    """Run each check; one that raises becomes a FAIL finding naming the error."""
    findings = []
    for check in checks:
        name = getattr(check, "__name__", repr(check))
        try:
            findings.append(check(subject))
        except Exception as exc:
            findings.append(Finding(name, FAIL, f"the check raised {type(exc).__name__}: {exc}"))
    return findings


def no_schedule(subject: Subject) -> Finding:
    """The `schedule` finding of a run whose plugins check no schedule: a constant lr."""
    return Finding(
        "schedule",
        WARN,
        f"no schedule plugin: the lr stays {peak_lrs(subject.optimizer)[0]:.3g} "
        "(no warmup, no decay)",
    )


def diagnose(engine: Engine, batches: Sequence[Any], **options: Any) -> list[Finding]:
    """Run the built-in checks and every plugin's `doctor_checks` on an engine's run.

    Args:
        engine: The configured run's engine; its model, optimizer, loss and plugins are used.
        batches: A few real training batches (moved to the engine's device here).
        **options: Further `Subject` fields (vocab_size, max_steps, overfit_steps, ...).

    Returns:
        The built-in findings, then the plugins' in plugin order, then a `schedule` WARN
        when no plugin reported a `schedule` finding.
    """
    subject = Subject(
        model=engine.model,
        optimizer=engine.optimizer,
        loss_fn=engine.loss_fn,
        batches=[engine.to_device(b) for b in batches],
        engine=engine,
        **options,
    )
    extra = [
        c
        for checks in engine.hooks.collect("doctor_checks", engine=engine).values()
        for c in checks
    ]
    findings = run_checks(subject, [*CHECKS, *extra])
    if not any(f.check == "schedule" for f in findings):
        findings.append(no_schedule(subject))
    return findings


def format_findings(findings: Sequence[Finding]) -> str:
    """The checklist: one `STATUS  check  detail` line per finding and a summary line."""
    width = max(len(f.check) for f in findings)
    lines = [f"{f.status}  {f.check.ljust(width)}  {f.detail}" for f in findings]
    counts = {st: sum(f.status == st for f in findings) for st in (PASS, WARN, FAIL)}
    lines.append(", ".join(f"{n} {st.lower()}" for st, n in counts.items()))
    return "\n".join(lines)
