"""A step's values, measured on the device and brought to the host (not a plugin).

- `measure`: the loss and gradient norms the guards judge a step by (`step_tensors`, one
  fused pass shared with `clip`; `step_scalars`, the one-sync fallback; `LateRead`, the
  values read a step late), and naming the parameters with bad gradients.
- `steplog`: the loggers' shared buffer of step rows (`StepLog`, `StepRow`, `RowReader`).
- `hostcopy`: the one device-to-host copy both of them use (`HostCopy`) and `to_floats`.
"""
