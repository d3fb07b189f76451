"""The workflow engine: pipeline steps as doit tasks whose up-to-date check is the store.

Owns: Build, StepRun and `step_task` (tasks.py), handing task generators to doit and reporting
(doit_runner.py), and what the user asked to build, parsed from `key=value` words (spec.py).
May import: banger.core. Knows no step: steps come to it as task dicts.
"""
