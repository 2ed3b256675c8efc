"""Measuring which VLM layers matter for a question: importance metrics on a few crops.

- :mod:`~vidqa.vlm.profiling.importance` — activation, block influence and task impact;
- :mod:`~vidqa.vlm.profiling.replay` — reusing the traced pass in task-impact passes.
"""
