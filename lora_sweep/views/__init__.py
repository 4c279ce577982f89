"""Views of a study: they read what the sweep recorded and never launch a job of a trial.

    report.py     the sweep report (one HTML file), and the notebook's figures
    dashboard.py  optuna-dashboard on the study's storage
    export.py     the best trial, its adapter (or the merged model), its answers, its lora.yaml
"""
