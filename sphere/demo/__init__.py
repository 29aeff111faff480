"""The closed loop on a simulated fleet (docs/demo.md).

- ``simulator``: N edge clients in one process, each the real edge client (store, pipeline,
  bundle manager, sync client) on its own data directory, enrolled over HTTP, fed a datagen
  scenario whose ground truth only the simulator knows. No Django: it can drive any server.
- ``scenario``: the server side of the demo — the digits family, an initial model trained on
  some classes only, its first rollout, a retraining policy, device groups and enrollment
  tokens, and faster schedules.
- ``oracle``: the operator and labelers of an unattended run, answering from the simulator's
  ground truth through the same services the pages use.
- ``runner``: ``manage.py demo`` — serve Sphere, seed, play the scenario, report and measure.
"""
