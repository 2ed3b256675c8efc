"""Compressing a VLM's layers for one question: which layers, how, and applying it reversibly.

- :mod:`~vidqa.vlm.compression.layers` — finding transformer blocks by module path; hooks;
- :mod:`~vidqa.vlm.compression.plan` — a plan: keep / int8 / skip per layer (pure data);
- :mod:`~vidqa.vlm.compression.operators` — the identity (skip) and int8 layer operators;
- :mod:`~vidqa.vlm.compression.compressor` — swapping a plan's modules in and back out;
- :mod:`~vidqa.vlm.compression.orders` — choosing a plan from a profile;
- :mod:`~vidqa.vlm.compression.plan_cache` — plans on disk, keyed by model and question.
"""
