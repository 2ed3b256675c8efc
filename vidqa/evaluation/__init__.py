"""Scoring runs: tracks against MOT ground truth, answers against labelled people.

Import the submodules (``vidqa.evaluation.mot`` is light; ``tracks`` pulls in TrackEval and
``answers`` scikit-learn).
"""
