"""What the guard plugins (`nan_guard`, `divergence`) share (not a plugin).

- `policy`: what to do about a bad step (`GuardPolicy`: warn, skip, roll back, stop),
  `TrainingHalted`, `rollback` and `emergency_save`. The values a guard judges a step by
  are in `hookloop.plugins.stepvalues.measure`.
"""
