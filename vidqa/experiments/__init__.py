"""The research questions behind vidqa, as tools: is layer importance stable across people
(Experiment 1, ``vidqa validate``), and what does compressing layers cost and save
(Experiment 2, ``vidqa compress-report``)? Nothing here runs in a stream.

- :mod:`~vidqa.experiments.common` — the crops a run would ask about, labels, memory peaks;
- :mod:`~vidqa.experiments.stats` — stability statistics with null baselines;
- :mod:`~vidqa.experiments.layer_stability` — Experiment 1;
- :mod:`~vidqa.experiments.compression_sweep` — Experiment 2;
- :mod:`~vidqa.experiments.plots` — their figures.
"""
